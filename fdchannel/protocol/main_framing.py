"""The main channel of a handoff: a length, then the bytes, without I/O.

The old process sends a big-endian u64 length, then that many bytes, then
half-closes; the new process reads them and closes, which ends the
handoff.  The length is what tells an old process that died half-way from
one that was done: a stream that ends early is an error, not a short read.
(QEMU's own main channel is its migration stream, which carries its own
framing; this one is fdchannel's.)
"""

from __future__ import annotations

import struct

from ..errors import ProtocolError

__all__ = ["LENGTH", "MainReader", "header"]

#: The length in front of the main channel's bytes.
LENGTH = struct.Struct(">Q")


def header(size: int) -> bytes:
    """What goes before ``size`` bytes of main-channel data."""
    return LENGTH.pack(size)


class MainReader:
    """Feed it the main channel's bytes; ``data`` once ``done``."""

    def __init__(self, limit: int = 1 << 30) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._size: int | None = None

    @property
    def wanted(self) -> int:
        """How many more bytes complete the main channel (at least 1 until done)."""
        if self._size is None:
            return LENGTH.size - len(self._buf)
        return self._size - len(self._buf)

    @property
    def done(self) -> bool:
        return self._size is not None and len(self._buf) == self._size

    def feed(self, data: bytes) -> None:
        """Take the next bytes; a ProtocolError past the limit or past the end."""
        if self._size is None:
            self._buf += data
            if len(self._buf) < LENGTH.size:
                return
            (size,) = LENGTH.unpack_from(self._buf)
            if size > self.limit:
                raise ProtocolError(
                    f"the main stream announces {size} bytes; the limit is {self.limit}"
                )
            self._size, rest = size, bytes(self._buf[LENGTH.size :])
            self._buf = bytearray()
            data = rest
        if len(self._buf) + len(data) > self._size:
            raise ProtocolError(
                f"the main stream holds more than the {self._size} bytes it announced"
            )
        self._buf += data

    def finish(self) -> bytes:
        """The data, once the stream ended; a ProtocolError if it ended early."""
        if self._size is None:
            raise ProtocolError(
                f"the main stream ended after {len(self._buf)} bytes, inside its "
                f"{LENGTH.size}-byte length: the old process stopped sending"
            )
        if len(self._buf) < self._size:
            raise ProtocolError(
                f"the main stream ended after {len(self._buf)} of {self._size} bytes: the old "
                "process stopped sending"
            )
        return bytes(self._buf)
