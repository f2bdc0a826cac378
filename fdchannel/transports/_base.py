"""The small interface every transport implements: a byte stream and a listener.

Streams sit on one non-blocking descriptor and wait for readiness through
anyio (``wait_readable``/``wait_writable``), so the same code runs on asyncio,
uvloop and trio, and every system call is ours to check: short writes,
descriptors in control messages, EOF versus hang-up.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import functools
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel

from ..capabilities import Capability
from ..credentials import CredentialPolicy, Credentials, same_user_or_root
from ..detached import Detached
from ..errors import CapabilityError, PeerCredentialsError, TransportError
from ..read_buffer import ReadBuffer, check_exact_size, check_line_arguments
from ..sockets import BROKEN_ERRNOS, DEFAULT_RECEIVE, Blocked, attempt

if TYPE_CHECKING:
    from ..address import Address

__all__ = [
    "DescriptorStream",
    "FdAttribute",
    "FdOpener",
    "Listener",
    "Stream",
    "register_fd_opener",
]

log = logging.getLogger("fdchannel")


T = TypeVar("T")


class FdOpener(Protocol):
    """What takes over a descriptor of any kind: the stream or listener its kind calls for."""

    def __call__(
        self,
        fd: int,
        *,
        incoming: bool,
        policy: CredentialPolicy | None = ...,
        buffered: bytes = ...,
    ) -> Stream | Listener: ...


#: What ``Stream.from_fd`` and ``Listener.from_fd`` call: the fd transport's
#: ``wrap``, which knows every kind of stream.  Those kinds all build on this
#: module, so it cannot import them; the fd transport registers itself here
#: when it is loaded, and the package loads it with this module.
_opener: FdOpener | None = None


def register_fd_opener(opener: FdOpener) -> None:
    """Make ``opener`` what ``Stream.from_fd`` and ``Listener.from_fd`` call."""
    global _opener
    _opener = opener


def _fd_opener() -> FdOpener:
    assert _opener is not None, "fdchannel.transports loads the fd transport with its base"
    return _opener


class FdAttribute(anyio.TypedAttributeSet):
    """fdchannel's typed attributes: ``stream.extra(FdAttribute.fileno)``.

    Streams and listeners also give anyio's ``SocketAttribute`` where a
    socket is under them (``raw_socket``, ``family``, addresses, ports).
    """

    #: The descriptor under the stream or listener (to inspect, not to read).
    fileno: int = anyio.typed_attribute()
    #: The address opened (a listener: the one actually listened on).
    address: Address = anyio.typed_attribute()
    #: What the stream can do; a listener: what it can do (MULTI_ACCEPT).
    capabilities: Capability = anyio.typed_attribute()
    #: A unix peer's (pid, uid, gid) as the kernel recorded them at connect.
    peer_credentials: Credentials = anyio.typed_attribute()


class Stream(anyio.abc.ByteStream):
    """A bidirectional byte stream opened by a transport."""

    #: What this stream can do beyond bytes; see Capability.
    capabilities: Capability = Capability.NONE

    def __init__(self, address: Address | None) -> None:
        self.address = address

    @classmethod
    def from_fd(cls, fd: int, *, buffered: bytes = b"") -> Stream:
        """A stream that takes over ``fd`` (closing the stream closes it).

        For a descriptor received from a peer: what the stream can do follows
        its kind, as for ``fd:`` (a connected unix socket passes descriptors,
        a pipe end reads or writes, a file reads or writes at its offset).
        A listening socket is refused: see ``Listener.from_fd``.

        ``buffered``: bytes a previous owner read from ``fd`` and did not
        consume (a ``Detached``'s), returned by receives before anything read
        from ``fd``; a file cannot take them (CapabilityError).  On failure
        ``fd`` stays the caller's.
        """
        opened = _fd_opener()(fd, incoming=False, buffered=buffered)
        assert isinstance(opened, Stream)
        return opened

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        attributes: dict[Any, Callable[[], Any]] = {
            FdAttribute.capabilities: lambda: self.capabilities
        }
        if self.address is not None:
            attributes[FdAttribute.address] = lambda: self.address
        return attributes

    async def send_fds(self, data: bytes, fds: list[int]) -> None:
        """Send ``data`` with descriptors attached (FD_PASSING streams only)."""
        raise CapabilityError(f"{self._describe()} cannot pass file descriptors")

    async def send_fds_many(self, messages: Iterable[tuple[bytes, Sequence[int]]]) -> None:
        """Send each (bytes, descriptors) message in turn; descriptors need FD_PASSING."""
        for data, fds in messages:
            if fds:
                await self.send_fds(data, list(fds))
            else:
                await self.send(data)

    async def receive_fds(self, max_bytes: int, maxfds: int) -> tuple[bytes, list[int]]:
        """Receive bytes and the descriptors attached to them (FD_PASSING streams only)."""
        raise CapabilityError(f"{self._describe()} cannot pass file descriptors")

    async def receive_until(self, delimiter: bytes, max_bytes: int) -> bytes:
        """The bytes up to ``delimiter``, which is consumed and left out.

        As anyio's ``BufferedByteReceiveStream.receive_until``, but the bytes
        read past the delimiter stay in the stream (``buffered``, ``detach``).
        A line longer than ``max_bytes`` is DelimiterNotFound, however its
        bytes arrived; the end of the stream first is IncompleteRead.  Either
        way the bytes read stay buffered.  A stream that keeps no read buffer
        (a file's) raises CapabilityError.
        """
        raise CapabilityError(f"{self._describe()} keeps no read buffer")

    async def receive_exactly(self, nbytes: int) -> bytes:
        """Exactly ``nbytes`` bytes; IncompleteRead if the stream ends first (what was
        read stays buffered).  The bytes read past them stay in the stream.  A
        stream that keeps no read buffer (a file's) raises CapabilityError."""
        raise CapabilityError(f"{self._describe()} keeps no read buffer")

    @property
    def buffered(self) -> bytes:
        """What was read from the descriptor and not returned yet."""
        return b""

    def detach(self) -> Detached:
        """Let go of the descriptor without closing it, with the bytes read from it and
        not returned (see DescriptorStream.detach); CapabilityError for a stream
        that keeps no read buffer (a file's)."""
        raise CapabilityError(f"{self._describe()} cannot detach its descriptor")

    async def abort(self) -> None:
        """Close at once, giving up on whatever is in flight (an exec: command is killed)."""
        await self.aclose()

    @abc.abstractmethod
    async def wait_peer_closed(self) -> None:
        """Return once the peer has closed its sending side (EOF or hang-up).

        Bytes that arrive first are kept and returned by later receive calls.
        """

    @property
    def at_eof(self) -> bool:
        """True once the peer's EOF was read and nothing is left: the next receive
        raises EndOfStream without waiting."""
        return False

    def fileno(self) -> int:
        """The descriptor under the stream, for inspection (do not read from it)."""
        raise CapabilityError(f"{self._describe()} has no single descriptor")

    def _describe(self) -> str:
        kind = type(self).__name__
        return f"{kind} to {self.address}" if self.address is not None else kind


class DescriptorStream(ReadBuffer, Stream):
    """A stream over one descriptor, with readiness from the event loop.

    What it read and did not return yet is in its ReadBuffer: ``buffered``,
    served first by every receive, and handed over by ``detach``.
    """

    def __init__(self, fd: int, address: Address | None) -> None:
        super().__init__(address)
        os.set_blocking(fd, False)
        self._fd = fd
        self._closed = False
        #: Tasks waiting for the descriptor's readiness (detach refuses then).
        self._waiting = 0
        self._start_reading()

    def fileno(self) -> int:
        self._check_open()
        return self._fd

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {**super().extra_attributes, FdAttribute.fileno: self.fileno}

    def _check_open(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError

    # Subclasses implement one non-blocking attempt each.
    @abc.abstractmethod
    def _read_once(self, max_bytes: int) -> bytes:
        """One non-blocking read; raises BlockingIOError when nothing is there."""

    @abc.abstractmethod
    def _write_once(self, data: memoryview) -> int:
        """One non-blocking write; raises BlockingIOError when the buffer is full."""

    def _close_fd(self) -> None:
        os.close(self._fd)

    async def _retry(self, op: Callable[[], T], readable: bool) -> T:
        """``op`` once it does not block, waiting on the event loop for readiness."""
        while True:
            result = attempt(self, op)
            if not isinstance(result, Blocked):
                return result
            # Counted only here, where the task gives way: detach() can run
            # only while every task on the stream waits at an await.
            self._waiting += 1
            try:
                if readable:
                    await anyio.wait_readable(self._fd)
                else:
                    await anyio.wait_writable(self._fd)
            except anyio.ClosedResourceError:
                raise anyio.ClosedResourceError from None
            finally:
                self._waiting -= 1

    def _translate(self, exc: OSError) -> Exception:
        if exc.errno in BROKEN_ERRNOS:
            return anyio.BrokenResourceError(f"{self._describe()}: {exc.strerror}")
        if exc.errno == errno.EBADF and self._closed:
            return anyio.ClosedResourceError()
        return TransportError(f"{self._describe()}: {exc.strerror}", self.address)

    async def receive(self, max_bytes: int = DEFAULT_RECEIVE) -> bytes:
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        data, _ = await self._receive_with(max_bytes, lambda: (self._read_once(max_bytes), []))
        return data

    async def _receive_with(
        self, max_bytes: int, op: Callable[[], tuple[bytes, list[int]]]
    ) -> tuple[bytes, list[int]]:
        """One receive: bytes kept by wait_peer_closed first, then ``op``; EOF once."""
        await anyio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        if self._pending:
            data = self._take(max_bytes)
            await anyio.lowlevel.cancel_shielded_checkpoint()
            return data, []
        if self._eof_seen:
            raise anyio.EndOfStream
        data, fds = await self._retry(op, readable=True)
        if not data and not fds:
            self._eof_seen = True
            raise anyio.EndOfStream
        return data, fds

    async def receive_until(self, delimiter: bytes, max_bytes: int) -> bytes:
        check_line_arguments(delimiter, max_bytes)
        await anyio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        found = self._line(delimiter, max_bytes, 0)
        if isinstance(found, bytes):
            await anyio.lowlevel.cancel_shielded_checkpoint()
            return found
        while isinstance(found, int):
            await self._read_more(DEFAULT_RECEIVE)
            found = self._line(delimiter, max_bytes, found)
        return found

    async def receive_exactly(self, nbytes: int) -> bytes:
        check_exact_size(nbytes)
        await anyio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        data = self._exactly(nbytes)
        if data is not None:
            await anyio.lowlevel.cancel_shielded_checkpoint()
            return data
        while data is None:
            await self._read_more(self._read_size(nbytes))
            data = self._exactly(nbytes)
        return data

    async def _read_more(self, size: int) -> None:
        """One read into the buffer (waiting for it if need be); EOF is noted there."""
        self._keep(await self._retry(lambda: self._read_once(size), readable=True))

    def _no_delimiter(self, max_bytes: int) -> Exception:
        return anyio.DelimiterNotFound(max_bytes)

    def _cut_short(self) -> Exception:
        return anyio.IncompleteRead()

    def detach(self) -> Detached:
        """Let go of the descriptor without closing it: it and every byte read from
        it and not returned yet (``buffered``), for ``Stream.from_fd(fd,
        buffered=...)`` here or in another process (``pack_connections``).

        The stream is closed afterwards (closing it again does nothing); the
        descriptor is the caller's.  A task waiting on the stream (a receive,
        or a send with the socket buffer full) makes it BusyResourceError:
        detach at a message boundary, between calls.  A task waiting on the
        descriptor itself (``wait_readable(stream.fileno())``) is neither seen
        nor woken: the descriptor lives on, and while that task waits anyio
        refuses the next owner's wait on it in this process (BusyResourceError).
        """
        fd = self.fileno()  # ClosedResourceError once closed or detached
        if self._waiting:
            raise anyio.BusyResourceError("waiting on")
        # Not anyio.notify_closing: nobody waits (checked above) and the
        # descriptor lives on, to be waited on by its next owner.
        self._closed = True
        self._let_go()
        return Detached(fd, self._release_buffer())

    def _let_go(self) -> None:
        """Forget the descriptor without closing it."""
        # A socket object closes its descriptor when collected: make it forget.
        sock = getattr(self, "_sock", None)
        if isinstance(sock, socket.socket):
            sock.detach()

    async def send(self, item: bytes) -> None:
        await anyio.lowlevel.checkpoint_if_cancelled()
        view = memoryview(item).cast("B")
        sent_any = False
        while view:
            n = await self._retry(functools.partial(self._write_once, view), readable=False)
            view = view[n:]
            sent_any = True
        if not sent_any:
            await anyio.lowlevel.cancel_shielded_checkpoint()

    async def wait_peer_closed(self) -> None:
        while not self._eof_seen:
            data = await self._retry(lambda: self._read_once(DEFAULT_RECEIVE), readable=True)
            self._keep_until_closed(data, self._describe(), self.address)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            # Wake any task still waiting on the descriptor before it is reused.
            anyio.notify_closing(self._fd)
            self._close_fd()
        await anyio.lowlevel.checkpoint()


class Listener(anyio.abc.Listener[Stream]):
    """The incoming side of a transport: ``async with`` it and ``await accept()``,
    or ``serve(handler)``."""

    capabilities: Capability = Capability.NONE
    #: What the streams ``accept`` returns can do.
    stream_capabilities: Capability = Capability.NONE

    def __init__(self, address: Address) -> None:
        #: The address actually listened on (e.g. the port the kernel chose).
        self.address = address

    @classmethod
    def from_fd(cls, fd: int, *, policy: CredentialPolicy | None = same_user_or_root) -> Listener:
        """A listener that takes over ``fd`` (closing the listener closes it).

        A listening socket accepts many peers (an AF_UNIX one under the
        credential ``policy``, as for ``fd:``); any other descriptor is
        yielded once, as a stream.  On failure ``fd`` stays the caller's.
        """
        opened = _fd_opener()(fd, incoming=True, policy=policy)
        assert isinstance(opened, Listener)
        return opened

    @abc.abstractmethod
    async def accept(self) -> Stream:
        """Wait for the next peer and return its stream."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop listening; idempotent."""

    async def serve(
        self,
        handler: Callable[[Stream], Awaitable[Any]],
        task_group: anyio.abc.TaskGroup | None = None,
    ) -> None:
        """Accept peers and run ``handler(stream)`` for each in ``task_group``.

        Without a task group one is made, and serve returns once every handler
        has. Each stream is closed when its handler returns. A peer the
        credential policy refuses is logged and skipped. A listener without
        MULTI_ACCEPT serves its one stream and returns; any other serves until
        cancelled or closed.
        """
        async with contextlib.AsyncExitStack() as stack:
            if task_group is None:
                task_group = await stack.enter_async_context(anyio.create_task_group())
            while True:
                try:
                    stream = await self.accept()
                except PeerCredentialsError as exc:
                    log.warning("%s", exc)
                    continue
                except anyio.ClosedResourceError:
                    return
                task_group.start_soon(_handle, handler, stream)
                if Capability.MULTI_ACCEPT not in self.capabilities:
                    return

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {
            FdAttribute.address: lambda: self.address,
            FdAttribute.capabilities: lambda: self.capabilities,
        }


async def _handle(handler: Callable[[Stream], Awaitable[Any]], stream: Stream) -> None:
    async with stream:
        await handler(stream)
