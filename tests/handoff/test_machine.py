"""The handoff state machines, exhaustively: every state x event."""

from __future__ import annotations

import itertools

import pytest

from fdchannel import HandoffError
from fdchannel.handoff import INCOMING, OUTGOING, Event, Machine, State

# The happy paths, written out independently of the tables.
OUTGOING_PATH = [
    (Event.START, State.CONNECTING_CPR),
    (Event.CPR_CONNECTED, State.SENDING),
    (Event.STATE_SENT, State.AWAITING_ACK),
    (Event.ACK, State.ACKED),
    (Event.FINISH, State.CONNECTING_MAIN),
    (Event.MAIN_CONNECTED, State.MAIN_OPEN),
    (Event.COMPLETE, State.DONE),
]
INCOMING_PATH = [
    (Event.LISTEN, State.LISTENING_CPR),
    (Event.PEER_ACCEPTED, State.RECEIVING),
    (Event.STATE_RECEIVED, State.RECEIVED),
    (Event.LISTEN_MAIN, State.LISTENING_MAIN),
    (Event.MAIN_ACCEPTED, State.MAIN_OPEN),
    (Event.COMPLETE, State.DONE),
]
LIVE_OUT = [State.IDLE] + [s for _, s in OUTGOING_PATH[:-1]]
LIVE_IN = [State.IDLE] + [s for _, s in INCOMING_PATH[:-1]]


def expected(
    path: list[tuple[Event, State]],
    live: list[State],
    state: State,
    event: Event,
    extra: dict[tuple[State, Event], State],
) -> State | None:
    if (state, event) in extra:
        return extra[(state, event)]
    steps = dict(zip(live, path, strict=True))
    if state in steps and steps[state][0] is event:
        return steps[state][1]
    if state in live and event is Event.FAIL:
        return State.FAILED
    if event is Event.ABORT:
        return (
            State.DONE
            if state is State.DONE
            else (
                State.ABORTED
                if state in live or state in (State.FAILED, State.ABORTED, State.REJECTED)
                else None
            )
        )
    return None


CASES = [
    pytest.param(
        OUTGOING,
        "outgoing",
        OUTGOING_PATH,
        LIVE_OUT,
        {(State.FAILED, Event.START): State.CONNECTING_CPR},
        id="outgoing",
    ),
    pytest.param(
        INCOMING,
        "incoming",
        INCOMING_PATH,
        LIVE_IN,
        {(State.RECEIVED, Event.REJECT): State.REJECTED},
        id="incoming",
    ),
]


@pytest.mark.parametrize(("table", "side", "path", "live", "extra"), CASES)
def test_every_state_and_event(
    table: dict[tuple[State, Event], State],
    side: str,
    path: list[tuple[Event, State]],
    live: list[State],
    extra: dict[tuple[State, Event], State],
) -> None:
    checked = 0
    for state, event in itertools.product(State, Event):
        machine = Machine(table, side)
        machine.state = state
        want = expected(path, live, state, event, extra)
        if want is None:
            with pytest.raises(HandoffError, match=f"cannot {event.value} while {state.value}"):
                machine.fire(event)
            assert machine.state is state
        else:
            assert machine.fire(event) is want, (state, event)
        checked += 1
    assert checked == len(State) * len(Event)


@pytest.mark.parametrize(("table", "path"), [(OUTGOING, OUTGOING_PATH), (INCOMING, INCOMING_PATH)])
def test_happy_path_history(
    table: dict[tuple[State, Event], State], path: list[tuple[Event, State]]
) -> None:
    machine = Machine(table, "x")
    for event, _ in path:
        machine.fire(event)
    assert machine.history == [State.IDLE] + [s for _, s in path]
