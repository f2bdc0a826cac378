"""The cpr exchange's parts that never wait, for ``send_cpr`` and ``receive_cpr`` in either layer.

``ReceivedCprCore`` is a received state awaiting its answer: what it holds,
and the rule that it is answered once (``VerdictGiven`` after that); each
layer's ``ReceivedCpr`` adds the I/O of the answer.  ``cpr_channel`` reads
a target as a cpr channel; the two timeout messages are the ones both
layers raise.  Nothing here waits or imports an event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ..channel import Channel, ChannelType, Target, resolve_target
from ..codec_choice import Codec
from ..codecs import native
from ..deadlines import timeout_text
from ..errors import VerdictGiven
from ..state import FdState

__all__ = [
    "Progress",
    "ReceivedCprCore",
    "cpr_channel",
    "no_ack_within",
    "no_state_within",
]

#: What send_cpr reports as it goes: "connected", "sent", "acknowledged";
#: receive_cpr: "accepted", "received".
Progress = Callable[[str], object]


def cpr_channel(target: Target) -> Channel:
    """The channel to use: a Channel as it is, anything else as a cpr channel."""
    if isinstance(target, Channel):
        return target
    address, _ = resolve_target(target)
    return Channel(ChannelType.CPR, address)


def no_ack_within(target: Target, timeout: float | None) -> str:
    """send_cpr's HandoffTimeout."""
    return f"no acknowledgement on {cpr_channel(target).addr} within {timeout_text(timeout)}"


def no_state_within(timeout: float | None) -> str:
    """receive_cpr's HandoffTimeout."""
    return f"no state arrived within {timeout_text(timeout)}"


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

    def _closing(self) -> None:
        """The connection closes: unanswered, that is "closed" (a native sender
        reads a close without a status as a failure)."""
        if self._verdict is None:
            self._verdict = "closed"
