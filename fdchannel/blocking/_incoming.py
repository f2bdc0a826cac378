"""The new process's side, blocking: receive the state, then acknowledge by closing."""

from __future__ import annotations

from contextlib import suppress
from typing import Any

from ..channel import Channel
from ..codecs.main import MainReader
from ..errors import HandoffError
from ..handoff.machine import Event, State
from ..handoff.sides import IncomingSide
from ..state import FdState
from ._closing import Closing
from ._cpr import ReceivedCpr, take_cpr
from ._deadline import TransportTimeout
from ._handoff import accept_admitted, log_refused, step
from ._listener import Listener
from ._open import check_listen_options, listen
from ._stream import Stream

__all__ = ["Incoming"]


class Incoming(IncomingSide, Closing):
    """Drive the incoming side of a cpr-transfer handoff, in QEMU's order, without an event loop.

    As ``fdchannel.Incoming``: ``receive_cpr`` listens on the cpr channel
    (first of all), accepts one peer that passes the credential policy and
    reads the state to EOF; ``listen_main`` starts the main listener and
    *then* closes the cpr connection: that close tells the old process "I
    am listening".  ``reject`` closes without listening (native codec:
    with a reason).  The state is answered once: a second answer is a
    VerdictGiven.
    """

    _cpr_listener: Listener | None = None
    _received: ReceivedCpr | None = None
    _main_listener: Listener | None = None
    _main_stream: Stream | None = None

    @staticmethod
    def _check_listen_options(channel: Channel, options: dict[str, Any]) -> None:
        check_listen_options(channel, options)

    def listen_cpr(self) -> Listener:
        """Start listening on the cpr channel (``receive_cpr`` does it if needed)."""
        self._machine.fire(Event.LISTEN)
        with step(self._machine, "listening on the cpr channel", None):
            self._cpr_listener = listen(self.cpr, **self._cpr_options)
        return self._cpr_listener

    def receive_cpr(self, timeout: float | None = 10) -> FdState:
        """Accept one peer on the cpr channel and read its state to EOF.

        The state owns its descriptors: the caller takes them over.  Room
        for them is made (RLIMIT_NOFILE) before the first one arrives.
        """
        if self._machine.state is State.IDLE:
            self.listen_cpr()
        listener = self._cpr_listener
        if listener is None:
            raise HandoffError(f"incoming handoff: cannot receive while {self.state.value}")
        with step(self._machine, "receiving the state on the cpr channel", timeout) as deadline:
            self._received = take_cpr(
                listener, deadline, self.limits, log_refused, progress=self._progress
            )
            self.codec = self._received.codec
        return self._received.state

    def listen_main(self, timeout: float | None = 10) -> Listener:
        """Listen on the main channel, then close cpr: the acknowledgement.

        ``timeout`` bounds sending the native codec's STATUS frame.
        """
        self._answer(Event.LISTEN_MAIN)
        with step(self._machine, "listening on the main channel", timeout) as deadline:
            self._main_listener = listen(self.main, **self._main_options)
            received, self._received = self._received, None
            if (
                received is not None
                and received._give("accepted", "", deadline.left()) != "closed the connection"
            ):
                raise HandoffError("the old process hung up before the acknowledgement")
            self._close_cpr()
        return self._main_listener

    def accept_main(self, timeout: float | None = 10) -> Stream:
        """Accept the old process on the main channel."""
        listener = self._main_listener
        if listener is None:
            raise HandoffError(f"incoming handoff: cannot accept main while {self.state.value}")
        with step(self._machine, "accepting the main channel", timeout) as deadline:
            self._main_stream = accept_admitted(listener, deadline, log_refused)
            self._machine.fire(Event.MAIN_ACCEPTED)
        return self._main_stream

    def receive_main(self, timeout: float | None = 10, limit: int = 1 << 30) -> bytes:
        """Accept main and read what ``Outgoing.send_main`` sent, then close: the handoff is done.

        The data is length-prefixed, so an old process that died half-way
        is an error, not a short read.  At most ``limit`` bytes are accepted.
        """
        stream = self._main_stream or self.accept_main(timeout)
        try:
            with step(self._machine, "reading the main channel", timeout) as deadline:
                reader = MainReader(limit)
                while not reader.done:
                    chunk = stream.receive(min(reader.wanted, 1 << 20), deadline.left())
                    if not chunk:
                        break  # the end: finish() tells whether it came early
                    reader.feed(chunk)
                data = reader.finish()
                self._machine.fire(Event.COMPLETE)
        finally:
            self._close_main()
        return data

    def reject(self, reason: str, timeout: float | None = 10) -> None:
        """Refuse the received state: close cpr without listening on main.

        ``timeout`` bounds sending the reason (native codec): a sender already
        gone, or not reading, needs none.
        """
        self._answer(Event.REJECT)
        received, self._received = self._received, None
        try:
            if received is not None:
                with suppress(TransportTimeout):
                    received._give("rejected", reason, timeout)
        finally:
            self._close_cpr()

    def _close_listener(self) -> None:
        if self._cpr_listener is not None:
            listener, self._cpr_listener = self._cpr_listener, None
            listener.close()

    def _close_cpr(self) -> None:
        self._close_listener()
        if self._received is not None:
            received, self._received = self._received, None
            received.close()

    def _close_main(self) -> None:
        if self._main_stream is not None:
            stream, self._main_stream = self._main_stream, None
            stream.close()
        if self._main_listener is not None:
            listener, self._main_listener = self._main_listener, None
            listener.close()

    def abort(self) -> None:
        """Give up at any step and close everything; safe to call more than once."""
        self._machine.fire(Event.ABORT)
        self._close_cpr()
        self._close_main()

    def close(self) -> None:
        """``abort``: leaving ``with`` gives up whatever is not finished."""
        self.abort()
