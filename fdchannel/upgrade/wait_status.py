"""A child's wait status in words and as an exit status: no I/O, no event loop.

``UNKNOWN`` (or None) is the status of a child someone else reaped.
"""

from __future__ import annotations

import os
import signal

__all__ = ["UNKNOWN", "exit_code", "fate", "status_text"]

#: The wait status of a child someone else reaped.
UNKNOWN = -1


def status_text(status: int | None) -> str:
    """A wait status in words: "exit status 3", "killed by SIGKILL", "status unknown"."""
    if status is None or status == UNKNOWN:
        return "status unknown"
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(number).name}"
        except ValueError:
            return f"killed by signal {number}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def fate(status: int | None) -> str:
    """What became of a process, for a sentence about it: "exited with status 3",
    "was killed by SIGSEGV", "exited (status unknown)"."""
    if status is None or status == UNKNOWN:
        return "exited (status unknown)"
    if os.WIFSIGNALED(status):
        return f"was {status_text(status)}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def exit_code(status: int | None) -> int:
    """What to exit with for a wait status, as a shell: its code, 128 + a signal, 1 if unknown."""
    if status is None or status == UNKNOWN:
        return 1
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)
