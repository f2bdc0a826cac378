"""Named descriptors and the state that travels on a cpr channel."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from .fds import close_all

__all__ = ["FdState", "Limits", "NamedFd"]


@dataclass(frozen=True)
class NamedFd:
    """One descriptor with the (name, id) the receiver knows it by."""

    name: str
    id: int
    fd: int


@dataclass(frozen=True)
class Limits:
    """Bounds on everything a peer controls, so it cannot make us allocate or wait without end."""

    #: Longest name in bytes (QEMU's names are a few dozen).
    max_name: int = 4096
    #: Most entries (descriptors) in one state.
    max_entries: int = 1_000_000
    #: Largest metadata in bytes.
    max_metadata: int = 1 << 30
    #: Largest single native frame in bytes.
    max_frame: int = 64 << 20

    def __post_init__(self) -> None:
        for name in ("max_name", "max_entries", "max_metadata", "max_frame"):
            if getattr(self, name) < 0:
                raise ValueError(f"Limits.{name} must not be negative")


DEFAULT_LIMITS = Limits()


@dataclass
class FdState:
    """An ordered list of named descriptors plus opaque metadata.

    A state that was received owns its descriptors: close it (or use it as a
    context manager) once they have been taken over.  A state built to be
    sent does not: the sender keeps its descriptors whatever happens.
    """

    fds: list[NamedFd] = field(default_factory=list)
    metadata: bytes = b""

    def __post_init__(self) -> None:
        seen: set[tuple[str, int]] = set()
        for entry in self.fds:
            key = (entry.name, entry.id)
            if key in seen:
                raise ValueError(f"duplicate descriptor name {entry.name!r} id {entry.id}")
            seen.add(key)

    def get(self, name: str, id: int = 0) -> int:
        """The descriptor registered as (name, id); KeyError if there is none."""
        for entry in self.fds:
            if entry.name == name and entry.id == id:
                return entry.fd
        raise KeyError((name, id))

    def close(self) -> None:
        """Close every descriptor of the state; closing twice closes nothing twice."""
        close_all([entry.fd for entry in self.fds if entry.fd >= 0])
        # Forget the numbers so a second close cannot hit a reused descriptor.
        self.fds = [NamedFd(entry.name, entry.id, -1) for entry in self.fds]

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
