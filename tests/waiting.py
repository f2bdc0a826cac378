"""Whether a thread really waits: its kernel wait channel, read from /proc."""

from __future__ import annotations

__all__ = ["in_poll"]


def in_poll(thread_id: int) -> bool:
    """Whether the thread sleeps in poll(2) (its kernel wait channel is poll's)."""
    with open(f"/proc/self/task/{thread_id}/wchan", encoding="ascii") as wchan:
        return "poll" in wchan.read()
