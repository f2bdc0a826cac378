"""A child process's stderr, read as far as a test needs it."""

from __future__ import annotations

import re

import anyio
import anyio.abc


class Log:
    """What a child wrote on its stderr, read on demand.

    The programs we watch (socat -d -d, systemd-socket-activate) write a
    few lines, far less than a pipe holds, so nothing has to read it in
    the background.
    """

    def __init__(self, stream: anyio.abc.ByteReceiveStream) -> None:
        self._stream = stream
        self.data = bytearray()
        self.closed = False

    async def _more(self) -> None:
        try:
            self.data += await self._stream.receive()
        except anyio.EndOfStream:
            self.closed = True

    async def wait_for(self, pattern: re.Pattern[bytes], count: int = 1) -> list[re.Match[bytes]]:
        """The first ``count`` matches, as soon as they are written; [] if the child exits first."""
        while len(matches := list(pattern.finditer(self.data))) < count:
            if self.closed:
                return []
            await self._more()
        return matches[:count]

    async def read_rest(self) -> str:
        """The whole log, once every writer has closed it."""
        while not self.closed:
            await self._more()
        return self.text()

    def text(self) -> str:
        return self.data.decode(errors="replace")
