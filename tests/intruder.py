"""A peer of another uid (nobody), for the credential-policy tests (root only)."""

from __future__ import annotations

import os
import subprocess
import sys

import anyio
import anyio.abc
import pytest

NOBODY = 65534

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a peer as another uid")

SCRIPT = """
import os, socket, sys
# SO_PEERCRED is taken at connect(): become the other user first.
os.setgroups([])
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)
s = socket.socket(socket.AF_UNIX)
s.connect(b"\\0" + sys.argv[1].encode())
print("connected", flush=True)
try:
    s.sendall(b"FDCN secret")
    data = s.recv(1)
except (BrokenPipeError, ConnectionResetError):  # closed with our bytes unread
    data = b""
print("closed" if data == b"" else "open", flush=True)
"""


async def intruder(name: str) -> anyio.abc.Process:
    """Start a nobody process that connects to the abstract unix name ``name``.

    It prints ``connected``, then ``closed`` once the listener closed it
    without reading (or ``open`` if it was answered).
    """
    return await anyio.open_process([sys.executable, "-c", SCRIPT, name], stdout=subprocess.PIPE)


async def lines(process: anyio.abc.Process, count: int) -> list[bytes]:
    """The first ``count`` lines the intruder printed."""
    assert process.stdout is not None
    out = b""
    while out.count(b"\n") < count:
        chunk = await process.stdout.receive()
        out += chunk
    return out.split(b"\n")[:count]
