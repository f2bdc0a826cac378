"""One JSON object per line: the format of every upgrade link that carries words.

The new generation's reports to the old one (``{"ready": true}``,
``{"failed": "reason"}``), a control request (``upgrade``) and its answer
all travel as single lines.  Every end frames with this module: ``encode``
a message; read into a ``LineReader`` until it holds a line, bounded so a
peer cannot make us buffer without end; ``decode`` it.  No event loop here:
``receive_line`` loops over any stream with an awaitable ``receive`` and
the blocking control client loops over its socket.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

__all__ = ["LineReader", "LineTooLong", "decode", "encode", "receive_line"]


class LineTooLong(ValueError):
    """More than the limit arrived without a newline."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"a line longer than {limit} bytes")
        self.limit = limit


def encode(message: Mapping[str, object] | str) -> bytes:
    """One line: a JSON object, or a bare word (a control request)."""
    text = message if isinstance(message, str) else json.dumps(message)
    return text.encode() + b"\n"


def decode(line: bytes) -> dict[str, Any] | None:
    """The JSON object on ``line``; None when it holds anything else."""
    try:
        message = json.loads(line)
    except ValueError:  # also UnicodeDecodeError
        return None
    return message if isinstance(message, dict) else None


class LineReader:
    """Bytes in, lines out (without their newline), one at a time; at most ``limit``
    bytes each."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buffer = bytearray()

    def room(self) -> int:
        """The most worth reading next: never more than one byte past the limit."""
        return max(1, self.limit + 1 - len(self._buffer))

    def feed(self, data: bytes) -> bytes | None:
        """Add what arrived; the next line once it is whole (taken: what follows it
        stays for the next call).  LineTooLong past the limit."""
        self._buffer += data
        end = self._buffer.find(b"\n")
        if end > self.limit or (end < 0 and len(self._buffer) > self.limit):
            raise LineTooLong(self.limit)
        if end < 0:
            return None
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return line

    @property
    def pending(self) -> bytes:
        """What arrived without a newline yet (what a peer that hung up left)."""
        return bytes(self._buffer)


class _Receiving(Protocol):
    async def receive(self, max_bytes: int = ...) -> bytes: ...


async def receive_line(stream: _Receiving, limit: int) -> bytes:
    """Read one line from ``stream``; LineTooLong, or the stream's own end-of-stream error."""
    reader = LineReader(limit)
    while True:
        line = reader.feed(await stream.receive(reader.room()))
        if line is not None:
            return line
