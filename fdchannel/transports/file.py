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

import errno
import os
import stat

import anyio.to_thread

from ..address import FileAddress
from ..errors import AddressError
from ._base import Stream
from ._file_stream import FileStream
from ._one_stream import OneStreamListener
from ._open_error import open_error
from ._pipe import PipeStream

__all__ = ["FileStream", "OneStreamListener", "PipeStream", "connect", "listen", "open_error"]

#: The mode QEMU gives a migration file it creates (migration/file.c).
FILE_MODE = 0o600


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
