"""Regular files, pipes and FIFOs: ``file:PATH[,offset=N]``.

The outgoing side writes the file, the incoming side reads it back; there is
no peer at the other end at the same time, so the incoming "listener" yields
exactly one stream: the file opened for reading at its offset.

Kernel facts that shape this module:

* Regular files are always "ready" to epoll (``epoll_ctl`` refuses them with
  EPERM) and O_NONBLOCK does not apply to them, yet a read or write can wait
  on the disk.  File I/O therefore runs in a worker thread, one hop per call.
* Pipes and FIFOs do support readiness, so their ends are ordinary
  non-blocking descriptor streams.  Opening a FIFO for reading blocks until
  a writer appears unless O_NONBLOCK is given, which is why every open here
  is non-blocking and the flag is cleared again for what is not a FIFO.
  A FIFO path thus gives a pipe stream (HALF_CLOSE, not SEEKABLE).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

from ..address import FileAddress
from ..capabilities import Capability
from ..errors import AddressError, CapabilityError, ConnectError, TransportError
from ..sockets import DEFAULT_RECEIVE
from ._base import DescriptorStream, FdAttribute, Listener, Stream

if TYPE_CHECKING:
    from ..address import Address

__all__ = ["FileStream", "OneStreamListener", "PipeStream", "connect", "listen", "open_error"]

T = TypeVar("T")

#: The mode QEMU gives a migration file it creates (migration/file.c).
FILE_MODE = 0o600


def open_error(
    exc: OSError, action: str, what: str, address: Address | None, *, outgoing: bool
) -> TransportError:
    """An OSError met while opening ``what``, as ConnectError (outgoing) or TransportError."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENXIO:
        reason = "it is a FIFO that nobody has open for reading"
    cls = ConnectError if outgoing else TransportError
    return cls(f"cannot {action} {what}: {reason}", address)


class FileStream(Stream):
    """A regular file (or other non-pollable descriptor) read or written in a worker thread.

    The stream owns its descriptor.  It either reads or writes, as the file
    was opened.  ``send_eof`` only marks the end of what this side writes: a
    file has no half-close, its reader meets EOF at the end of the file.
    """

    capabilities = Capability.SEEKABLE

    def __init__(
        self,
        fd: int,
        address: Address | None,
        *,
        name: str,
        readable: bool,
        writable: bool,
        seekable: bool = True,
    ) -> None:
        super().__init__(address)
        self._fd = fd
        self._name = name
        self._readable = readable
        self._writable = writable
        if not seekable:
            self.capabilities = Capability.NONE
        self._closed = False
        self._eof_sent = False
        # Thread calls in flight: the descriptor is closed only when none is,
        # so a number being reused cannot be read or written by mistake.
        self._busy = 0

    @property
    def name(self) -> str:
        """The path (or descriptor) this stream reads or writes, for messages."""
        return self._name

    def fileno(self) -> int:
        self._check_open()
        return self._fd

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {**super().extra_attributes, FdAttribute.fileno: self.fileno}

    def _describe(self) -> str:
        return self._name

    def _check_open(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError

    def _release(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    async def _in_thread(self, action: str, func: Callable[[], T]) -> T:
        self._check_open()
        self._busy += 1
        try:
            # Not abandoned on cancellation: the call finishes (a bounded disk
            # operation) and its result is delivered, so no byte is lost.
            return await anyio.to_thread.run_sync(func)
        except OSError as exc:
            raise TransportError(
                f"cannot {action} {self._name}: {exc.strerror or exc}", self.address
            ) from exc
        finally:
            self._busy -= 1
            if self._closed and not self._busy:
                # aclose already returned: nobody is left to tell of a close error.
                with contextlib.suppress(OSError):
                    self._release()

    async def receive(self, max_bytes: int = DEFAULT_RECEIVE) -> bytes:
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        self._check_open()
        if not self._readable:
            # A file being written has no peer that could send anything.
            await anyio.lowlevel.checkpoint()
            raise anyio.EndOfStream
        fd = self._fd
        data = await self._in_thread("read", lambda: os.read(fd, max_bytes))
        if not data:
            raise anyio.EndOfStream
        return data

    async def send(self, item: bytes) -> None:
        self._check_open()
        if not self._writable:
            raise CapabilityError(f"{self._name} was opened for reading; it cannot send")
        if self._eof_sent:
            raise anyio.ClosedResourceError("cannot send after send_eof")
        view = memoryview(item).cast("B")
        if not view:
            await anyio.lowlevel.checkpoint()
            return
        fd = self._fd
        await self._in_thread("write", lambda: _write_all(fd, view))

    async def send_eof(self) -> None:
        """Mark the end of what this side writes (later sends fail).

        A file cannot be half-closed; the reader's EOF is the end of the file,
        so this is a marker and not an error, which lets code written for
        streams end a file channel the same way.
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        self._eof_sent = True
        await anyio.lowlevel.cancel_shielded_checkpoint()

    async def wait_peer_closed(self) -> None:
        """Return at once: a file has no peer that could close."""
        await anyio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        await anyio.lowlevel.cancel_shielded_checkpoint()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            if not self._busy:
                try:
                    self._release()
                except OSError as exc:
                    # Delayed write errors (NFS, quota) surface at close.
                    raise TransportError(
                        f"closing {self._name} failed: {exc.strerror}", self.address
                    ) from exc
        await anyio.lowlevel.checkpoint()


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        written = os.write(fd, view)
        if written == 0:  # pragma: no cover - regular files write or raise
            raise OSError(errno.EIO, "the write made no progress")
        view = view[written:]


class PipeStream(DescriptorStream):
    """One end of a pipe or FIFO: a read end receives, a write end sends.

    ``send_eof`` on a write end closes it: that is the only way to give the
    reader EOF, and it arrives once every copy of the write end is closed.
    """

    capabilities = Capability.HALF_CLOSE

    def __init__(self, fd: int, address: Address | None, *, name: str | None = None) -> None:
        mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
        super().__init__(fd, address)
        self._name = name
        self._can_read = mode in (os.O_RDONLY, os.O_RDWR)
        self._can_write = mode in (os.O_WRONLY, os.O_RDWR)
        self._write_shut = False
        if self._can_read and self._can_write:
            # A FIFO open for both: closing it would stop reading too.
            self.capabilities = Capability.NONE

    def _describe(self) -> str:
        return self._name if self._name is not None else super()._describe()

    def _read_once(self, max_bytes: int) -> bytes:
        return os.read(self._fd, max_bytes)

    def _write_once(self, data: memoryview) -> int:
        return os.write(self._fd, data)

    def _translate(self, exc: OSError) -> Exception:
        if exc.errno == errno.EPIPE:
            # Every read end is closed: nothing written here will be read.
            return anyio.BrokenResourceError(
                f"{self._describe()}: no reader is left ({exc.strerror})"
            )
        return super()._translate(exc)

    def fileno(self) -> int:
        if self._write_shut:
            raise anyio.ClosedResourceError
        return super().fileno()

    async def receive(self, max_bytes: int = DEFAULT_RECEIVE) -> bytes:
        if not self._can_read:
            # Nothing ever comes back through a write end: EOF once the reader is gone.
            await self.wait_peer_closed()
            raise anyio.EndOfStream
        return await super().receive(max_bytes)

    async def send(self, item: bytes) -> None:
        self._check_open()
        if not self._can_write:
            raise CapabilityError(f"{self._describe()} is the read end of a pipe; it cannot send")
        if self._write_shut:
            raise anyio.ClosedResourceError("cannot send after send_eof")
        await super().send(item)

    async def send_eof(self) -> None:
        await anyio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        if self._can_write and self._can_read:
            raise CapabilityError(
                f"{self._describe()} is a FIFO open for reading and writing; "
                "it cannot close one direction"
            )
        if self._can_write and not self._write_shut:
            self._shut_write()
        await anyio.lowlevel.cancel_shielded_checkpoint()

    def _shut_write(self) -> None:
        self._write_shut = True
        anyio.notify_closing(self._fd)
        os.close(self._fd)

    async def wait_peer_closed(self) -> None:
        if self._can_read:
            await super().wait_peer_closed()
            return
        await anyio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        if self._write_shut:
            await anyio.lowlevel.cancel_shielded_checkpoint()
            return
        # A write-only end never polls readable; once no reader is left the
        # kernel reports EPOLLERR, which every event loop hands to readers.
        try:
            await anyio.wait_readable(self._fd)
        except anyio.ClosedResourceError:
            raise anyio.ClosedResourceError from None

    def _close_now(self) -> None:
        """Close the descriptor without yielding (safe in any cleanup path)."""
        if not self._closed:
            self._closed = True
            if not self._write_shut:
                anyio.notify_closing(self._fd)
                os.close(self._fd)

    async def aclose(self) -> None:
        self._close_now()
        await anyio.lowlevel.checkpoint()


class OneStreamListener(Listener):
    """An incoming side that yields exactly one, already open, stream.

    Until it is accepted the listener owns the stream and closes it with
    itself; afterwards the stream is the caller's.
    """

    capabilities = Capability.NONE

    def __init__(self, stream: Stream, address: Address) -> None:
        super().__init__(address)
        self._stream: Stream | None = stream
        self._closed = False
        self.stream_capabilities = stream.capabilities

    async def accept(self) -> Stream:
        await anyio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise anyio.ClosedResourceError
        stream = self._stream
        if stream is None:
            raise CapabilityError(
                f"the incoming side of {self.address} yields exactly one stream and it was "
                "already accepted (this transport has no MULTI_ACCEPT)"
            )
        self._stream = None
        await anyio.lowlevel.cancel_shielded_checkpoint()
        return stream

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            stream, self._stream = self._stream, None
            if stream is not None:
                await stream.aclose()
                return
        await anyio.lowlevel.checkpoint()


def _open_path(path: str, flags: int, offset: int) -> tuple[int, bool]:
    """Open and position the file (in a worker thread); returns it and whether it is a FIFO."""
    fd = os.open(path, flags | os.O_CLOEXEC | os.O_NONBLOCK, FILE_MODE)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        fifo = stat.S_ISFIFO(mode)
        if offset and fifo:
            raise OSError(errno.ESPIPE, f"a FIFO has no offset to move to {offset}")
        if not fifo:
            os.set_blocking(fd, True)
            if offset:
                os.lseek(fd, offset, os.SEEK_SET)
        return fd, fifo
    except BaseException:
        os.close(fd)
        raise


async def _open(address: FileAddress, flags: int, *, writing: bool) -> Stream:
    action = "open for writing" if writing else "open for reading"
    what = f"file {address.path!r}"
    if not 0 <= address.offset < 2**63:
        raise AddressError(
            f"file offset {address.offset} is out of range (0 to 2**63-1)", str(address)
        )
    try:
        fd, fifo = await anyio.to_thread.run_sync(_open_path, address.path, flags, address.offset)
    except OSError as exc:
        raise open_error(exc, action, what, address, outgoing=writing) from exc
    try:
        if fifo:
            return PipeStream(fd, address, name=what)
        return FileStream(fd, address, name=what, readable=not writing, writable=writing)
    except BaseException:
        os.close(fd)
        raise


async def connect(address: FileAddress) -> Stream:
    """Open the file for writing at ``offset``: the outgoing side.

    As QEMU's migration/file.c: the file is created with mode 0600 and
    truncated (O_CREAT|O_TRUNC), then the position moves to ``offset``, so
    any bytes before the offset read back as zeros (a hole).
    """
    return await _open(address, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, writing=True)


async def listen(address: FileAddress) -> OneStreamListener:
    """Open the file for reading at ``offset``: the incoming side, one stream."""
    stream = await _open(address, os.O_RDONLY, writing=False)
    return OneStreamListener(stream, address)
