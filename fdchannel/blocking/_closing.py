"""``with`` for the blocking layer's objects: leaving the block closes them."""

from __future__ import annotations

import abc
from types import TracebackType
from typing import Self

__all__ = ["Closing"]


class Closing(abc.ABC):
    """An object that ``with`` closes on the way out, whatever happened."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close; idempotent."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
