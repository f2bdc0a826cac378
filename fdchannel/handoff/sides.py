"""Moved to ``fdchannel.protocol``: importable from here as before."""

from __future__ import annotations

from ..protocol.incoming_side import IncomingSide as IncomingSide
from ..protocol.outgoing_side import OutgoingSide as OutgoingSide
from ..protocol.side import fail_step as fail_step

__all__ = ["IncomingSide", "OutgoingSide", "fail_step"]
