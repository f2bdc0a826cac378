"""The handshake between two generations, as two state machines without I/O.

The old generation spawns the new one and hands it the listeners over a
cpr channel; the new one takes them (the close-as-ack), says ``ready`` on
the control link, and receives on a second cpr channel whatever the old one
``pause``\\ d; acknowledging that is the commit.  Every state, event and
allowed transition is in the tables below; the I/O code (``sides.py``) only
feeds events, and an event a state does not allow is an UpgradeError naming
both.  The states a progress callback hears are OLD_STEPS and NEW_STEPS.

The words on the control link are JSON lines (``lines.py``): ``READY`` or
``failed(reason)``; ``report`` reads one back.  With a probation the link
stays open after the commit: the old generation ends the probation with
``SETTLED`` (the new one stuck), or by going away.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Any

from .. import transitions
from ..errors import UpgradeError

__all__ = [
    "NEW",
    "NEW_STEPS",
    "OLD",
    "OLD_STEPS",
    "READY",
    "SETTLED",
    "Event",
    "Handshake",
    "State",
    "failed",
    "report",
    "settled",
]


class State(enum.StrEnum):
    """Where one generation's side of the handshake stands."""

    IDLE = "idle"
    # the old generation
    SPAWNED = "spawned"
    LISTENERS_SENT = "listeners-sent"
    READY_RECEIVED = "ready-received"
    PAUSING = "pausing"
    PAUSED = "paused"
    HANDED_OVER = "handed-over"
    COMMITTED = "committed"
    SETTLED = "settled"
    ROLLED_BACK = "rolled-back"
    # the new generation
    INHERITED = "inherited"
    ACKNOWLEDGED = "acknowledged"
    READY_SENT = "ready-sent"
    HANDOVER_RECEIVED = "handover-received"
    SERVING = "serving"
    CONFIRMED = "confirmed"
    # both
    FAILED = "failed"


class Event(enum.StrEnum):
    """What happened."""

    # the old generation
    SPAWN = "spawn"
    LISTENERS_TAKEN = "listeners-taken"
    READY = "ready"
    PAUSE = "pause"
    PAUSED = "paused"
    HANDOVER_TAKEN = "handover-taken"
    COMMIT = "commit"
    SETTLE = "settle"
    ROLL_BACK = "roll-back"
    # the new generation
    LISTENERS_RECEIVED = "listeners-received"
    ACKNOWLEDGE = "acknowledge"
    SAY_READY = "say-ready"
    HANDOVER_RECEIVED = "handover-received"
    SERVE = "serve"
    CONFIRM = "confirm"
    REPORT_FAILURE = "report-failure"
    # both
    FAIL = "fail"


S, E = State, Event
Table = Mapping[tuple[State, Event], State]


def _failing(table: dict[tuple[State, Event], State], live: Iterable[State]) -> Table:
    """Every live state may fail."""
    for state in live:
        table[(state, E.FAIL)] = S.FAILED
    return table


#: The old generation: spawn, send the listeners, hear "ready", pause, hand over,
#: commit; a failure before the handover is acknowledged is rolled back (the new
#: generation killed, what was paused resumed).  After the commit, the probation
#: (none: it settles at once): the new generation stuck, or it exited and this one
#: serves again.
OLD: Table = _failing(
    {
        (S.IDLE, E.SPAWN): S.SPAWNED,
        (S.SPAWNED, E.LISTENERS_TAKEN): S.LISTENERS_SENT,
        (S.LISTENERS_SENT, E.READY): S.READY_RECEIVED,
        (S.READY_RECEIVED, E.PAUSE): S.PAUSING,
        (S.PAUSING, E.PAUSED): S.PAUSED,
        (S.PAUSED, E.HANDOVER_TAKEN): S.HANDED_OVER,
        (S.HANDED_OVER, E.COMMIT): S.COMMITTED,
        (S.COMMITTED, E.SETTLE): S.SETTLED,
        (S.COMMITTED, E.ROLL_BACK): S.ROLLED_BACK,
        (S.FAILED, E.ROLL_BACK): S.ROLLED_BACK,
    },
    [S.IDLE, S.SPAWNED, S.LISTENERS_SENT, S.READY_RECEIVED, S.PAUSING, S.PAUSED],
)

#: The new generation: take the listeners, acknowledge them, say "ready", take the
#: handover, serve; confirmed once a probation ends.  Before "ready" it can still
#: tell the old one why it gives up.
NEW: Table = _failing(
    {
        (S.IDLE, E.LISTENERS_RECEIVED): S.INHERITED,
        (S.INHERITED, E.ACKNOWLEDGE): S.ACKNOWLEDGED,
        (S.ACKNOWLEDGED, E.SAY_READY): S.READY_SENT,
        (S.READY_SENT, E.HANDOVER_RECEIVED): S.HANDOVER_RECEIVED,
        (S.HANDOVER_RECEIVED, E.SERVE): S.SERVING,
        (S.SERVING, E.CONFIRM): S.CONFIRMED,
        (S.IDLE, E.REPORT_FAILURE): S.FAILED,
        (S.INHERITED, E.REPORT_FAILURE): S.FAILED,
        (S.ACKNOWLEDGED, E.REPORT_FAILURE): S.FAILED,
    },
    [S.IDLE, S.INHERITED, S.ACKNOWLEDGED, S.READY_SENT, S.HANDOVER_RECEIVED],
)

#: What a progress callback hears, in order (old side, then new side).
OLD_STEPS: tuple[str, ...] = tuple(
    s.value for s in (S.SPAWNED, S.LISTENERS_SENT, S.READY_RECEIVED, S.PAUSED, S.HANDED_OVER)
)
NEW_STEPS: tuple[str, ...] = tuple(
    s.value for s in (S.INHERITED, S.ACKNOWLEDGED, S.READY_SENT, S.HANDOVER_RECEIVED, S.SERVING)
)


class Handshake(transitions.Machine[State, Event]):
    """One side's current state, moved only through its table."""

    error = UpgradeError

    def __init__(self, table: Table, side: str) -> None:
        super().__init__(table, side, S.IDLE)


#: The new generation is ready: the old one may pause and hand over.
READY: dict[str, Any] = {"ready": True}


#: The probation is over and the new generation stuck: it is the main process now.
SETTLED: dict[str, Any] = {"settled": True}


def failed(reason: str) -> dict[str, Any]:
    """The new generation gives up, and why."""
    return {"failed": reason}


def report(message: dict[str, Any] | None) -> str | None:
    """None for READY; else why the new generation did not start."""
    if message is not None and message.get("ready") is True:
        return None
    reason = message.get("failed") if message is not None else None
    return reason if isinstance(reason, str) else "an unreadable report"


def settled(message: dict[str, Any] | None) -> bool:
    """Whether the old generation's last word was SETTLED."""
    return message is not None and message.get("settled") is True
