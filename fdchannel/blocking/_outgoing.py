"""The old process's side, blocking: hand the state over, learn that the new one is ready."""

from __future__ import annotations

import warnings

from ..protocol.ack import Ack
from ..protocol.outgoing_side import OutgoingSide
from ..state import FdState
from ._closing import Closing
from ._handoff import drive, run_step
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

    def send_cpr(self, state: FdState, timeout: float | None = 10) -> Ack:
        """Send ``state`` on the cpr channel and wait for the close-as-ack."""
        return run_step(self._machine, self._sending_cpr(state), timeout)

    def connect_main(self, timeout: float | None = 10) -> Stream:
        """Connect the main channel (after the ack) and return its stream."""
        stream: Stream = run_step(self._machine, self._connecting_main(), timeout)
        return stream

    def send_main(self, data: bytes = b"", timeout: float | None = 10) -> None:
        """Send ``data`` on main, half-close, and wait until the new process closed it.

        Calls ``connect_main`` first if it was not called; the main stream is closed
        afterwards, and at once if anything failed.
        """
        if self._main_due:
            self.connect_main(timeout)
        run_step(self._machine, self._sending_main(data), timeout)

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
        drive(self._aborting())

    def close(self) -> None:
        """``abort``: leaving ``with`` gives up whatever is not finished."""
        self.abort()


def _renamed(old: str, new: str) -> None:
    warnings.warn(
        f"Outgoing.{old} is deprecated: it is Outgoing.{new} now", DeprecationWarning, stacklevel=3
    )
