"""A child process's stderr, read as far as a test needs it."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

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


def kill(process: anyio.abc.Process) -> None:
    """SIGKILL the process unless it was reaped already."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()


@asynccontextmanager
async def watched(process: anyio.abc.Process, name: str) -> AsyncIterator[Log]:
    """The process's stderr as a Log; it is killed and reaped on every path.

    A failure inside gets the whole log attached as a note.
    """
    assert process.stderr is not None
    log = Log(process.stderr)
    try:
        try:
            yield log
        except BaseException as exc:
            kill(process)
            with anyio.move_on_after(5, shield=True):
                await log.read_rest()
            exc.add_note(f"{name}'s stderr:\n{log.text()}")
            raise
    finally:
        with anyio.CancelScope(shield=True):
            kill(process)
            await process.aclose()
