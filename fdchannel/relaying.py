"""Relay one connection: bytes and descriptors in order, half-close and close passed on.

``relay(FROM, TO)`` accepts one peer on FROM, connects TO, and copies both
directions.  Each descriptor is forwarded with the bytes it arrived with,
so it reaches the far side at or before its byte.  When one side
half-closes, the other side's stream is half-closed; when both directions
have ended, both connections are closed — which is how a receiver's close
(QEMU's acknowledgement) travels back to the sender.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import anyio
import anyio.abc

from .address import Address
from .capabilities import Capability
from .channel import Channel
from .errors import (
    CapabilityError,
    FdChannelError,
    HandoffTimeout,
    PeerCredentialsError,
    TransportError,
)
from .fds import SCM_MAX_FD, close_all
from .handoff.common import accept_admitted, connect_retrying
from .transports import Stream, Target, listen, resolve_target

__all__ = ["Direction", "RelayStats", "relay"]

_READ = 1 << 20
log = logging.getLogger("fdchannel")


@dataclass
class Direction:
    """What crossed one way."""

    bytes: int = 0
    fds: int = 0
    #: True once this direction's sender half-closed (or closed).
    ended: bool = False


@dataclass
class RelayStats:
    """What the relay forwarded, and who ended it."""

    forward: Direction = field(default_factory=Direction)  # FROM's peer -> TO
    backward: Direction = field(default_factory=Direction)  # TO -> FROM's peer
    #: "sender" or "receiver": whose end-of-stream came first.
    first_to_close: str | None = None


async def _pump(
    src: Stream,
    dst: Stream,
    counts: Direction,
    stats: RelayStats,
    who: str,
    on_progress: Callable[[RelayStats], None] | None,
) -> None:
    fd_passing = Capability.FD_PASSING in src.capabilities
    while True:
        try:
            if fd_passing:
                data, fds = await src.receive_fds(_READ, SCM_MAX_FD)
            else:
                data, fds = await src.receive(_READ), []
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            break
        try:
            if fds:
                if Capability.FD_PASSING not in dst.capabilities:
                    raise CapabilityError(
                        f"{len(fds)} descriptor(s) arrived but the far side cannot take them"
                    )
                await dst.send_fds(data, fds)
            else:
                await dst.send(data)
        except anyio.BrokenResourceError:
            return  # the far side is gone: its own pump sees that and ends the other way
        finally:
            close_all(fds)  # the far side has its own copies now
        counts.bytes += len(data)
        counts.fds += len(fds)
        if on_progress is not None:
            on_progress(stats)
    counts.ended = True
    stats.first_to_close = stats.first_to_close or who
    if on_progress is not None:
        on_progress(stats)
    # If the far side is gone already, its own pump ends the other way.
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
        await dst.send_eof()


@contextlib.contextmanager
def _deadline(seconds: float | None, what: str) -> Iterator[None]:
    """A deadline whose expiry is a HandoffTimeout (also a TimeoutError)."""
    try:
        with anyio.fail_after(seconds if seconds is not None else math.inf):
            yield
    except TimeoutError as exc:
        raise HandoffTimeout(f"relay: {what} within {seconds} s") from exc


def _log_refused(exc: PeerCredentialsError) -> None:
    log.warning("relay: %s", exc)


def _one_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """What the copying tasks raised, as one error of ours: the first that is not
    a cancellation (a group of cancellations only is itself the cancellation)."""
    _, rest = group.split(anyio.get_cancelled_exc_class())
    if rest is None:
        return group
    leaf: BaseException = rest
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    if isinstance(leaf, FdChannelError) or not isinstance(
        leaf, OSError | anyio.BrokenResourceError | anyio.EndOfStream
    ):
        return leaf
    return TransportError(f"relay: the connection broke: {leaf or type(leaf).__name__}")


async def relay(
    source: Target | Channel,
    dest: Target | Channel,
    *,
    accept_timeout: float | None = None,
    connect_timeout: float | None = 10,
    on_progress: Callable[[RelayStats], None] | None = None,
    task_status: anyio.abc.TaskStatus[Address] = anyio.TASK_STATUS_IGNORED,
    **listen_options: object,
) -> RelayStats:
    """Accept one peer on ``source``, connect ``dest``, and copy until both sides ended.

    ``accept_timeout`` bounds the wait for the peer, ``connect_timeout`` the
    attempts to reach ``dest`` (HandoffTimeout, also a TimeoutError); the copying itself runs until
    both sides end, under the caller's own cancel scope.

    With ``task_group.start(relay, ...)`` the start returns once the relay
    listens, with the address it listens on.
    """
    stats = RelayStats()
    async with await listen(source, **listen_options) as listener:
        task_status.started(listener.address)
        with _deadline(accept_timeout, f"nobody connected to {listener.address}"):
            # A peer the credential policy refuses was closed unread: wait for the next.
            incoming = await accept_admitted(listener, _log_refused)
    try:
        address, kind = resolve_target(dest)
        with _deadline(connect_timeout, f"could not connect to {address}"):
            # The receiver may still be starting: retry until the deadline.
            outgoing = await connect_retrying(Channel(kind, address))
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    _pump, incoming, outgoing, stats.forward, stats, "sender", on_progress
                )
                tg.start_soon(
                    _pump, outgoing, incoming, stats.backward, stats, "receiver", on_progress
                )
        except BaseExceptionGroup as group:
            raise _one_error(group) from group
        finally:
            with anyio.CancelScope(shield=True):
                await outgoing.aclose()
    finally:
        with anyio.CancelScope(shield=True):
            await incoming.aclose()
    return stats
