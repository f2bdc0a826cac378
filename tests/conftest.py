"""Shared fixtures: the event-loop matrix and the descriptor-leak check."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
import uvloop

from fdchannel.transports._socket import UnixSocketStream

BACKENDS = [
    pytest.param(("asyncio", {}), id="asyncio"),
    pytest.param(("asyncio", {"loop_factory": uvloop.new_event_loop}), id="uvloop"),
    pytest.param(("trio", {}), id="trio"),
]


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """Every async test runs on asyncio, asyncio+uvloop and trio."""
    backend: tuple[str, dict[str, Any]] = request.param
    return backend


def open_fds() -> dict[int, str]:
    """This process's open descriptors and what each points to."""
    fds: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:  # the descriptor listdir itself used
            continue
    return fds


@pytest.fixture(scope="session", autouse=True)
def _warm_event_loops() -> None:
    """Let each event loop make its process-wide descriptors before any test counts them.

    libuv (under uvloop) opens a pipe once per process for signal handling.
    """

    async def touch() -> None:
        await anyio.to_thread.run_sync(lambda: None)

    for param in BACKENDS:
        name, options = param.values[0]  # type: ignore[misc]
        anyio.run(touch, backend=name, backend_options=options)


@pytest.fixture(autouse=True)
def no_leaked_fds() -> Iterator[None]:
    """Every test must leave the process's descriptor set as it found it."""
    before = open_fds()
    yield
    after = open_fds()
    leaked = {fd: target for fd, target in after.items() if before.get(fd) != target}
    assert not leaked, f"descriptors leaked by the test: {leaked}"


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short temporary directory for AF_UNIX paths (sun_path holds 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="fdc-", dir="/tmp") as d:
        yield Path(d)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[UnixSocketStream, UnixSocketStream]]:
    """Two connected unix streams (a socketpair), closed afterwards."""
    left, right = socket.socketpair()
    a, b = UnixSocketStream(left, None), UnixSocketStream(right, None)
    yield a, b
    await a.aclose()
    await b.aclose()


def close_fds(fds: list[int]) -> None:
    """Close descriptors a test made."""
    for fd in fds:
        os.close(fd)
