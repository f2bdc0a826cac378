"""Sans-I/O building blocks of the wire parsers: a byte buffer read by
generator-based parsers, and a queue that owns received descriptors.

A parser is a generator that yields how many more bytes it needs and
returns its result; ``Decoder.feed`` appends what arrived and resumes it.
Where the stream may end, a parser yields ``MAY_END`` (no byte needed)
and is sent True once it has ended.  Descriptors arrive at or before the
byte that stands for them (the kernel may glue earlier plain bytes into
the same read), so they wait in a FIFO until the parser reaches their
marker.  The codecs (``fdchannel.codecs``) and QEMU's VMState subsections
(``fdchannel.qemu.vmstate``) are parsed with these.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Generator

from .errors import ProtocolError
from .fds import Fds, close_all

__all__ = ["MAY_END", "ByteSource", "FdQueue", "byte_or_end"]

#: What a parser yields where the stream may end (it needs no more bytes).
MAY_END = 0


class FdQueue:
    """Received descriptors, owned here until a parser hands them on.

    They come as lists or as ``array('i')`` (a stream's drain: C ints, no
    Python int per descriptor), and are handed on as they came.
    """

    def __init__(self) -> None:
        self._fds: Fds = []
        self._head = 0

    def push(self, fds: Fds) -> None:
        """Take ownership of ``fds``: the object itself, when nothing is queued."""
        if self._head == len(self._fds):
            # The usual case (a stream's whole run of messages in one read):
            # keeping it spares copying tens of thousands of entries.
            self._fds, self._head = fds, 0
        else:
            self._fds.extend(fds)  # a list or an array takes either

    def pop(self, what: str) -> int:
        return self.pop_many(1, what)[0]

    def pop_many(self, count: int, what: str) -> Fds:
        """The next ``count`` descriptors, handed on: the caller owns them now."""
        if len(self) < count:
            raise ProtocolError(
                f"{what}: {count} descriptor(s) announced, {len(self)} arrived with the bytes"
            )
        if self._head == 0 and count == len(self._fds):
            # Everything at once (a whole state in one read): hand it over.
            taken, self._fds = self._fds, []
            return taken
        taken = self._fds[self._head : self._head + count]
        self._head += count
        if self._head > 4096 and self._head * 2 > len(self._fds):
            del self._fds[: self._head]
            self._head = 0
        return taken

    def __len__(self) -> int:
        return len(self._fds) - self._head

    def close(self) -> None:
        """Close every descriptor still held (error paths)."""
        fds = self._fds[self._head :]
        self._fds, self._head = [], 0
        close_all(fds)


class ByteSource:
    """Bytes received so far, consumed front to back by a parser."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        #: Total bytes consumed, for error messages.
        self.offset = 0
        #: CRC-32 of every byte consumed so far (the native codec's integrity check).
        self.crc = 0

    def append(self, data: bytes) -> None:
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        self._buf += data

    def available(self) -> int:
        return len(self._buf) - self._pos

    def read(self, n: int) -> Generator[int, None, bytes]:
        """Parser step: wait until ``n`` bytes are there, then take them."""
        while self.available() < n:
            yield n - self.available()
        data = bytes(self._buf[self._pos : self._pos + n])
        self._pos += n
        self.offset += n
        self.crc = zlib.crc32(data, self.crc)
        if self._pos > 1 << 20:  # keep the buffer from growing with the stream
            del self._buf[: self._pos]
            self._pos = 0
        return data

    def unpack(self, fmt: str) -> Generator[int, None, tuple[int, ...]]:
        """Parser step: read and unpack one big-endian struct."""
        data = yield from self.read(struct.calcsize(fmt))
        return struct.unpack(fmt, data)


def byte_or_end(src: ByteSource) -> Generator[int, bool | None, int | None]:
    """Parser step: the next byte, or None if the stream ends first (a place it may end)."""
    while not src.available():
        if (yield MAY_END):
            return None
    (value,) = yield from src.unpack(">B")
    return value
