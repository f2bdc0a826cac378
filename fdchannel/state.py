"""Named descriptors and the state that travels on a cpr channel."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import repeat
from types import TracebackType
from typing import TYPE_CHECKING, NamedTuple, Self

from .errors import StateError
from .fds import close_all
from .limits import DEFAULT_LIMITS as DEFAULT_LIMITS, Limits as Limits
from .runs import Runs, check, runs_of

if TYPE_CHECKING:
    from .qemu.vmstate import Subsection

# Limits and DEFAULT_LIMITS live in fdchannel.limits; they are imported from here too.
__all__ = ["DEFAULT_LIMITS", "FdState", "Limits", "NamedFd"]


class NamedFd(NamedTuple):
    """One descriptor with the (name, id) the receiver knows it by.

    A named tuple, not a dataclass: states carry tens of thousands of them,
    and a tuple is built and taken apart in C (see ``FdState.from_columns``).
    """

    name: str
    id: int
    fd: int


Columns = tuple[Sequence[str], Sequence[int], Sequence[int]]


class FdState:
    """An ordered list of named descriptors plus opaque metadata.

    A state that was received owns its descriptors: close it (or use it as a
    context manager) once they have been taken over.  A state built to be
    sent does not: the sender keeps its descriptors whatever happens.

    Inside, a state may hold its entries as three columns (names, ids,
    descriptors): that is how the codecs build and read them, in C, and
    ``fds`` makes the NamedFd list only when someone asks for it.
    """

    #: The VMState subsections a QEMU 10.1+ sent after its descriptors (qemu
    #: codec only; ``fdchannel.qemu.vmstate.Subsection``), written back as they came.
    qemu_subsections: tuple[Subsection, ...] = ()
    #: Position of each (name, id), made by the first ``get``.
    _index: dict[tuple[str, int], int] | None = None
    #: The codec it arrived in ("native" or "qemu"); None for a state built here.
    codec: str | None = None

    def __init__(self, fds: Iterable[NamedFd | tuple[str, int, int]] = (), metadata: bytes = b""):
        entries = [entry if type(entry) is NamedFd else NamedFd(*entry) for entry in fds]
        names, ids, descriptors = _transpose(entries)
        self._runs = _checked_runs(names, ids)
        self._entries: list[NamedFd] | None = entries
        self._columns: Columns = (names, ids, descriptors)
        self.metadata = metadata

    @classmethod
    def from_columns(
        cls,
        names: Sequence[str],
        ids: Sequence[int],
        fds: Sequence[int],
        metadata: bytes = b"",
        *,
        runs: Runs | None = None,
    ) -> FdState:
        """Build a state from parallel columns without a Python step per entry.

        ``runs``: the columns' runs, already checked (a decoder read them).
        """
        if not len(names) == len(ids) == len(fds):
            raise StateError("names, ids and descriptors differ in length")
        state = cls.__new__(cls)
        state._runs = _checked_runs(names, ids) if runs is None else runs
        state._entries = None
        state._columns = (names, ids, fds)
        state.metadata = metadata
        return state

    @property
    def fds(self) -> list[NamedFd]:
        """The entries, in order."""
        if self._entries is None:
            self._entries = list(
                map(tuple.__new__, repeat(NamedFd), zip(*self._columns, strict=True))
            )
        return self._entries

    def columns(self) -> Columns:
        """Names, ids and descriptors as three parallel sequences."""
        return self._columns

    def runs(self) -> Runs:
        """The entries as runs of one name with consecutive ids (see ``fdchannel.runs``)."""
        return self._runs

    def __len__(self) -> int:
        return len(self._columns[0])

    def get(self, name: str, id: int = 0) -> int:
        """The descriptor registered as (name, id); KeyError if there is none.

        The first lookup indexes the entries (the state checked that no
        (name, id) comes twice), so a lookup per entry stays linear overall.
        """
        names, ids, fds = self._columns
        if self._index is None:
            pairs = zip(names, ids, strict=True)
            self._index = {key: position for position, key in enumerate(pairs)}
        return fds[self._index[(name, id)]]

    def close(self) -> None:
        """Close every descriptor of the state; closing twice closes nothing twice."""
        names, ids, fds = self._columns
        close_all([fd for fd in fds if fd >= 0])
        # Forget the numbers so a second close cannot hit a reused descriptor.
        self._columns = (names, ids, [-1] * len(fds))
        self._entries = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FdState):
            return NotImplemented
        return (
            self.fds == other.fds
            and self.metadata == other.metadata
            and self.qemu_subsections == other.qemu_subsections
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, like the list it holds

    def __repr__(self) -> str:
        subsections = (
            f", qemu_subsections={self.qemu_subsections!r}" if self.qemu_subsections else ""
        )
        return f"FdState({self.fds!r}, metadata={self.metadata!r}{subsections})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _transpose(entries: list[NamedFd]) -> Columns:
    if not entries:
        return (), (), ()
    names, ids, fds = zip(*entries, strict=True)
    return names, ids, fds


def _checked_runs(names: Sequence[str], ids: Sequence[int]) -> Runs:
    runs = runs_of(names, ids)
    check(runs, len(names))
    return runs
