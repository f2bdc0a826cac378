"""A state moved only through a table of transitions: the shape of every protocol
state machine here (the handoff's, the upgrade handshake's), written once.

No I/O and no event loop: a driver feeds events, and an event the current
state does not allow is refused with the protocol's own error naming both.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import ClassVar, Generic, TypeVar

__all__ = ["Machine"]

StateT = TypeVar("StateT", bound=enum.Enum)
EventT = TypeVar("EventT", bound=enum.Enum)


class Machine(Generic[StateT, EventT]):
    """One side's current state, moved only through ``table``."""

    #: What a refused event raises (a protocol's own FdChannelError).
    error: ClassVar[type[Exception]] = ValueError

    def __init__(
        self, table: Mapping[tuple[StateT, EventT], StateT], side: str, start: StateT
    ) -> None:
        self._table = table
        self.side = side
        self.state = start
        #: Every state passed through, for diagnostics (and what a rollback undoes).
        self.history: list[StateT] = [start]

    def allows(self, event: EventT) -> bool:
        return (self.state, event) in self._table

    def passed(self, state: StateT) -> bool:
        """Whether ``state`` was reached at some point."""
        return state in self.history

    def fire(self, event: EventT) -> StateT:
        """Apply ``event``; ``error`` if the current state does not allow it."""
        try:
            self.state = self._table[(self.state, event)]
        except KeyError:
            raise self.error(self.refusal(event)) from None
        self.history.append(self.state)
        return self.state

    def refusal(self, event: EventT) -> str:
        """Why ``event`` is refused now."""
        return f"{self.side}: cannot {event.value} while {self.state.value}"
