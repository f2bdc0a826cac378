"""A received state awaiting its answer, for ``receive_cpr`` in either layer.

``ReceivedCprCore`` holds the state and its open connection, the rule that
it is answered once (``VerdictGiven`` after that), and the answer as a
driver (``answering``: the STATUS frame a native sender reads, then the
close); each layer's ``ReceivedCpr`` runs it.  Nothing here waits or
imports an event loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ..codec_choice import Codec
from ..codecs import native
from ..errors import ConnectionLostError, VerdictGiven
from ..state import FdState
from .actions import Close, Driver, Send

__all__ = ["ReceivedCprCore"]

StreamT = TypeVar("StreamT")


@dataclass
class ReceivedCprCore(Generic[StreamT]):
    """A state received on a cpr channel, its connection still open: ``accept()``
    (the acknowledgement) or ``reject(reason)``, once (a second answer, or one after
    closing, is a VerdictGiven).  The state owns its descriptors."""

    state: FdState
    codec: Codec
    #: The connection to the sender, open until accept, reject or close.
    stream: StreamT
    #: Where it was received (the address actually listened on).
    listened_on: str
    #: Seconds spent waiting for the peer, then reading its state.
    timings: dict[str, float] = field(default_factory=dict)

    #: "accepted", "rejected" or "closed" once answered (a state is answered once).
    _verdict: str | None = field(default=None, init=False, repr=False)

    def _answer(self, verdict: str, reason: str = "") -> bytes | None:
        """Take ``verdict`` ("accepted" or "rejected"): the STATUS frame a native
        sender reads before the close (None: a qemu sender reads the close alone).
        VerdictGiven if the state was answered already."""
        if self._verdict is not None:
            raise VerdictGiven(f"the state received on {self.listened_on}", self._verdict)
        self._verdict = verdict
        if self.codec != "native":
            return None
        return native.status_frame(verdict == "accepted", reason)

    def answering(
        self, verdict: str, reason: str = "", timeout: float | None = None
    ) -> Driver[str]:
        """Answer ``verdict`` ("accepted" or "rejected", with ``reason``): its STATUS
        frame, if any, sent within ``timeout``, then the close.  What happened:
        "closed the connection", or "the sender had already hung up".
        VerdictGiven now if the state was answered already."""
        return self._answering(self._answer(verdict, reason), timeout)

    def _answering(self, status: bytes | None, timeout: float | None) -> Driver[str]:
        outcome = "closed the connection"
        try:
            if status is not None:
                yield Send(self.stream, status, timeout)
        except ConnectionLostError:
            outcome = "the sender had already hung up"
        except BaseException:
            yield from self.closing()
            raise
        yield from self.closing()
        return outcome

    def closing(self) -> Driver[None]:
        """Close the connection: unanswered, that is "closed" (a native sender reads
        a close without a status as a failure)."""
        if self._verdict is None:
            self._verdict = "closed"
        yield Close(self.stream)
