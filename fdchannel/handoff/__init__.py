"""The close-as-ack handoff: a pure state machine and the two sides that drive it."""

from __future__ import annotations

from .cpr import Ack, ReceivedCpr, receive_cpr, send_cpr
from .incoming import Incoming
from .machine import INCOMING, OUTGOING, Event, Machine, State
from .outgoing import Outgoing

__all__ = [
    "INCOMING",
    "OUTGOING",
    "Ack",
    "Event",
    "Incoming",
    "Machine",
    "Outgoing",
    "ReceivedCpr",
    "State",
    "receive_cpr",
    "send_cpr",
]
