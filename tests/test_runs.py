"""The native table's runs: one name with consecutive ids."""

from __future__ import annotations

import array

import pytest
from hypothesis import example, given, settings, strategies as st

from fdchannel.runs import Repeated, Runs, check, expand, runs_of

from .fuzzing import examples

# (names, ids, the runs they make)
SHAPES = [
    ([], [], Runs([], [], [])),
    (["conn"] * 5, [0, 1, 2, 3, 4], Runs(["conn"], [0], [5])),
    (["ram0", "pc.rom", "vga"], [0, 0, 0], Runs(["ram0", "pc.rom", "vga"], [0, 0, 0], [1, 1, 1])),
    (["a", "a", "b", "a"], [7, 8, 0, 9], Runs(["a", "b", "a"], [7, 0, 9], [2, 1, 1])),
    (["a", "a", "a"], [3, 5, 6], Runs(["a", "a"], [3, 5], [1, 2])),
    (["a", "a"], [2, 1], Runs(["a", "a"], [2, 1], [1, 1])),
    (["x"] * 3, range(-1, 2), Runs(["x"], [-1], [3])),
    (["x"] * 3, array.array("i", [2**31 - 3, 2**31 - 2, 2**31 - 1]), Runs(["x"], [2**31 - 3], [3])),
]


@pytest.mark.parametrize(("names", "ids", "runs"), SHAPES)
def test_runs_of(names: list[str], ids: list[int], runs: Runs) -> None:
    made = runs_of(names, ids)
    assert [list(column) for column in made] == [list(column) for column in runs]
    check(made, len(names))
    rebuilt_names, rebuilt_ids = expand(made, len(names))
    assert list(rebuilt_names) == names and list(rebuilt_ids) == list(ids)


# (runs, entries, what check says)
BAD = [
    (Runs(["a"], [0], [2]), 1, "runs hold 2 entries, not 1"),
    (Runs(["a", "b"], [0, 0], [1, 2]), 2, "runs hold 3 entries, not 2"),
    (Runs(["a", "b"], [0, 0], [3, 0]), 3, "no entry"),
    (Runs([], [], []), 1, "no entry"),
    (Runs(["a"], [0, 1], [1]), 1, "differ in length"),
    (Runs(["a"], [2**31 - 1], [2]), 2, "signed 32-bit"),
    (Runs(["a", "b", "a"], [0, 0, 4], [5, 1, 1]), 7, "duplicate descriptor name 'a' id 4"),
    (Runs(["a", "a"], [0, 0], [1, 1]), 2, "duplicate descriptor name 'a' id 0"),
]


@pytest.mark.parametrize(("runs", "entries", "message"), BAD)
def test_check_refuses(runs: Runs, entries: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check(runs, entries)


entries = st.lists(st.tuples(st.sampled_from("abc"), st.integers(-3, 3)), max_size=40)


@settings(max_examples=examples(500), deadline=None)
@given(entries)
@example([("a", 0), ("b", 0), ("a", 0)])
def test_round_trip_and_duplicates(pairs: list[tuple[str, int]]) -> None:
    """Any entries: expand(runs_of) gives them back; check refuses exactly the duplicates."""
    names = [name for name, _ in pairs]
    ids = [id_ for _, id_ in pairs]
    runs = runs_of(names, ids)
    rebuilt_names, rebuilt_ids = expand(runs, len(pairs))
    assert list(zip(rebuilt_names, rebuilt_ids, strict=True)) == pairs
    if len(set(pairs)) == len(pairs):
        check(runs, len(pairs))
    else:
        with pytest.raises(ValueError, match="duplicate"):
            check(runs, len(pairs))


def test_one_run_expands_to_a_column_without_a_list() -> None:
    """10,000 entries of one name: a Repeated column, which reads as the list would."""
    names, ids = expand(Runs(["conn"], [5], [10_000]), 10_000)
    assert isinstance(names, Repeated) and ids == range(5, 10_005)
    as_list = ["conn"] * 10_000
    assert len(names) == 10_000 and list(names) == as_list
    assert (names[0], names[-1], names[9_999]) == ("conn", "conn", "conn")
    assert list(names[10:20]) == as_list[10:20] and list(names[::-3]) == as_list[::-3]
    assert "conn" in names and "other" not in names and "conn" not in Repeated("conn", 0)
    assert names.index("conn") == 0 and names.count("conn") == 10_000


@pytest.mark.parametrize("index", [10_000, -10_001])
def test_a_repeated_column_refuses_what_a_list_refuses(index: int) -> None:
    names = Repeated("conn", 10_000)
    with pytest.raises(IndexError):
        names[index]
    with pytest.raises(TypeError):
        names["0"]  # type: ignore[call-overload]
