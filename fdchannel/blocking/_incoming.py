"""The new process's side, blocking: receive the state, then acknowledge by closing."""

from __future__ import annotations

from typing import Any

from ..channel import Channel
from ..protocol.incoming_side import IncomingSide
from ..state import FdState
from ._closing import Closing
from ._cpr import ReceivedCpr
from ._handoff import drive, run_step
from ._listener import Listener
from ._open import check_listen_options
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

    @staticmethod
    def _check_listen_options(channel: Channel, options: dict[str, Any]) -> None:
        check_listen_options(channel, options)

    def listen_cpr(self) -> Listener:
        """Start listening on the cpr channel (``receive_cpr`` does it if needed)."""
        listener: Listener = run_step(self._machine, self._listening_cpr(), None)
        return listener

    def receive_cpr(self, timeout: float | None = 10) -> FdState:
        """Accept one peer on the cpr channel and read its state to EOF.

        The state owns its descriptors: the caller takes them over.  Room
        for them is made (RLIMIT_NOFILE) before the first one arrives.
        """
        if self._cpr_due:
            self.listen_cpr()
        return run_step(self._machine, self._receiving_cpr(ReceivedCpr), timeout)

    def listen_main(self, timeout: float | None = 10) -> Listener:
        """Listen on the main channel, then close cpr: the acknowledgement.

        ``timeout`` bounds sending the native codec's STATUS frame.
        """
        listener: Listener = run_step(self._machine, self._listening_main(), timeout)
        return listener

    def accept_main(self, timeout: float | None = 10) -> Stream:
        """Accept the old process on the main channel."""
        stream: Stream = run_step(self._machine, self._accepting_main(), timeout)
        return stream

    def receive_main(self, timeout: float | None = 10, limit: int = 1 << 30) -> bytes:
        """Accept main and read what ``Outgoing.send_main`` sent, then close: the handoff is done.

        The data is length-prefixed, so an old process that died half-way
        is an error, not a short read.  At most ``limit`` bytes are accepted.
        """
        if self._main_stream is None:
            self.accept_main(timeout)
        return run_step(self._machine, self._receiving_main(limit), timeout)

    def reject(self, reason: str, timeout: float | None = 10) -> None:
        """Refuse the received state: close cpr without listening on main.

        ``timeout`` bounds sending the reason (native codec): a sender already
        gone, or not reading, needs none.
        """
        drive(self._rejecting(reason, timeout))

    def abort(self) -> None:
        """Give up at any step and close everything; safe to call more than once."""
        drive(self._aborting())

    def close(self) -> None:
        """``abort``: leaving ``with`` gives up whatever is not finished."""
        self.abort()
