"""Relay one connection: bytes and descriptors in order; half-close, close and reset passed on.

``relay(FROM, TO)`` accepts one peer on FROM, connects TO, and copies both
directions.  Each descriptor is forwarded with the bytes it arrived with,
so it reaches the far side at or before its byte.  When one side
half-closes, the other side's stream is half-closed; when both directions
have ended, both connections are closed — which is how a receiver's close
(QEMU's acknowledgement) travels back to the sender.  When one side resets
the connection (it closed, or died, with bytes unread), the other side's is
reset in turn, never closed: through the relay, as directly, a receiver
that dropped the state unread is not an acknowledgement.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import socket
import struct
import termios
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import anyio
import anyio.abc

from .address import Address
from .capabilities import Capability
from .channel import Channel
from .deadlines import seconds as as_seconds, timeout_text
from .errors import (
    CapabilityError,
    FdChannelError,
    HandoffTimeout,
    PeerCredentialsError,
    TransportError,
)
from .fds import SCM_MAX_FD, _take, close_all, control_buffer_size, recvmsg_fds
from .transports import Stream, Target, listen, resolve_target
from .transports._socket import SocketStream, UnixSocketStream
from .transports.retrying import accept_admitted, connect_retrying

__all__ = ["Direction", "RelayStats", "relay"]

_READ = 1 << 20
log = logging.getLogger("fdchannel")
_Messages = list[tuple[bytes, list[int]]]


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
    #: "sender" or "receiver": who reset the connection (closed or died with bytes
    #: unread, or went away while bytes were still coming); the relay reset the
    #: other side's connection in turn.
    reset_by: str | None = None


class _Side:
    """One of the relay's two connections: what it receives, and the two ways to close it."""

    def __init__(self, stream: Stream, name: str) -> None:
        self.stream = stream
        self.name = name

    async def receive(self) -> _Messages:
        """The next bytes and descriptors, as messages to forward; [] at EOF.

        A reset (or any broken stream) raises anyio.BrokenResourceError.
        """
        try:
            if Capability.FD_PASSING in self.stream.capabilities:
                return [await self.stream.receive_fds(_READ, SCM_MAX_FD)]
            return [(await self.stream.receive(_READ), [])]
        except anyio.EndOfStream:
            return []

    def settle(self) -> None:
        """Make the close that follows a clean one (see _UnixSide)."""

    async def close(self, *, reset: bool) -> None:
        """Close; with ``reset``, abortively, so that the peer reads a reset, not an EOF."""
        with anyio.CancelScope(shield=True):
            if not reset:
                self.settle()
                await self.stream.aclose()
                return
            if isinstance(self.stream, SocketStream) and self.stream.socket.family in (
                socket.AF_INET,
                socket.AF_INET6,
            ):
                # TCP: with SO_LINGER {on, 0 s} close() sends an RST instead of a FIN,
                # and the peer's next read or write fails with ECONNRESET.
                with contextlib.suppress(OSError):
                    self.stream.socket.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
            # Anything else has no reset to give (a pipe's reader sees EOF; an AF_VSOCK
            # peer reads even an RST as EOF): close at once (an exec: command is killed).
            await self.stream.abort()


class _UnixSide(_Side):
    """An AF_UNIX connection, read so that a reset from the far side can be passed on.

    AF_UNIX has no abortive close of its own: the kernel resets the peer (its
    next read fails with ECONNRESET, its writes with EPIPE) only when a socket
    is closed with bytes still in its receive queue (unix_release_sock), and
    closing with the queue empty is an EOF.  So the last byte that arrived is
    forwarded at once (MSG_PEEK) but left in the queue ("held"), and taken
    only with the bytes that follow it or just before a clean close: closing
    the socket is then a reset whenever the peer sent anything.
    """

    def __init__(self, stream: UnixSocketStream, name: str) -> None:
        super().__init__(stream, name)
        self.sock = stream.socket
        #: One byte at the head of the queue was forwarded already (with copies
        #: of its descriptors, if it carries any).
        self.held = False
        self._poll = select.poll()
        self._poll.register(self.sock, select.POLLIN | select.POLLRDHUP)
        # Made when a byte is first held: the socket stays readable while it is
        # queued, so new bytes and the peer's shutdown are waited for as edges.
        self._edges: select.epoll | None = None

    async def receive(self) -> _Messages:
        while True:
            if self._edges is not None:
                self._edges.poll(0)  # forget the edges so far: the checks below see their cause
            try:
                queued = _queued(self.sock)
                if queued > self.held:
                    return self._take(queued)
                # Only what was forwarded is queued: an error or the peer's shutdown.
                events = self._poll.poll(0)
                if events and events[0][1] & select.POLLERR:
                    error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if error:
                        raise OSError(error, os.strerror(error))
                if events and events[0][1] & (select.POLLRDHUP | select.POLLHUP):
                    return []
            except OSError as exc:
                raise anyio.BrokenResourceError(
                    f"{self.stream._describe()}: {exc.strerror or exc}"
                ) from exc
            await self._wait()

    async def _wait(self) -> None:
        if not self.held:
            await anyio.wait_readable(self.sock)
        elif self._edges is None:
            # Registering reports what is there already: the next pass re-checks.
            self._edges = select.epoll()
            self._edges.register(self.sock, select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET)
        else:
            await anyio.wait_readable(self._edges.fileno())

    def _take(self, queued: int) -> _Messages:
        """All but the last of the ``queued`` bytes, and that last one peeked (now held)."""
        messages: _Messages = []
        try:
            if self.held:
                # Its descriptors were forwarded as copies when it was peeked: these
                # are the same ones again.
                close_all(recvmsg_fds(self.sock, 1, SCM_MAX_FD)[1])
                self.held, queued = False, queued - 1
            size = 0
            while queued > 1 and size < _READ:
                message = recvmsg_fds(self.sock, min(queued - 1, _READ - size), SCM_MAX_FD)
                messages.append(message)
                queued, size = queued - len(message[0]), size + len(message[0])
            if queued == 1:
                messages.append(_peek_one(self.sock))
                self.held = True
        except BaseException:
            for _, fds in messages:
                close_all(fds)
            raise
        return messages

    def settle(self) -> None:
        # Both sides ended cleanly: take the held byte, so that closing is an EOF.
        if self.held:
            self.held = False
            with contextlib.suppress(OSError, FdChannelError):
                close_all(recvmsg_fds(self.sock, 1, SCM_MAX_FD)[1])

    async def close(self, *, reset: bool) -> None:
        try:
            await super().close(reset=reset)
        finally:
            if self._edges is not None:
                anyio.notify_closing(self._edges.fileno())
                self._edges.close()


def _side(stream: Stream, name: str) -> _Side:
    return _UnixSide(stream, name) if isinstance(stream, UnixSocketStream) else _Side(stream, name)


def _queued(sock: socket.socket) -> int:
    """Bytes in the socket's receive queue (FIONREAD, i.e. SIOCINQ)."""
    answer = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4)
    return int(struct.unpack("i", answer)[0])


def _peek_one(sock: socket.socket) -> tuple[bytes, list[int]]:
    """The byte at the head of the queue, left there; its descriptors arrive as copies
    (the kernel installs them on a peek too, and again when the byte is taken)."""
    fds: list[int] = []
    data, ancillary, flags, _ = sock.recvmsg(
        1, control_buffer_size(SCM_MAX_FD), socket.MSG_PEEK | socket.MSG_CMSG_CLOEXEC
    )
    _take(ancillary, flags, fds, SCM_MAX_FD)
    return data, fds


async def _forward(dst: Stream, messages: _Messages) -> None:
    if any(fds for _, fds in messages) and Capability.FD_PASSING not in dst.capabilities:
        count = sum(len(fds) for _, fds in messages)
        raise CapabilityError(f"{count} descriptor(s) arrived but the far side cannot take them")
    await dst.send_fds_many(messages)


async def _pump(
    src: _Side,
    dst: _Side,
    counts: Direction,
    other: Direction,
    stats: RelayStats,
    stop: anyio.CancelScope,
    on_progress: Callable[[RelayStats], None] | None,
) -> None:
    """Copy ``src`` to ``dst`` until ``src`` ends (passed on as a half-close) or
    either side breaks (passed on as a reset: ``stop`` ends both directions)."""

    def broken(name: str) -> None:
        stats.reset_by = stats.reset_by or name
        if on_progress is not None:
            on_progress(stats)

    while True:
        try:
            messages = await src.receive()
        except anyio.BrokenResourceError:
            broken(src.name)
            stop.cancel()
            return
        if not messages:
            break
        try:
            await _forward(dst.stream, messages)
        except anyio.BrokenResourceError:
            # The far side is gone.  What it sent before is still to be forwarded
            # the other way; that direction then ends, on its reset or its EOF.
            broken(dst.name)
            if other.ended:
                stop.cancel()
            return
        finally:
            for _, fds in messages:
                close_all(fds)  # the far side has its own copies now
        counts.bytes += sum(len(data) for data, _ in messages)
        counts.fds += sum(len(fds) for _, fds in messages)
        if on_progress is not None:
            on_progress(stats)
    if stats.reset_by is not None:
        stop.cancel()  # an EOF after the far side broke: the reset is what goes on
        return
    counts.ended = True
    stats.first_to_close = stats.first_to_close or src.name
    if on_progress is not None:
        on_progress(stats)
    if other.ended:
        dst.settle()  # both ended: what dst reads next must be an EOF, never a reset
    # If the far side is gone already, its own pump ends the other way.
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
        await dst.stream.send_eof()


@contextlib.contextmanager
def _deadline(seconds: float | None, what: str) -> Iterator[None]:
    """A deadline whose expiry is a HandoffTimeout (also a TimeoutError)."""
    try:
        with anyio.fail_after(as_seconds(seconds)):
            yield
    except TimeoutError as exc:
        raise HandoffTimeout(f"relay: {what} within {timeout_text(seconds)}") from exc


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
    both sides end, under the caller's own cancel scope.  A side that resets
    the connection ends it too: the other side's is reset, and the stats
    name who did it (``reset_by``).  Failing or cancelled, the relay resets
    both sides.

    With ``task_group.start(relay, ...)`` the start returns once the relay
    listens, with the address it listens on.
    """
    stats = RelayStats()
    async with await listen(source, **listen_options) as listener:
        task_status.started(listener.address)
        with _deadline(accept_timeout, f"nobody connected to {listener.address}"):
            # A peer the credential policy refuses was closed unread: wait for the next.
            sender = _side(await accept_admitted(listener, _log_refused), "sender")
    # Closed cleanly only once both sides ended cleanly: a relay that fails, is
    # cancelled or dies resets both, so that its close is never taken for an ack.
    clean = False
    try:
        address, kind = resolve_target(dest)
        with _deadline(connect_timeout, f"could not connect to {address}"):
            # The receiver may still be starting: retry until the deadline.
            receiver = _side(await connect_retrying(Channel(kind, address)), "receiver")
        try:
            async with anyio.create_task_group() as tg:
                forward, backward = stats.forward, stats.backward
                stop = tg.cancel_scope
                tg.start_soon(_pump, sender, receiver, forward, backward, stats, stop, on_progress)
                tg.start_soon(_pump, receiver, sender, backward, forward, stats, stop, on_progress)
            clean = stats.reset_by is None and forward.ended and backward.ended
        except BaseExceptionGroup as group:
            raise _one_error(group) from group
        finally:
            await receiver.close(reset=not clean)
    finally:
        await sender.close(reset=not clean)
    return stats
