"""What the old process learns once its state was acknowledged: ``Ack``, in either layer."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Ack"]


@dataclass(frozen=True)
class Ack:
    """The new process acknowledged the state by closing the cpr channel."""

    codec: str
    descriptors: int
    #: Seconds from the first connect attempt to the acknowledgement.
    seconds: float
    #: "accepted" (native: the receiver's status, then its close) or "closed" (qemu).
    kind: str = "closed"
