"""10,000 named memfds cross between two processes with the native codec."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

import fdchannel
from fdchannel import FdState, NamedFd
from fdchannel.address import UnixAddress

pytestmark = pytest.mark.anyio
COUNT = 10_000

# How entry i is named, for the sender and (as source) for the receiver:
# each shape makes a different table (see fdchannel.runs).
SHAPES: dict[str, tuple[Callable[[int], tuple[str, int]], str]] = {
    "distinct": (lambda i: (f"region-{i}", i), "(f'region-{i}', i)"),  # a run per entry
    "one-run": (lambda i: ("region", i), "('region', i)"),  # ids 0..9999: one run
    "mixed": (lambda i: (f"region-{i // 100}", i % 100), "(f'region-{i // 100}', i % 100)"),
}

RECEIVER = """
import os, sys, anyio, fdchannel
from fdchannel.address import UnixAddress
async def main():
    stream = await fdchannel.connect(UnixAddress(sys.argv[1]))
    state = await fdchannel.receive_state(stream)
    bad = 0
    for i, entry in enumerate(state.fds):
        link = os.readlink(f"/proc/self/fd/{entry.fd}")
        if (entry.name, entry.id) != %s or f"memfd:region-{i} " not in link:
            bad += 1
    print(len(state.fds), bad, len(state.metadata), flush=True)
    state.close()
    await stream.aclose()
anyio.run(main)
"""


@pytest.mark.parametrize("shape", SHAPES)
async def test_ten_thousand_memfds_between_processes(sockdir: Path, shape: str) -> None:
    fds = [os.memfd_create(f"region-{i}", os.MFD_CLOEXEC) for i in range(COUNT)]
    entry, source = SHAPES[shape]
    state = FdState([NamedFd(*entry(i), fd) for i, fd in enumerate(fds)], b"m" * 1000)
    try:
        with anyio.fail_after(120):
            listener = await fdchannel.listen(UnixAddress(str(sockdir / "s")))
            async with (
                listener,
                await anyio.open_process(
                    [sys.executable, "-c", RECEIVER % source, str(sockdir / "s")]
                ) as child,
            ):
                stream = await listener.accept()
                try:
                    await fdchannel.send_state(stream, state)
                    assert child.stdout is not None
                    out = b""
                    async for chunk in child.stdout:
                        out += chunk
                finally:
                    await stream.aclose()
                assert await child.wait() == 0
        assert out.split() == [str(COUNT).encode(), b"0", b"1000"]
    finally:
        for fd in fds:
            os.close(fd)
