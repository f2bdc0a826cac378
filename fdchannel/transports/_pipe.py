"""One end of a pipe or FIFO as a stream: a read end receives, a write end sends."""

from __future__ import annotations

import errno
import fcntl
import os
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel

from ..capabilities import Capability
from ..errors import CapabilityError
from ..sockets import DEFAULT_RECEIVE
from ._base import DescriptorStream

if TYPE_CHECKING:
    from ..address import Address

__all__ = ["PipeStream"]


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
