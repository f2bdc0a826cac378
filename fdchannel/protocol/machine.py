"""The close-as-ack handoff as two state machines without I/O.

Every state, event and allowed transition is in the tables below; the
Outgoing and Incoming drivers only feed events.  An event a state does not
allow raises HandoffError naming both, so a driver bug or a misuse
(``finish()`` before ``start()``) is caught at once.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from .. import transitions
from ..errors import HandoffError

__all__ = [
    "INCOMING",
    "OUTGOING",
    "Event",
    "Machine",
    "State",
]


class State(enum.StrEnum):
    """Where a handoff stands (both sides share one vocabulary)."""

    IDLE = "idle"
    # outgoing
    CONNECTING_CPR = "connecting-cpr"
    SENDING = "sending"
    AWAITING_ACK = "awaiting-ack"
    ACKED = "acked"
    CONNECTING_MAIN = "connecting-main"
    # incoming
    LISTENING_CPR = "listening-cpr"
    RECEIVING = "receiving"
    RECEIVED = "received"
    LISTENING_MAIN = "listening-main"
    REJECTED = "rejected"
    # both
    MAIN_OPEN = "main-open"
    DONE = "done"
    FAILED = "failed"
    ABORTED = "aborted"


class Event(enum.StrEnum):
    """What happened."""

    # outgoing
    START = "start"
    CPR_CONNECTED = "cpr-connected"
    STATE_SENT = "state-sent"
    ACK = "ack"
    FINISH = "finish"
    MAIN_CONNECTED = "main-connected"
    # incoming
    LISTEN = "listen"
    PEER_ACCEPTED = "peer-accepted"
    STATE_RECEIVED = "state-received"
    LISTEN_MAIN = "listen-main"
    REJECT = "reject"
    MAIN_ACCEPTED = "main-accepted"
    # both
    COMPLETE = "complete"
    FAIL = "fail"
    ABORT = "abort"


S, E = State, Event
_FINAL = (S.DONE, S.FAILED, S.ABORTED, S.REJECTED)

Table = Mapping[tuple[State, Event], State]


def _with_failures(table: dict[tuple[State, Event], State], states: list[State]) -> Table:
    """Every live state may fail or be aborted; aborting twice is harmless."""
    for state in states:
        table.setdefault((state, E.FAIL), S.FAILED)
        table.setdefault((state, E.ABORT), S.ABORTED)
    for state in _FINAL:
        table[(state, E.ABORT)] = S.ABORTED if state is not S.DONE else S.DONE
    return table


#: The old process: connect cpr, send, half-close, wait for the close, then main.
OUTGOING: Table = _with_failures(
    {
        (S.IDLE, E.START): S.CONNECTING_CPR,
        (S.CONNECTING_CPR, E.CPR_CONNECTED): S.SENDING,
        (S.SENDING, E.STATE_SENT): S.AWAITING_ACK,
        (S.AWAITING_ACK, E.ACK): S.ACKED,
        (S.ACKED, E.FINISH): S.CONNECTING_MAIN,
        (S.CONNECTING_MAIN, E.MAIN_CONNECTED): S.MAIN_OPEN,
        (S.MAIN_OPEN, E.COMPLETE): S.DONE,
        # A failed attempt leaves the state with the sender; it may try again.
        (S.FAILED, E.START): S.CONNECTING_CPR,
    },
    [
        S.IDLE,
        S.CONNECTING_CPR,
        S.SENDING,
        S.AWAITING_ACK,
        S.ACKED,
        S.CONNECTING_MAIN,
        S.MAIN_OPEN,
    ],
)

#: The new process: listen on cpr first, read to EOF, listen on main, then close cpr.
INCOMING: Table = _with_failures(
    {
        (S.IDLE, E.LISTEN): S.LISTENING_CPR,
        (S.LISTENING_CPR, E.PEER_ACCEPTED): S.RECEIVING,
        (S.RECEIVING, E.STATE_RECEIVED): S.RECEIVED,
        (S.RECEIVED, E.LISTEN_MAIN): S.LISTENING_MAIN,
        (S.RECEIVED, E.REJECT): S.REJECTED,
        (S.LISTENING_MAIN, E.MAIN_ACCEPTED): S.MAIN_OPEN,
        (S.MAIN_OPEN, E.COMPLETE): S.DONE,
    },
    [S.IDLE, S.LISTENING_CPR, S.RECEIVING, S.RECEIVED, S.LISTENING_MAIN, S.MAIN_OPEN],
)


class Machine(transitions.Machine[State, Event]):
    """One handoff's current state, moved only through its table."""

    error = HandoffError

    def __init__(self, table: Table, side: str) -> None:
        super().__init__(table, side, S.IDLE)

    def refusal(self, event: Event) -> str:
        return f"{self.side} handoff: cannot {event.value} while {self.state.value}"
