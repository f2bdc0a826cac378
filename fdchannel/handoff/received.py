"""Moved to ``fdchannel.protocol``: importable from here as before."""

from __future__ import annotations

from ..protocol.received import (
    ReceivedCprCore as ReceivedCprCore,
)

__all__ = ["ReceivedCprCore"]
