"""FdState: what a state may hold, and how it owns what it received."""

from __future__ import annotations

import os

import pytest

from fdchannel import FdState, NamedFd

# (entries, the ValueError's message): both wire formats carry int32 ids and C-string names.
REFUSED = [
    ([NamedFd("a", 0, 3), NamedFd("a", 0, 4)], "duplicate descriptor name 'a' id 0"),
    ([NamedFd("a", 1, 3), NamedFd("b", 0, 4), NamedFd("a", 1, 5)], "name 'a' id 1"),
    ([NamedFd("a\0b", 0, 3)], "contains a NUL"),
    ([NamedFd("a", 2**31, 3)], "signed 32-bit"),
    ([NamedFd("a", -(2**31) - 1, 3)], "signed 32-bit"),
]


@pytest.mark.parametrize(("entries", "message"), REFUSED)
def test_refused_entries(entries: list[NamedFd], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FdState(entries)
    names, ids, fds = zip(*entries, strict=True)
    with pytest.raises(ValueError, match=message):
        FdState.from_columns(names, ids, fds)


ACCEPTED = [
    [],
    [NamedFd("a", 0, 3), NamedFd("a", 1, 4), NamedFd("b", 0, 5)],
    [NamedFd("a", 2**31 - 1, 3), NamedFd("a", -(2**31), 4)],
    [("tuple", 0, 3)],
]


@pytest.mark.parametrize("entries", ACCEPTED)
def test_accepted_entries(entries: list[NamedFd]) -> None:
    state = FdState(entries)
    assert state.fds == [NamedFd(*entry) for entry in entries]
    assert len(state) == len(entries)


def test_columns_and_lookup() -> None:
    state = FdState.from_columns(["a", "a", "b"], [0, 1, 0], [10, 11, 12], b"meta")
    assert state.get("a", 1) == 11 and state.get("b") == 12
    with pytest.raises(KeyError):
        state.get("c")
    assert state.fds[2] == NamedFd("b", 0, 12)
    with pytest.raises(ValueError, match="differ in length"):
        FdState.from_columns(["a"], [0, 1], [3])


def test_close_twice_closes_once() -> None:
    fds = [os.memfd_create("s", os.MFD_CLOEXEC) for _ in range(3)]
    state = FdState.from_columns(["s"] * 3, range(3), fds)
    state.close()
    for fd in fds:
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.fstat(fd)
    reused = os.memfd_create("reused", os.MFD_CLOEXEC)  # may take one of the old numbers
    try:
        state.close()
        os.fstat(reused)
    finally:
        os.close(reused)
