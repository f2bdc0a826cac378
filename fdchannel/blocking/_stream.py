"""A connected stream socket driven without an event loop.

The socket is non-blocking underneath: each call makes single attempts
(``fdchannel.fds`` for every sendmsg/recvmsg that may carry descriptors)
and waits with ``poll(2)`` up to its deadline in between.  So a timeout is
a ``TransportTimeout`` and never a half-sent message: a short write's rest
goes out without its descriptors attached again, exactly as on the async
side.  A stream belongs to one thread at a time.
"""

from __future__ import annotations

import array
import errno
import functools
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

from .. import fds as fdpass
from ..capabilities import Capability
from ..credentials import Credentials, peer_credentials
from ..detached import Detached
from ..errors import CapabilityError, ConnectionLostError, ProtocolError, TransportError
from ..read_buffer import ReadBuffer, check_exact_size, check_line_arguments
from ..sockets import (
    BROKEN_ERRNOS,
    DEFAULT_RECEIVE,
    Blocked,
    attempt,
    drain_queued,
    read_closing_strays,
)
from ._closing import Closing
from ._deadline import READABLE, WRITABLE, Deadline, wait_ready

if TYPE_CHECKING:
    from ..address import Address

__all__ = ["FdWrapper", "Stream", "register_fd_wrapper"]


T = TypeVar("T")
_MSG_NOSIGNAL = int(socket.MSG_NOSIGNAL)
_MSG_PEEK = int(socket.MSG_PEEK)


class FdWrapper(Protocol):
    """What takes a connected socket's descriptor over: ``Stream.from_fd``."""

    def __call__(self, fd: int, *, buffered: bytes = ...) -> Stream: ...


#: What ``Stream.from_fd`` calls: ``fdchannel.blocking._fd``'s ``wrap``, which
#: opens ``fd:`` too.  That module builds on this one, so it cannot be
#: imported here; it registers itself when loaded, and the package loads it.
_fd_wrapper: FdWrapper | None = None


def register_fd_wrapper(wrapper: FdWrapper) -> None:
    """Make ``wrapper`` what ``Stream.from_fd`` calls."""
    global _fd_wrapper
    _fd_wrapper = wrapper


class Stream(ReadBuffer, Closing):
    """A connected stream socket: unix (bytes and descriptors), tcp, or an ``fd:`` one.

    ``receive`` returns ``b""`` at the end of the stream, as sockets do.
    Every call that may wait takes ``timeout`` (seconds; None waits as long
    as it takes) and raises ``TransportTimeout`` when it passes.  A peer
    that hung up is a ``ConnectionLostError``; any other failure of the
    operating system a ``TransportError``.  What it read and did not return
    yet is in its ReadBuffer: ``buffered``, served first by every receive,
    and handed over by ``detach``.
    """

    def __init__(self, sock: socket.socket, address: Address | None) -> None:
        sock.setblocking(False)
        self._sock = sock
        self.address = address
        unix = sock.family == socket.AF_UNIX
        #: What this stream can do beyond bytes.
        self.capabilities = Capability.HALF_CLOSE | (
            Capability.FD_PASSING if unix else Capability.NONE
        )
        #: Descriptors that arrived on a plain ``receive`` and were closed.
        self.discarded_fds = 0
        self._closed = False
        self._start_reading()

    @classmethod
    def from_fd(cls, fd: int, *, buffered: bytes = b"") -> Stream:
        """A stream that takes over ``fd``, a connected socket (closing the stream closes it).

        ``buffered``: bytes a previous owner read from ``fd`` and did not
        consume (a ``Detached``'s), returned by receives before anything read
        from ``fd``.  What is no socket is a CapabilityError, a listening
        socket a ConnectError; on failure ``fd`` stays the caller's.
        """
        assert _fd_wrapper is not None, "fdchannel.blocking loads its fd transport"
        return _fd_wrapper(fd, buffered=buffered)

    # --- the object itself ---------------------------------------------------------

    @property
    def socket(self) -> socket.socket:
        """The socket itself, for options and addresses (do not read from it)."""
        return self._sock

    def fileno(self) -> int:
        """The descriptor under the stream, for inspection (do not read from it)."""
        self._check_open()
        return self._sock.fileno()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def peer_credentials(self) -> Credentials:
        """The unix peer's (pid, uid, gid) as the kernel recorded them at connect."""
        if Capability.FD_PASSING not in self.capabilities:
            raise CapabilityError(f"{self._describe()} has no peer credentials (not AF_UNIX)")
        self._check_open()
        return peer_credentials(self._sock)

    def close(self) -> None:
        """Close the socket; idempotent."""
        if not self._closed:
            self._closed = True
            self._sock.close()

    def detach(self) -> Detached:
        """Let go of the descriptor without closing it: it and every byte read from
        it and not returned yet (``buffered``), for ``Stream.from_fd(fd,
        buffered=...)`` here or in another process (``pack_connections``).

        The stream is closed afterwards (closing it again does nothing); the
        descriptor is the caller's.  Detach at a message boundary, between calls.
        """
        self._check_open()
        self._closed = True
        return Detached(self._sock.detach(), self._release_buffer())

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd {self._sock.fileno()}"
        return f"<blocking {self._describe()}, {state}>"

    # --- sending ---------------------------------------------------------------------

    def send(self, data: bytes | memoryview, timeout: float | None = None) -> None:
        """Send every byte of ``data``."""
        deadline = Deadline(timeout)
        view = memoryview(data).cast("B")
        while view:
            sent = self._retry(
                functools.partial(self._sock.send, view, _MSG_NOSIGNAL), WRITABLE, deadline, "send"
            )
            view = view[sent:]

    def send_eof(self) -> None:
        """Half-close: the peer reads EOF, and we can still receive."""
        self._check_open()
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise self._translate(exc) from exc

    def send_fds(self, data: bytes, fds: Sequence[int], timeout: float | None = None) -> None:
        """Send ``data`` with descriptors attached, in messages of at most 253 (SCM_MAX_FD)."""
        self.send_fds_many([(data, fds)], timeout)

    def send_fds_many(
        self, messages: Iterable[tuple[bytes, Sequence[int]]], timeout: float | None = None
    ) -> None:
        """``send_fds`` for each (bytes, descriptors) message in turn, under one deadline."""
        deadline = Deadline(timeout)
        for data, fds in messages:
            if fds and Capability.FD_PASSING not in self.capabilities:
                raise CapabilityError(f"{self._describe()} cannot pass file descriptors")
            if data and len(fds) <= fdpass.SCM_MAX_FD:
                self._send_message(data, fds, deadline)
            else:
                for chunk, batch in fdpass.split_for_sending(data, fds):
                    self._send_message(chunk, batch, deadline)

    def _send_message(self, data: bytes, fds: Sequence[int], deadline: Deadline) -> None:
        """One message: its descriptors ride on the first sendmsg that sends anything."""
        view = memoryview(data).cast("B")
        attach = fds
        while view:
            sent = self._retry(
                functools.partial(fdpass.sendmsg_fds, self._sock, view, attach),
                WRITABLE,
                deadline,
                "send",
            )
            view, attach = view[sent:], ()  # a short write already carried them

    # --- receiving -------------------------------------------------------------------

    def receive(self, max_bytes: int = DEFAULT_RECEIVE, timeout: float | None = None) -> bytes:
        """Up to ``max_bytes`` bytes, ``b""`` at EOF; descriptors that come along are closed."""
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        data, _ = self._receive_with(
            max_bytes, lambda: (self._read_once(max_bytes), []), Deadline(timeout)
        )
        return data

    def receive_fds(
        self,
        max_bytes: int = DEFAULT_RECEIVE,
        maxfds: int = fdpass.SCM_MAX_FD,
        timeout: float | None = None,
    ) -> tuple[bytes, list[int]]:
        """Bytes and the descriptors that came with them (close-on-exec); ``(b"", [])`` at EOF."""
        return self._receive_fds(max_bytes, maxfds, Deadline(timeout))

    def _receive_fds(
        self, max_bytes: int, maxfds: int, deadline: Deadline
    ) -> tuple[bytes, list[int]]:
        if max_bytes < 1 or maxfds < 0:
            raise ValueError("max_bytes must be at least 1 and maxfds not negative")
        if Capability.FD_PASSING not in self.capabilities:
            raise CapabilityError(f"{self._describe()} cannot pass file descriptors")
        return self._receive_with(
            max_bytes, lambda: fdpass.recvmsg_fds(self._sock, max_bytes, maxfds), deadline
        )

    def receive_fds_many(
        self,
        max_bytes: int = DEFAULT_RECEIVE,
        maxfds: int = fdpass.SCM_MAX_FD,
        max_messages: int = 64,
        timeout: float | None = None,
    ) -> tuple[bytes, list[int]]:
        """``receive_fds``, then whatever more is already queued, in one call.

        The kernel returns at most one message with descriptors per recvmsg;
        the rest already queued is drained at once.  The bytes are joined
        and the descriptors kept in order, so each still arrives at or
        before its byte.
        """
        data, fds = self._receive_fd_array(max_bytes, maxfds, max_messages, timeout)
        return data, fds.tolist()

    def _receive_fd_array(
        self,
        max_bytes: int = DEFAULT_RECEIVE,
        maxfds: int = fdpass.SCM_MAX_FD,
        max_messages: int = 64,
        timeout: float | None = None,
    ) -> tuple[bytes, array.array[int]]:
        """``receive_fds_many``, the descriptors in an ``array('i')``: C ints, no
        Python int for each of the thousands a drain brings (the state
        receivers' read: 10,000 as ints cost 150 to 300 us)."""
        data, first = self._receive_fds(max_bytes, maxfds, Deadline(timeout))
        fds = array.array("i", first)
        if not data or len(data) >= max_bytes or max_messages <= 1 or self._pending:
            return data, fds
        data, self._eof_seen = drain_queued(
            self._sock, data, fds, max_bytes, maxfds, max_messages, self._translate
        )
        return data, fds

    def peek(self, size: int, timeout: float | None = None) -> bytes:
        """Up to ``size`` bytes without consuming them (``b""`` at EOF).

        A peek has no control buffer, so it installs none of the descriptors
        that may come with the bytes: a receiver can look first, then make room.
        """
        self._check_open()
        if self._pending:
            return self._peek(size)
        if self._eof_seen:
            return b""
        return self._retry(
            lambda: self._sock.recv(size, _MSG_PEEK), READABLE, Deadline(timeout), "peek"
        )

    def receive_until(
        self, delimiter: bytes, max_bytes: int, timeout: float | None = None
    ) -> bytes:
        """The bytes up to ``delimiter``, which is consumed and left out.

        As the async ``Stream.receive_until``: the bytes read past the
        delimiter stay in the stream.  A line longer than ``max_bytes``,
        however its bytes arrived, and the end of the stream first are each
        a ProtocolError (the bytes read stay buffered; ``at_eof`` tells a
        clean end).  ``timeout`` bounds the whole call.
        """
        check_line_arguments(delimiter, max_bytes)
        self._check_open()
        deadline = Deadline(timeout)
        found = self._line(delimiter, max_bytes, 0)
        while isinstance(found, int):
            self._read_more(DEFAULT_RECEIVE, deadline)
            found = self._line(delimiter, max_bytes, found)
        return found

    def receive_exactly(self, nbytes: int, timeout: float | None = None) -> bytes:
        """Exactly ``nbytes`` bytes; a ProtocolError if the stream ends first (what was
        read stays buffered).  ``timeout`` bounds the whole call."""
        check_exact_size(nbytes)
        self._check_open()
        deadline = Deadline(timeout)
        data = self._exactly(nbytes)
        while data is None:
            self._read_more(self._read_size(nbytes), deadline)
            data = self._exactly(nbytes)
        return data

    def _read_more(self, size: int, deadline: Deadline) -> None:
        """One read into the buffer (waiting for it if need be); EOF is noted there."""
        self._keep(self._retry(lambda: self._read_once(size), READABLE, deadline, "receive"))

    def _no_delimiter(self, max_bytes: int) -> Exception:
        return ProtocolError(
            f"{self._describe()}: no delimiter within {max_bytes} bytes (receive_until)"
        )

    def _cut_short(self) -> Exception:
        return ProtocolError(
            f"{self._describe()}: the stream ended before what was asked for "
            f"({len(self._pending)} bytes read are buffered)"
        )

    def wait_peer_closed(self, timeout: float | None = None) -> None:
        """Return once the peer closed its sending side (EOF or hang-up).

        Bytes that arrive first are kept for later receives (up to 16 MiB).
        """
        deadline = Deadline(timeout)
        while not self._eof_seen:
            data = self._retry(
                lambda: self._read_once(DEFAULT_RECEIVE),
                READABLE,
                deadline,
                "waiting for the peer to close",
            )
            self._keep_until_closed(data, self._describe(), self.address)

    def _receive_with(
        self, max_bytes: int, op: Callable[[], tuple[bytes, list[int]]], deadline: Deadline
    ) -> tuple[bytes, list[int]]:
        """One receive: bytes kept by wait_peer_closed first, then ``op``."""
        self._check_open()
        if self._pending:
            return self._take(max_bytes), []
        if self._eof_seen:
            return b"", []
        data, fds = self._retry(op, READABLE, deadline, "receive")
        if not data and not fds:
            self._eof_seen = True
        return data, fds

    def _read_once(self, max_bytes: int) -> bytes:
        if Capability.FD_PASSING not in self.capabilities:
            return self._sock.recv(max_bytes)
        return read_closing_strays(self, self._sock, max_bytes)

    # --- waiting and errors ------------------------------------------------------------

    def _retry(self, op: Callable[[], T], events: int, deadline: Deadline, what: str) -> T:
        """``op`` once it does not block, each wait for ``events`` by ``deadline``."""
        while True:
            result = attempt(self, op)
            if not isinstance(result, Blocked):
                return result
            wait_ready(
                self._sock.fileno(), events, deadline, f"{self._describe()}: {what}", self.address
            )

    def _check_open(self) -> None:
        if self._closed:
            raise TransportError(f"{self._describe()} is closed", self.address)

    def _translate(self, exc: OSError) -> TransportError:
        if exc.errno in BROKEN_ERRNOS:
            return ConnectionLostError(
                f"{self._describe()}: the peer hung up ({exc.strerror})", self.address
            )
        if exc.errno == errno.EBADF and self._closed:
            return TransportError(f"{self._describe()} is closed", self.address)
        return TransportError(f"{self._describe()}: {exc.strerror}", self.address)

    def _describe(self) -> str:
        kind = "UnixStream" if Capability.FD_PASSING in self.capabilities else "SocketStream"
        return f"{kind} to {self.address}" if self.address is not None else kind
