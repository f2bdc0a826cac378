"""The old process's side, blocking: hand the state over, learn that the new one is ready."""

from __future__ import annotations

import warnings

from ..codecs import main as main_channel
from ..handoff.ack import Ack
from ..handoff.machine import Event, State
from ..handoff.sides import OutgoingSide
from ..state import FdState
from ._closing import Closing
from ._cpr import exchange_cpr
from ._handoff import connect_retrying, step
from ._stream import Stream

__all__ = ["Outgoing"]


class Outgoing(OutgoingSide, Closing):
    """Drive the outgoing side of a cpr-transfer handoff, without an event loop.

    As ``fdchannel.Outgoing``: ``send_cpr`` connects the cpr channel (retrying
    until the new process listens), sends the state, half-closes and waits
    for the new process to close; ``connect_main`` then connects main and
    ``send_main`` sends the rest on it.  Whatever fails, the descriptors in
    the state stay the caller's and open: the rollback.  Each step takes a
    timeout (HandoffTimeout); every other failure is a HandoffError.
    """

    _main_stream: Stream | None = None

    def send_cpr(self, state: FdState, timeout: float | None = 10) -> Ack:
        """Send ``state`` on the cpr channel and wait for the close-as-ack."""
        self._machine.fire(Event.START)
        with step(self._machine, "sending the state on the cpr channel", timeout) as deadline:
            return exchange_cpr(
                self.cpr, state, self.codec, self.qemu_target, deadline, self._progress
            )

    def connect_main(self, timeout: float | None = 10) -> Stream:
        """Connect the main channel (after the ack) and return its stream."""
        self._machine.fire(Event.FINISH)
        with step(self._machine, "connecting the main channel", timeout) as deadline:
            stream = connect_retrying(self.main, deadline)
            self._main_stream = stream
            self._machine.fire(Event.MAIN_CONNECTED)
        return stream

    def send_main(self, data: bytes = b"", timeout: float | None = 10) -> None:
        """Send ``data`` on main, half-close, and wait until the new process closed it.

        Calls ``connect_main`` first if it was not called; the main stream is closed
        afterwards, and at once if anything failed.
        """
        if self._machine.state is State.ACKED:
            self.connect_main(timeout)
        stream = self._main_stream
        if stream is None or self._machine.state is not State.MAIN_OPEN:
            self._machine.fire(Event.COMPLETE)  # raises: not allowed here
            raise AssertionError  # pragma: no cover
        try:
            with step(self._machine, "sending the main stream", timeout) as deadline:
                # A length first, so the new process tells our death from the end.
                stream.send(main_channel.header(len(data)), deadline.left())
                stream.send(data, deadline.left())
                stream.send_eof()
                stream.wait_peer_closed(deadline.left())
                self._machine.fire(Event.COMPLETE)
        finally:
            self._main_stream = None
            stream.close()

    # The names before 0.2, kept for one release.

    def start(self, state: FdState, timeout: float | None = 10) -> Ack:
        """Deprecated: ``send_cpr``."""
        _renamed("start", "send_cpr")
        return self.send_cpr(state, timeout)

    def finish(self, timeout: float | None = 10) -> Stream:
        """Deprecated: ``connect_main``."""
        _renamed("finish", "connect_main")
        return self.connect_main(timeout)

    def complete(self, data: bytes = b"", timeout: float | None = 10) -> None:
        """Deprecated: ``send_main``."""
        _renamed("complete", "send_main")
        self.send_main(data, timeout)

    def abort(self) -> None:
        """Give up at any step; safe to call more than once."""
        self._machine.fire(Event.ABORT)
        if self._main_stream is not None:
            stream, self._main_stream = self._main_stream, None
            stream.close()

    def close(self) -> None:
        """``abort``: leaving ``with`` gives up whatever is not finished."""
        self.abort()


def _renamed(old: str, new: str) -> None:
    warnings.warn(
        f"Outgoing.{old} is deprecated: it is Outgoing.{new} now", DeprecationWarning, stacklevel=3
    )
