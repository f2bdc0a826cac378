"""Pieces both handoff sides share: deadlines, connect retries, error wrapping."""

from __future__ import annotations

import errno
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager

import anyio

from ..channel import Channel, parse_channel, validate_channels
from ..errors import (
    ConnectError,
    FdChannelError,
    HandoffError,
    HandoffTimeout,
    PeerCredentialsError,
)
from ..registry import transport_for
from ..transports import Listener, Stream, connect
from .machine import Event, Machine

__all__ = [
    "accept_admitted",
    "connect_retrying",
    "discard",
    "load_transports",
    "parse_channels",
    "seconds",
    "step",
    "timeout_text",
]

log = logging.getLogger("fdchannel")

#: errno values that mean "the peer is not listening yet": worth retrying.
NOT_YET = frozenset({errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN})
FIRST_DELAY = 0.001
MAX_DELAY = 0.05


def parse_channels(channels: Iterable[Channel | str]) -> tuple[Channel, Channel]:
    """Parse and validate a main and a cpr channel for cpr-transfer."""
    main, cpr = validate_channels([parse_channel(c) for c in channels], mode="cpr-transfer")
    assert cpr is not None  # cpr-transfer mode guarantees it
    return main, cpr


def load_transports(*channels: Channel) -> None:
    """Import each channel's transport module now, not at its first connect or
    listen: that one happens inside the handoff, while the service is paused.

    A transport fdchannel does not support is left for that connect or
    listen to report, as before.
    """
    for channel in channels:
        transport = transport_for(channel.addr)
        if transport.module is not None:
            transport.load(channel.addr)


@asynccontextmanager
async def step(machine: Machine, what: str, timeout: float | None) -> AsyncIterator[None]:
    """Run one handoff step under a deadline; failures become HandoffError.

    The machine moves to FAILED on any error, ABORTED on cancellation.
    """
    try:
        with anyio.fail_after(seconds(timeout)):
            yield
    except TimeoutError as exc:
        machine.fire(Event.FAIL)
        raise HandoffTimeout(
            f"{machine.side} handoff: {what} did not finish within {timeout_text(timeout)}"
        ) from exc
    except HandoffError:
        machine.fire(Event.FAIL)
        raise
    except (FdChannelError, OSError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
        machine.fire(Event.FAIL)
        detail = str(exc) or type(exc).__name__
        raise HandoffError(f"{machine.side} handoff: {what} failed: {detail}") from exc
    except anyio.get_cancelled_exc_class():
        machine.fire(Event.ABORT)
        raise


async def connect_retrying(channel: Channel, attempts: list[str] | None = None) -> Stream:
    """Connect, retrying while the peer's socket is missing or refuses.

    QEMU does not retry; a new process that is still starting is normal
    for us, so we back off briefly until the caller's deadline cancels us.
    Each failed attempt's reason is appended to ``attempts`` if given.
    """
    delay = FIRST_DELAY
    while True:
        try:
            return await connect(channel)
        except ConnectError as exc:
            cause = exc.__cause__
            if not (isinstance(cause, OSError) and cause.errno in NOT_YET):
                raise
            if attempts is not None:
                attempts.append(cause.strerror or str(cause))
        await anyio.sleep(delay)
        delay = min(delay * 2, MAX_DELAY)


async def discard(stream: Stream) -> None:
    """Close a stream a failed or abandoned handoff leaves behind: at once, quietly.

    An exec: command is killed instead of being given its grace period to
    finish (it may never read again), and whatever closing reports (a
    command's exit status, a file's delayed write error) is logged, not
    raised over the error that brought us here.
    """
    with anyio.CancelScope(shield=True):
        try:
            await stream.abort()
        except (FdChannelError, OSError, anyio.BrokenResourceError) as exc:
            log.debug("closing the stream to %s after the handoff stopped: %s", stream.address, exc)


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


async def accept_admitted(
    listener: Listener, on_refused: Callable[[PeerCredentialsError], None]
) -> Stream:
    """The next peer the listener's credential policy admits.

    A refused peer was closed unread by the listener; ``on_refused`` hears
    of it, and we wait for the next one.
    """
    while True:
        try:
            return await listener.accept()
        except PeerCredentialsError as exc:
            on_refused(exc)
