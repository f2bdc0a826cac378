"""Timeouts as both layers read them, and the clock handoff timings use.

A timeout is seconds (any int or float, None for no deadline): ``seconds``
turns it into the float a deadline is reckoned from, ``timeout_text``
into a short text for messages.  Nothing here waits.
"""

from __future__ import annotations

import math
import time

__all__ = ["now", "seconds", "timeout_text"]


def now() -> float:
    """The clock handoff timings use (monotonic, shared by every process)."""
    return time.monotonic()


def seconds(timeout: float | None) -> float:
    """A timeout as the float a deadline is reckoned from, in either layer.

    None (no deadline) is infinity, and so is an int too large for a float:
    no clock gets there.  NaN stays NaN, for the deadline to refuse, and a
    value that is no number stays a TypeError.
    """
    if timeout is None:
        return math.inf
    try:
        return timeout + 0.0
    except OverflowError:  # an int beyond any float
        return math.inf if timeout > 0 else -math.inf


def timeout_text(timeout: float | None) -> str:
    """A timeout for a message, e.g. "0.3 s": short whatever was given (an int
    of 5,000 digits would not even convert to text)."""
    return f"{seconds(timeout):g} s"
