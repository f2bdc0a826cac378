"""The handshake between generations, exhaustively: every state x event on each
side, and the words of its control link."""

from __future__ import annotations

import itertools

import pytest

from fdchannel.errors import UpgradeError
from fdchannel.upgrade import NEW_STEPS, OLD_STEPS, handshake, lines
from fdchannel.upgrade.handshake import NEW, OLD, Event, Handshake, State, Table

S, E = State, Event

# The happy paths, written out independently of the tables.
OLD_PATH = [
    (E.SPAWN, S.SPAWNED),
    (E.LISTENERS_TAKEN, S.LISTENERS_SENT),
    (E.READY, S.READY_RECEIVED),
    (E.PAUSE, S.PAUSING),
    (E.PAUSED, S.PAUSED),
    (E.HANDOVER_TAKEN, S.HANDED_OVER),
    (E.COMMIT, S.COMMITTED),
]
NEW_PATH = [
    (E.LISTENERS_RECEIVED, S.INHERITED),
    (E.ACKNOWLEDGE, S.ACKNOWLEDGED),
    (E.SAY_READY, S.READY_SENT),
    (E.HANDOVER_RECEIVED, S.HANDOVER_RECEIVED),
    (E.SERVE, S.SERVING),
]
#: Where a failure can still happen: before the handover is acknowledged.
OLD_LIVE = [S.IDLE] + [s for _, s in OLD_PATH[:-2]]
NEW_LIVE = [S.IDLE] + [s for _, s in NEW_PATH[:-1]]
#: Beyond the happy path and FAIL: the old side rolls back a failure, and after the
#: commit ends the probation, settled or rolled back (the new generation exited);
#: the new one can tell the old one why it gives up until it has said "ready", and
#: is confirmed once the probation ends.
OLD_EXTRA = {
    (S.FAILED, E.ROLL_BACK): S.ROLLED_BACK,
    (S.COMMITTED, E.SETTLE): S.SETTLED,
    (S.COMMITTED, E.ROLL_BACK): S.ROLLED_BACK,
}
NEW_EXTRA = {
    **{(s, E.REPORT_FAILURE): S.FAILED for s in NEW_LIVE[:3]},
    (S.SERVING, E.CONFIRM): S.CONFIRMED,
}


def expected(
    path: list[tuple[Event, State]],
    live: list[State],
    extra: dict[tuple[State, Event], State],
    state: State,
    event: Event,
) -> State | None:
    if (state, event) in extra:
        return extra[(state, event)]
    steps = dict(zip([S.IDLE] + [s for _, s in path[:-1]], path, strict=True))
    if state in steps and steps[state][0] is event:
        return steps[state][1]
    if state in live and event is E.FAIL:
        return S.FAILED
    return None


CASES = [
    pytest.param(OLD, OLD_PATH, OLD_LIVE, OLD_EXTRA, id="old"),
    pytest.param(NEW, NEW_PATH, NEW_LIVE, NEW_EXTRA, id="new"),
]


@pytest.mark.parametrize(("table", "path", "live", "extra"), CASES)
def test_every_state_and_event(
    table: Table,
    path: list[tuple[Event, State]],
    live: list[State],
    extra: dict[tuple[State, Event], State],
) -> None:
    for state, event in itertools.product(State, Event):
        machine = Handshake(table, "side")
        machine.state = state
        want = expected(path, live, extra, state, event)
        if want is None:
            with pytest.raises(UpgradeError, match=f"cannot {event.value} while {state.value}"):
                machine.fire(event)
            assert machine.state is state
        else:
            assert machine.fire(event) is want, (state, event)


@pytest.mark.parametrize(
    ("table", "path", "steps"), [(OLD, OLD_PATH, OLD_STEPS), (NEW, NEW_PATH, NEW_STEPS)]
)
def test_the_happy_path_passes_every_progress_step_in_order(
    table: Table, path: list[tuple[Event, State]], steps: tuple[str, ...]
) -> None:
    machine = Handshake(table, "side")
    for event, _ in path:
        machine.fire(event)
    assert machine.history == [S.IDLE] + [s for _, s in path]
    assert [s.value for s in machine.history if s.value in steps] == list(steps)


def test_the_progress_steps_keep_their_names() -> None:
    # Public: progress callbacks and their users match on these words.
    assert OLD_STEPS == ("spawned", "listeners-sent", "ready-received", "paused", "handed-over")
    assert NEW_STEPS == ("inherited", "acknowledged", "ready-sent", "handover-received", "serving")


REPORTS = [
    pytest.param(lines.encode(handshake.READY), None, id="ready"),
    pytest.param(lines.encode(handshake.failed("no db")), "no db", id="failed"),
    pytest.param(b'{"failed": 3}\n', "an unreadable report", id="failed-not-text"),
    pytest.param(b'{"ready": 1}\n', "an unreadable report", id="ready-not-true"),
    pytest.param(b"[true]\n", "an unreadable report", id="not-an-object"),
    pytest.param(b"\xff\n", "an unreadable report", id="not-utf8"),
]


@pytest.mark.parametrize(
    ("line", "settled"),
    [
        (lines.encode(handshake.SETTLED), True),
        (b'{"settled": 1}\n', False),
        (b"\n", False),
        (lines.encode(handshake.READY), False),
    ],
)
def test_the_end_of_a_probation(line: bytes, settled: bool) -> None:
    assert handshake.settled(lines.decode(line.rstrip(b"\n"))) is settled


def test_lines_are_taken_one_after_the_other() -> None:
    reader = lines.LineReader(16)
    assert reader.feed(b'{"a": 1}\n{"b"') == b'{"a": 1}'
    assert reader.pending == b'{"b"'
    assert reader.feed(b"") is None
    assert reader.feed(b": 2}\nrest") == b'{"b": 2}'
    assert reader.pending == b"rest"


@pytest.mark.parametrize(("line", "reason"), REPORTS)
def test_what_the_new_generation_reports(line: bytes, reason: str | None) -> None:
    reader = lines.LineReader(64)
    whole = reader.feed(line)
    assert whole is not None
    assert handshake.report(lines.decode(whole)) == reason


#: A line's framing: the pieces that arrive, the line (None: not yet), or too long.
FRAMING = [
    pytest.param([b"upgrade\n"], b"upgrade", id="whole"),
    pytest.param([b"upg", b"rade\nmore"], b"upgrade", id="in-pieces"),
    pytest.param([b"upg"], None, id="half"),
    pytest.param([b"u" * 8], None, id="at-the-limit"),
    pytest.param([b"u" * 8 + b"\n"], b"u" * 8, id="at-the-limit-then-newline"),
    pytest.param([b"u" * 9], lines.LineTooLong, id="past-the-limit"),
    pytest.param([b"u" * 5, b"u" * 4 + b"\n"], lines.LineTooLong, id="past-it-in-pieces"),
]


@pytest.mark.parametrize(("pieces", "want"), FRAMING)
def test_a_line_is_framed_and_bounded(
    pieces: list[bytes], want: bytes | type[Exception] | None
) -> None:
    reader = lines.LineReader(8)
    got: bytes | None = None
    try:
        for piece in pieces:
            assert 1 <= reader.room() <= 9
            got = reader.feed(piece)
    except lines.LineTooLong:
        assert want is lines.LineTooLong
        return
    assert got == want
