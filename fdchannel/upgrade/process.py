"""A child process of ours watched through a pidfd: its exit seen without reaping it,
waited for on any event loop, signalled without ever reaching a reused pid.

The base of a generation started by an upgrade (``spawn.Child``) and of the
server a ``fdchannel serve`` generation runs (``launch_process.ServerProcess``).
"""

from __future__ import annotations

import contextlib
import os
import signal

import anyio

from ..deadlines import seconds
from .wait_status import UNKNOWN, status_text

__all__ = ["Process"]


class Process:
    """A started child: its pid, and a pidfd that turns readable when it exits."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._pidfd: int | None = os.pidfd_open(pid)
        #: The wait status once reaped (``UNKNOWN`` if someone else reaped it).
        self.status: int | None = None

    def exited(self) -> bool:
        """Whether it has exited (reaping it if so)."""
        if self.status is not None:
            return True
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # reaped by someone else: gone, status unknown
            pid, status = self.pid, UNKNOWN
        if pid == 0:
            return False
        self.status = status
        return True

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait for it to exit (True) or for ``timeout`` to pass (False)."""
        with anyio.move_on_after(seconds(timeout)):
            while not self.exited():
                assert self._pidfd is not None, "let go of"
                await anyio.wait_readable(self._pidfd)
        return self.status is not None

    def signal(self, signum: int) -> None:
        """Send ``signum`` to it, through the pidfd: never to a pid someone reused."""
        if self.status is None and self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signum)

    def close(self) -> None:
        """Let go of the pidfd (once it has been reaped, or to leave it be)."""
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def describe(self) -> str:
        """``pid 42 exited (exit status 3)`` or ``pid 42 is still running``."""
        if self.exited():
            return f"pid {self.pid} exited ({status_text(self.status)}{self._said()})"
        return f"pid {self.pid} is still running"

    def _said(self) -> str:
        """What to add to ``describe`` once it has exited (its last words)."""
        return ""
