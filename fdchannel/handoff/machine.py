"""Moved to ``fdchannel.protocol``: importable from here as before."""

from __future__ import annotations

from ..protocol.machine import (
    INCOMING as INCOMING,
    OUTGOING as OUTGOING,
    Event as Event,
    Machine as Machine,
    State as State,
)

__all__ = ["Event", "INCOMING", "Machine", "OUTGOING", "State"]
