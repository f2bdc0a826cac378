"""Entries as runs: one name with consecutive ids.

10,000 connections named ``conn`` with ids 0..9999 are one run; QEMU's
states (distinct names, id 0) are one run per entry.  A state finds its
runs once, when it is built, and checks them (int32 ids, no NUL, no pair
twice) per run rather than per entry; the native table sends the runs.
Both directions work in C passes (map, compress, repeat), never a Python
step per entry.
"""

from __future__ import annotations

import array
import operator
from collections.abc import Iterator, Sequence
from itertools import chain, compress, count, islice, pairwise, repeat
from operator import add, ne, or_, sub
from typing import NamedTuple, overload

from .errors import StateError

__all__ = ["Repeated", "Runs", "check", "expand", "runs_of"]

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


class Runs(NamedTuple):
    """Parallel columns: run i is ``names[i]`` with ``lengths[i]`` ids from ``firsts[i]`` up."""

    names: Sequence[str]
    firsts: Sequence[int]
    lengths: Sequence[int]


def runs_of(names: Sequence[str], ids: Sequence[int]) -> Runs:
    """The fewest runs that spell out the entries, in order."""
    n = len(names)
    if n == 0:
        return Runs([], [], [])
    if names.count(names[0]) == n and _counts_up(ids):
        return Runs([names[0]], [ids[0]], [n])  # one kind of descriptor, numbered
    if len(set(names)) == n:
        return Runs(list(names), list(ids), [1] * n)  # every name its own run
    # A run ends where the name changes or the next id does not follow on.
    name_breaks = map(ne, islice(names, 1, None), names)
    id_breaks = map(ne, islice(ids, 1, None), map(add, ids, repeat(1)))
    starts = [0, *compress(count(1), map(or_, name_breaks, id_breaks))]
    ends = [*islice(starts, 1, None), n]
    return Runs(
        list(map(names.__getitem__, starts)),
        list(map(ids.__getitem__, starts)),
        list(map(sub, ends, starts)),
    )


def _counts_up(ids: Sequence[int]) -> bool:
    """True if the ids are first, first + 1, ... (a received state's ids are a range)."""
    first, n = ids[0], len(ids)
    if isinstance(ids, range):
        return ids.step == 1 or n == 1
    return ids[-1] - first == n - 1 and list(ids) == list(range(first, first + n))


def check(runs: Runs, total: int) -> None:
    """ValueError unless the runs hold ``total`` entries that can travel.

    Both wire formats carry ids as int32 and names as C strings, as QEMU
    does; and no (name, id) may come twice.
    """
    names, firsts, lengths = runs
    if not len(names) == len(firsts) == len(lengths):
        raise StateError("run columns differ in length")
    if names and (min(firsts) < INT32_MIN or max(firsts) > INT32_MAX):
        raise StateError("an id does not fit in a signed 32-bit integer")
    joined = "".join(names)
    if "\0" in joined:
        raise StateError("a descriptor name contains a NUL character")
    if not joined.isascii():  # isascii is free on ASCII text: the usual case costs nothing
        try:
            joined.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError as exc:
            raise StateError(
                f"a descriptor name holds {joined[exc.start : exc.end]!r}, which no bytes encode"
            ) from None
    if len(names) == total:
        if total and not min(lengths) == max(lengths) == 1:
            raise StateError(f"{total} runs hold {sum(lengths)} entries, not {total}")
    else:
        if (total and not names) or (names and min(lengths) < 1):
            raise StateError("a run holds no entry")
        if sum(lengths) != total:
            raise StateError(f"runs hold {sum(lengths)} entries, not {total}")
        if names and max(map(add, firsts, lengths)) - 1 > INT32_MAX:
            raise StateError("an id does not fit in a signed 32-bit integer")
    if len(set(names)) == len(names):
        return  # distinct names: distinct (name, id) pairs
    spans: dict[str, list[tuple[int, int]]] = {}
    for name, first, length in zip(names, firsts, lengths, strict=True):
        spans.setdefault(name, []).append((first, first + length))
    for name, ranges in spans.items():
        ranges.sort()
        for (_, end), (start, _) in pairwise(ranges):
            if start < end:
                raise StateError(f"duplicate descriptor name {name!r} id {start}")


class Repeated(Sequence[str]):
    """One name ``len`` times, as a column, without a list of them.

    A single run's name column: 10,000 connections named ``conn`` cost no
    80 KB list (and its page faults) when their state is received.
    """

    __slots__ = ("_length", "name")

    def __init__(self, name: str, length: int) -> None:
        self.name = name
        self._length = length

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> Repeated: ...

    def __getitem__(self, index: int | slice) -> str | Repeated:
        if isinstance(index, slice):
            return Repeated(self.name, len(range(self._length)[index]))
        if not -self._length <= operator.index(index) < self._length:
            raise IndexError("Repeated index out of range")
        return self.name

    def __iter__(self) -> Iterator[str]:
        return repeat(self.name, self._length)

    def __contains__(self, value: object) -> bool:
        return self._length > 0 and value == self.name

    def __repr__(self) -> str:
        return f"Repeated({self.name!r}, {self._length})"


def expand(runs: Runs, total: int) -> tuple[Sequence[str], Sequence[int]]:
    """The name and id columns of ``total`` entries (runs already checked)."""
    names, firsts, lengths = runs
    if len(names) == total:
        return list(names), firsts
    if len(names) == 1:
        return Repeated(names[0], total), range(firsts[0], firsts[0] + total)
    ids = array.array("i", chain.from_iterable(map(range, firsts, map(add, firsts, lengths))))
    return list(chain.from_iterable(map(repeat, names, lengths))), ids
