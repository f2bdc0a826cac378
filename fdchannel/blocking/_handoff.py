"""Pieces both blocking handoff sides share: steps under a deadline, connect retries, accepts.

The state machine (``fdchannel.handoff.machine``), the channel checks and
the retry policy (``fdchannel.retry``) are the async side's; what differs
is that a step carries a ``Deadline`` that every wait inside it draws from.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..channel import Channel
from ..errors import (
    ConnectError,
    PeerCredentialsError,
)
from ..handoff.machine import Machine
from ..handoff.sides import fail_step
from ..retry import delays, worth_retrying
from ._deadline import Deadline, TransportTimeout
from ._listener import Listener
from ._open import connect
from ._stream import Stream

__all__ = ["accept_admitted", "connect_retrying", "log_refused", "step"]

log = logging.getLogger("fdchannel")


@contextmanager
def step(machine: Machine, what: str, timeout: float | None) -> Iterator[Deadline]:
    """Run one handoff step under a deadline; failures become HandoffError.

    The machine moves to FAILED on any error, ABORTED on an interruption
    (KeyboardInterrupt, SystemExit): ``sides.fail_step``, the async rule too.
    """
    deadline = Deadline(timeout)
    try:
        yield deadline
    except BaseException as exc:
        late = isinstance(exc, TransportTimeout)  # the step's deadline passed
        fail_step(machine, exc, what, timeout, timed_out=late, lost=False)


def connect_retrying(
    channel: Channel, deadline: Deadline, attempts: list[str] | None = None
) -> Stream:
    """Connect, retrying while the peer's socket is missing or refuses, until the deadline.

    QEMU does not retry; a new process that is still starting is normal for
    us, so we back off briefly (as the async side does) until the deadline.
    Each failed attempt's reason is appended to ``attempts`` if given.
    """
    pauses = delays()
    while True:
        try:
            return connect(channel, timeout=deadline.left())
        except ConnectError as exc:
            cause = worth_retrying(exc, attempts)
            left = deadline.left()
            if left == 0:
                raise TransportTimeout(
                    f"{channel.addr} never accepted a connection (last: {cause.strerror})",
                    channel.addr,
                ) from exc
        delay = next(pauses)
        time.sleep(delay if left is None else min(delay, left))


def accept_admitted(
    listener: Listener,
    deadline: Deadline,
    on_refused: Callable[[PeerCredentialsError], None],
) -> Stream:
    """The next peer the listener's credential policy admits, before the deadline.

    A refused peer was closed unread by the listener; ``on_refused`` hears
    of it, and we wait for the next one.
    """
    while True:
        try:
            return listener.accept(deadline.left())
        except PeerCredentialsError as exc:
            on_refused(exc)


def log_refused(exc: Exception) -> None:
    log.warning("%s", exc)
