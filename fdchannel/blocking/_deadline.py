"""Deadlines and the one place a blocking call waits: ``poll(2)`` on one descriptor.

Every wait in ``fdchannel.blocking`` goes through ``wait_ready`` with a
``Deadline``, so a single timeout bounds a whole operation (a state of many
messages, a handoff step), not each system call in it.  ``select.poll`` keeps
no descriptor of its own (unlike epoll), and Python retries it after a
signal with the time that is left (PEP 475): nothing here touches signals.
It takes at most an int of milliseconds (about 24.8 days), so a longer
wait is made of several; the timeouts themselves are any the async layer
takes (``seconds``).
"""

from __future__ import annotations

import math
import select
import time

from ..deadlines import seconds, timeout_text
from ..errors import TransportTimeout

__all__ = ["READABLE", "WRITABLE", "Deadline", "TransportTimeout", "wait_ready"]

#: Hang-up and error wake a waiter too: the next system call reports them.
READABLE = select.POLLIN | select.POLLPRI
WRITABLE = select.POLLOUT
#: The longest poll(2): its timeout is a C int of milliseconds.
_POLL_MAX_MS = 2**31 - 1


class Deadline:
    """A point in time (monotonic clock) after which waiting fails; None: never."""

    __slots__ = ("_at", "timeout")

    def __init__(self, timeout: float | None) -> None:
        limit = seconds(timeout)
        if math.isnan(limit):
            raise ValueError("timeout must be a number of seconds or None, not NaN")
        #: The timeout this deadline was made from, for messages.
        self.timeout = timeout
        # A negative timeout (-inf too) has passed already, as in anyio's fail_after.
        self._at = None if limit == math.inf else time.monotonic() + limit

    def left(self) -> float | None:
        """Seconds left (0 once passed), or None without a deadline."""
        return None if self._at is None else max(0.0, self._at - time.monotonic())

    def _poll_ms(self) -> int | None:
        """The next poll(2)'s timeout: what is left, up to the longest it takes."""
        left = self.left()
        if left is None:
            return None
        ms = left * 1000
        # Rounded up: poll() rounding down would wake before the deadline and spin.
        return _POLL_MAX_MS if ms >= _POLL_MAX_MS else math.ceil(ms)


def wait_ready(fd: int, events: int, deadline: Deadline, what: str, address: object = None) -> None:
    """Wait until ``fd`` is ready for ``events`` (or hung up); TransportTimeout at the deadline."""
    poller = select.poll()
    poller.register(fd, events)
    while not poller.poll(deadline._poll_ms()):
        if deadline.left() == 0:
            raise TransportTimeout(
                f"{what}: nothing happened within {timeout_text(deadline.timeout)}", address
            )
