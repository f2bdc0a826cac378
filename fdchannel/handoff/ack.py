"""Moved to ``fdchannel.protocol``: importable from here as before."""

from __future__ import annotations

from ..protocol.ack import (
    Ack as Ack,
)

__all__ = ["Ack"]
