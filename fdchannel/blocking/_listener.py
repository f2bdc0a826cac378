"""Listeners without an event loop: accept peers under a deadline and a credential policy."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

from ..capabilities import Capability
from ..errors import CapabilityError, TransportError
from ..sockets import ListeningSocket
from ._closing import Closing
from ._deadline import READABLE, Deadline, wait_ready
from ._stream import Stream

if TYPE_CHECKING:
    from ..address import Address

__all__ = ["Listener", "OneStreamListener", "SocketListener"]


class Listener(Closing):
    """The incoming side of a transport: ``with`` it and ``accept(timeout)`` peers."""

    #: MULTI_ACCEPT if more than one peer can be accepted.
    capabilities = Capability.NONE
    #: What the streams ``accept`` returns can do.
    stream_capabilities = Capability.NONE

    def __init__(self, address: Address) -> None:
        #: The address actually listened on (e.g. the port the kernel chose).
        self.address = address

    @abc.abstractmethod
    def accept(self, timeout: float | None = None) -> Stream:
        """Wait for the next peer and return its stream."""

    def fileno(self) -> int:
        """The descriptor under the listener, for inspection."""
        raise CapabilityError(f"the listener on {self.address} has no descriptor of its own")

    @abc.abstractmethod
    def close(self) -> None:
        """Stop listening; idempotent."""


class SocketListener(ListeningSocket, Listener):
    """A listening stream socket; ``accept`` returns one stream per peer (see
    ListeningSocket for its arguments: the policy, the setup and close hooks)."""

    capabilities = Capability.MULTI_ACCEPT
    stream_kinds = (Capability.HALF_CLOSE, Capability.HALF_CLOSE | Capability.FD_PASSING)

    def fileno(self) -> int:
        self._check_open()
        return self._sock.fileno()

    def accept(self, timeout: float | None = None) -> Stream:
        deadline = Deadline(timeout)
        while True:
            self._check_open()
            stream = self._accept_now(lambda conn: Stream(conn, self.address))
            if stream is not None:
                return stream
            wait_ready(
                self._sock.fileno(), READABLE, deadline, f"accept on {self.address}", self.address
            )

    def close(self) -> None:
        self._close_listening()

    def _check_open(self) -> None:
        if self._closed:
            raise TransportError(f"the listener on {self.address} is closed", self.address)


class OneStreamListener(Listener):
    """An incoming side that yields exactly one, already open, stream (an ``fd:`` one).

    Until it is accepted the listener owns the stream and closes it with
    itself; afterwards the stream is the caller's.
    """

    def __init__(self, stream: Stream, address: Address) -> None:
        super().__init__(address)
        self._stream: Stream | None = stream
        self._closed = False
        self.stream_capabilities = stream.capabilities

    def accept(self, timeout: float | None = None) -> Stream:
        if self._closed:
            raise TransportError(f"the listener on {self.address} is closed", self.address)
        stream, self._stream = self._stream, None
        if stream is None:
            raise CapabilityError(
                f"the incoming side of {self.address} yields exactly one stream and it was "
                "already accepted (this transport has no MULTI_ACCEPT)"
            )
        return stream

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            stream, self._stream = self._stream, None
            if stream is not None:
                stream.close()
