"""One line for what made a generation give up, and for what a new generation did.

A failed upgrade's reason names what the new generation did: "exited with
status 1 before ready(): ModuleNotFoundError: ...", "was killed by SIGSEGV",
"did not call ready() within 30 s"; never the state of the socket between
the two (a new generation that exits resets it: that is the consequence,
not the cause).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import UpgradeFailed
from .stderr import last_words
from .wait_status import fate, status_text

__all__ = ["GenerationFailed", "reason", "running", "said"]


def reason(error: BaseException) -> str:
    """The error's text, task groups unwrapped."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(reason(e) for e in error.exceptions)
    return str(error) or type(error).__name__


def said(lines: Sequence[str], last: int = 5) -> str:
    """``; its stderr ended: A | B``, or nothing."""
    return f"; its stderr ended: {' | '.join(lines[-last:])}" if lines else ""


def running(pid: int, did: str, stderr: Sequence[str] = ()) -> str:
    """``the new generation (pid 42) did not call ready() within 30 s; its stderr ended: ...``"""
    return f"the new generation (pid {pid}) {did}{said(stderr)}"


class GenerationFailed(UpgradeFailed):
    """The new generation did not take over, said as what it did: it exited or was
    killed (``status``, its wait status), or it is still running (``status`` None)
    and did not do something in time.  ``stderr``: its last lines, escaped."""

    def __init__(
        self, message: str, pid: int, status: int | None = None, stderr: Sequence[str] = ()
    ) -> None:
        super().__init__(message)
        self.pid = pid
        #: Its wait status, once it exited (None: it was still running).
        self.wait_status = status
        self.stderr = tuple(stderr)

    @classmethod
    def exited(
        cls, pid: int, status: int | None, when: str, stderr: Sequence[str] = ()
    ) -> GenerationFailed:
        """``the new generation (pid 42) exited with status 1 before ready(): LAST WORDS``;
        ``when`` follows how it ended as it is (" before ready()")."""
        words = last_words(stderr)
        told = f": {' | '.join(words)}" if words else ""
        message = f"the new generation (pid {pid}) {fate(status)}{when}{told}"
        return cls(message, pid, status, stderr)

    def details(self) -> dict[str, Any]:
        """What an outcome records of it besides the reason (JSON)."""
        found: dict[str, Any] = {"pid": self.pid}
        if self.wait_status is not None:
            found["exit_status"] = status_text(self.wait_status)
        found["stderr"] = list(self.stderr)
        return found
