"""A regular file (or other descriptor epoll refuses) as a stream, read or written in a thread.

Regular files are always "ready" to epoll (``epoll_ctl`` refuses them with
EPERM) and O_NONBLOCK does not apply to them, yet a read or write can wait
on the disk: each call is one hop to a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

from ..capabilities import Capability
from ..errors import CapabilityError, TransportError
from ..sockets import DEFAULT_RECEIVE
from ._base import FdAttribute, Stream

if TYPE_CHECKING:
    from ..address import Address

__all__ = ["FileStream"]

T = TypeVar("T")


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
