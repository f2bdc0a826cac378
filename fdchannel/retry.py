"""When both layers try a connect again: the peer is not listening yet, and how long to wait.

QEMU does not retry; a new process that is still starting is normal for
us, so a connect that finds no listener (yet) is tried again after a short
pause that doubles each time, until the caller's deadline.  Each layer
adds only its way of waiting.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator

from .errors import ConnectError

__all__ = ["FIRST_DELAY", "MAX_DELAY", "NOT_YET", "delays", "not_yet", "worth_retrying"]

#: errno values that mean "the peer is not listening yet": worth retrying.
NOT_YET = frozenset({errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN})
FIRST_DELAY = 0.001
MAX_DELAY = 0.05


def not_yet(exc: ConnectError) -> OSError | None:
    """The OSError behind a failed connect if it means "not listening yet", else None."""
    cause = exc.__cause__
    return cause if isinstance(cause, OSError) and cause.errno in NOT_YET else None


def worth_retrying(exc: ConnectError, attempts: list[str] | None) -> OSError:
    """The reason a failed attempt may be tried again (appended to ``attempts`` if
    given); ``exc`` itself, raised, when it may not."""
    cause = not_yet(exc)
    if cause is None:
        raise exc
    if attempts is not None:
        attempts.append(cause.strerror or str(cause))
    return cause


def delays() -> Iterator[float]:
    """The pauses between attempts: FIRST_DELAY, doubling, at most MAX_DELAY; endless."""
    delay = FIRST_DELAY
    while True:
        yield delay
        delay = min(delay * 2, MAX_DELAY)
