"""Child processes for async tests: stdout read line by line, always killed and reaped."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

__all__ = ["ROOT", "reading_lines"]

#: The repository: children run from it, so ``python -m tests.…`` finds them.
ROOT = Path(__file__).resolve().parents[1]


@asynccontextmanager
async def reading_lines(
    command: Sequence[str],
) -> AsyncIterator[tuple[Process, BufferedByteReceiveStream]]:
    """Run ``command`` from the repository (stderr to ours); its stdout as a buffered
    stream.  On the way out it is killed if it still runs, and reaped."""
    async with await anyio.open_process(list(command), cwd=ROOT, stderr=None) as process:
        assert process.stdout is not None
        try:
            yield process, BufferedByteReceiveStream(process.stdout)
        finally:
            if process.returncode is None:
                process.kill()
            with anyio.CancelScope(shield=True):
                await process.wait()
