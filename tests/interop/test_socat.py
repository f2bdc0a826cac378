"""socat as the peer: its connectors and listeners against ours, bytes both ways.

Each case runs a real socat process on a unix path, an abstract unix name or
TCP, with socat either connecting to our listener or listening for our
connect, and moves a few MiB one way, the other way, both ways one after the
other (each side's EOF is a half-close the other still sends after), or
through socat's PIPE as an echo.  socat runs with ``-d -d``: its "listening
on" line says when, and for TCP on which port, it is ready.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import anyio
import anyio.abc
import pytest

import fdchannel
from fdchannel.address import TcpAddress, UnixAddress
from fdchannel.transports import Stream
from fdchannel.transports._socket import UnixSocketStream

from .childlog import Log, watched

SOCAT = shutil.which("socat")

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.interop,
    pytest.mark.skipif(SOCAT is None, reason="socat is not installed (Debian package socat)"),
]

TIMEOUT = 20
MIB = 1 << 20
SIZE = 4 * MIB
#: socat's notice once it listens; for TCP it names the port the kernel chose.
LISTENING = re.compile(rb"listening on AF=\d+ (?:[0-9.]+:(?P<port>\d+)|\S+)")

Transport = Literal["unix", "abstract", "tcp"]
#: Which way the bytes go: socat to us, us to socat, both (socat first), or
#: us to socat and back through its PIPE.
Flow = Literal["to_us", "from_us", "both", "echo"]


@dataclass(frozen=True)
class Case:
    """One socat command line against one of our endpoints."""

    transport: Transport
    socat_listens: bool
    flow: Flow

    def __str__(self) -> str:
        role = "socat-listens" if self.socat_listens else "socat-connects"
        return f"{self.transport}-{role}-{self.flow}"


CASES = [
    Case(transport, socat_listens, flow)
    for transport in ("unix", "abstract", "tcp")
    for socat_listens in (False, True)
    for flow in ("to_us", "from_us", "both", "echo")
]


@dataclass
class Child:
    """A running socat and its log."""

    process: anyio.abc.Process
    log: Log


@asynccontextmanager
async def socat(stdout: Path, *args: str) -> AsyncIterator[Child]:
    """Run socat, its stdout to a file, notices on stderr; it is killed and reaped on every path."""
    assert SOCAT is not None
    with stdout.open("wb") as out:  # the child has its own copy
        process = await anyio.open_process(
            [SOCAT, "-d", "-d", *args], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE
        )
    async with watched(process, "socat") as log:
        yield Child(process, log)


def socat_args(flow: Flow, socket_address: str, data: Path) -> list[str]:
    """socat's options and two addresses for ``flow``; ``data`` is what socat sends."""
    if flow == "to_us":
        return ["-u", f"OPEN:{data},rdonly", socket_address]
    if flow == "from_us":
        return ["-u", socket_address, "STDOUT"]
    # After one direction's EOF socat gives the other only -t seconds (0.5 by default).
    if flow == "both":
        return ["-t", str(TIMEOUT), socket_address, f"OPEN:{data},rdonly!!STDOUT"]
    # socat checks that its pipe is writable and then writes a whole block in
    # blocking mode; a block larger than the pipe's one free page would wait
    # for socat itself to read the pipe.  A page-sized block always fits.
    return ["-t", str(TIMEOUT), "-b", "4096", socket_address, "PIPE"]


async def read_to_eof(stream: Stream) -> bytes:
    parts = []
    while True:
        try:
            parts.append(await stream.receive(MIB))
        except anyio.EndOfStream:
            return b"".join(parts)


async def send_all(stream: Stream, data: bytes) -> None:
    await stream.send(data)
    await stream.send_eof()


async def exchange(flow: Flow, stream: Stream, ours: bytes) -> bytes:
    """Play our side of ``flow``; returns what we received."""
    if flow == "to_us":
        return await read_to_eof(stream)
    if flow == "from_us":
        await send_all(stream, ours)
        # socat exits once it has seen our EOF: a hang-up we must notice.
        await stream.wait_peer_closed()
        return b""
    if flow == "both":
        # Strictly in turn: socat's EOF must leave our sending side open.
        received = await read_to_eof(stream)
        await send_all(stream, ours)
        return received
    async with anyio.create_task_group() as tg:
        tg.start_soon(send_all, stream, ours)
        echoed = await read_to_eof(stream)
    return echoed


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Place:
    """Where the two sides meet, spelled for us and for socat."""

    transport: Transport
    path: Path
    #: An abstract socket name; tight (no padding), as socat's are by default.
    name: str
    #: Where socat's stdout goes.
    out: Path

    def ours(self, port: int = 0) -> fdchannel.Address:
        if self.transport == "tcp":
            return TcpAddress("127.0.0.1", str(port))
        return UnixAddress(
            self.name if self.transport == "abstract" else str(self.path),
            abstract=self.transport == "abstract",
        )

    def socat_listen(self) -> str:
        return {
            "unix": f"UNIX-LISTEN:{self.path}",
            "abstract": f"ABSTRACT-LISTEN:{self.name}",
            "tcp": "TCP-LISTEN:0,bind=127.0.0.1,reuseaddr",
        }[self.transport]

    def socat_connect(self, port: int) -> str:
        return {
            "unix": f"UNIX-CONNECT:{self.path}",
            "abstract": f"ABSTRACT-CONNECT:{self.name}",
            "tcp": f"TCP:127.0.0.1:{port}",
        }[self.transport]


async def open_pair(
    case: Case, place: Place, data: Path, stack: AsyncExitStack
) -> tuple[Child, Stream]:
    """Start socat and open our end of the connection, in the order the roles need."""
    if case.socat_listens:
        child = await stack.enter_async_context(
            socat(place.out, *socat_args(case.flow, place.socat_listen(), data))
        )
        matches = await child.log.wait_for(LISTENING)
        assert matches, f"socat exited before listening: {child.log.text()}"
        ready = matches[0]
        port = int(ready["port"] or 0)
        stream = await stack.enter_async_context(await fdchannel.connect(place.ours(port)))
        return child, stream
    listener = await stack.enter_async_context(await fdchannel.listen(place.ours()))
    port = int(listener.address.port) if isinstance(listener.address, TcpAddress) else 0
    child = await stack.enter_async_context(
        socat(place.out, *socat_args(case.flow, place.socat_connect(port), data))
    )
    stream = await stack.enter_async_context(await listener.accept())
    if isinstance(stream, UnixSocketStream):
        # SO_PEERCRED names socat itself: it connects without forking.
        pid, _uid, _gid = stream.peer_credentials
        assert pid == child.process.pid
    return child, stream


@pytest.mark.parametrize("case", CASES, ids=str)
async def test_socat(case: Case, sockdir: Path) -> None:
    """socat and we move SIZE bytes as ``case`` says; socat exits 0 and every byte is right."""
    theirs, ours = os.urandom(SIZE), os.urandom(SIZE)
    data = sockdir / "theirs"
    data.write_bytes(theirs)
    name = f"fdchannel-test-{sockdir.name}"
    place = Place(case.transport, sockdir / "s.sock", name, sockdir / "out")
    # Bounds the whole exchange; on the way out socat is killed if need be, and reaped.
    with anyio.fail_after(TIMEOUT):
        async with AsyncExitStack() as stack:
            child, stream = await open_pair(case, place, data, stack)
            received = await exchange(case.flow, stream, ours)
            status = await child.process.wait()
            log = await child.log.read_rest()
    written = place.out.read_bytes()
    assert status == 0, log
    expected = {"to_us": theirs, "from_us": b"", "both": theirs, "echo": ours}[case.flow]
    assert digest(received) == digest(expected), (len(received), log)
    wrote = ours if case.flow in ("from_us", "both") else b""
    assert digest(written) == digest(wrote), (len(written), log)
