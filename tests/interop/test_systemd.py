"""systemd's socket activation: ``systemd-socket-activate`` hands a child its listening sockets.

systemd-socket-activate binds every ``-l`` address, waits for the first
connection attempt and then execs the command in its own process with
``LISTEN_PID``, ``LISTEN_FDS`` (descriptors from 3 on) and, with
``--fdname=A:B``, ``LISTEN_FDNAMES``.  The command here is a Python child
that opens each socket with ``fdchannel.listen("fd:NAME")`` on the test's
event loop, answers one peer per socket with what it opened, and passes a
memfd back where the socket is AF_UNIX.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.abc
import pytest

import fdchannel
from fdchannel.transports import Stream

from .childlog import Log, watched

ACTIVATE = shutil.which("systemd-socket-activate")

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.interop,
    pytest.mark.skipif(
        ACTIVATE is None,
        reason="systemd-socket-activate is not installed (Debian package systemd)",
    ),
]

#: Covers the child's interpreter start-up, which dominates.
TIMEOUT = 30
#: systemd-socket-activate's line for each socket it bound: "Listening on ADDR as FD."
LISTENING = re.compile(rb"Listening on (.+) as (\d+)\.\n")
#: A free port found by binding port 0 may be taken again before the child binds it.
PORT_ATTEMPTS = 3

#: The activated child: argv is the event loop, then the fd: targets to serve.
CHILD = """
import json, os, sys
import anyio
import fdchannel
from fdchannel.transports import fd as fd_transport

async def serve(target, listener):
    async with listener:
        stream = await listener.accept()
    async with stream:
        request = await stream.receive()
        reply = json.dumps({
            "target": target,
            "request": request.decode(),
            "pid": os.getpid(),
            "inherited": fd_transport.inherited_fds(),
            "fd_passing": fdchannel.Capability.FD_PASSING in stream.capabilities,
        }).encode()
        if fdchannel.Capability.FD_PASSING in stream.capabilities:
            memfd = os.memfd_create(target)
            try:
                os.write(memfd, target.encode())
                await stream.send_fds(reply, [memfd])
            finally:
                os.close(memfd)
        else:
            await stream.send(reply)
        await stream.send_eof()

async def main(targets):
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for target in targets:
                tg.start_soon(serve, target, await fdchannel.listen(target))

loop, targets = sys.argv[1], sys.argv[2:]
options = {}
if loop == "uvloop":
    import uvloop
    options["loop_factory"] = uvloop.new_event_loop
anyio.run(main, targets, backend="trio" if loop == "trio" else "asyncio", backend_options=options)
"""

Kind = Literal["tcp", "unix"]


@dataclass(frozen=True)
class Case:
    """Sockets to pass, their names, and what the child opens on each."""

    id: str
    #: One ``-l`` per entry, in order: the child gets them as descriptors 3, 4, ...
    sockets: tuple[Kind, ...]
    #: The ``--fdname`` value, if any.
    fdnames: str | None
    #: For each socket, the fd: target that must turn out to be it.
    targets: tuple[str, ...]
    #: What fdchannel must read from the environment.
    inherited: dict[str, int] = field(default_factory=dict)


CASES = [
    Case("tcp-named", ("tcp",), "web", ("fd:web",), {"web": 3}),
    Case("unix-named", ("unix",), "web", ("fd:web",), {"web": 3}),
    # Names in an order no sorting would produce, on sockets of both kinds.
    Case(
        "several-names",
        ("tcp", "unix", "tcp"),
        "web:control:metrics",
        ("fd:web", "fd:control", "fd:metrics"),
        {"web": 3, "control": 4, "metrics": 5},
    ),
    Case("numeric", ("tcp",), None, ("fd:3",), {"unknown": 3}),
    Case("numeric-second", ("unix", "tcp"), "a:b", ("fd:3", "fd:4"), {"a": 3, "b": 4}),
    # Without LISTEN_FDNAMES every descriptor is "unknown", as sd_listen_fds_with_names says.
    Case("unnamed", ("unix",), None, ("fd:unknown",), {"unknown": 3}),
]


@dataclass
class Activated:
    """A running systemd-socket-activate (later, the child it became) and its log."""

    process: anyio.abc.Process
    log: Log
    #: The -l addresses, in descriptor order.
    addresses: list[str]


@asynccontextmanager
async def activate(
    addresses: list[str], fdnames: str | None, *command: str
) -> AsyncIterator[Activated]:
    """Run systemd-socket-activate; it is killed and reaped on every path."""
    assert ACTIVATE is not None
    argv = [ACTIVATE, *(f"--listen={address}" for address in addresses)]
    if fdnames is not None:
        argv.append(f"--fdname={fdnames}")
    process = await anyio.open_process(
        [*argv, *command],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    # The child's own traceback, if it has one, is in the log too.
    async with watched(process, "systemd-socket-activate") as log:
        yield Activated(process, log, addresses)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def start(case: Case, sockdir: Path, loop: str, stack: AsyncExitStack) -> Activated:
    """Start the activator and wait until every socket is bound (another port if one was taken)."""
    command = [sys.executable, "-c", CHILD, loop, *reversed(case.targets)]
    for _ in range(PORT_ATTEMPTS):
        addresses = [
            str(sockdir / f"s{i}.sock") if kind == "unix" else f"127.0.0.1:{free_port()}"
            for i, kind in enumerate(case.sockets)
        ]
        async with AsyncExitStack() as attempt_stack:
            activated = await attempt_stack.enter_async_context(
                activate(addresses, case.fdnames, *command)
            )
            lines = await activated.log.wait_for(LISTENING, len(addresses))
            if lines:
                # Each -l address becomes the next descriptor, from 3 on.
                assert [int(line[2]) for line in lines] == list(range(3, 3 + len(addresses)))
                stack.push_async_exit(attempt_stack.pop_all())
                return activated
            log = activated.log.text()
            if "Address already in use" not in log:
                raise AssertionError(f"systemd-socket-activate did not start: {log}")
    raise AssertionError(f"a free port was taken before it could be bound, {PORT_ATTEMPTS} times")


async def ask(kind: Kind, address: str, request: bytes) -> tuple[dict[str, Any], bytes | None]:
    """Send ``request`` on a new connection; the child's reply and the memfd's contents."""
    uri = f"unix:{address}" if kind == "unix" else f"tcp:{address}"
    stream: Stream
    async with await fdchannel.connect(uri) as stream:
        await stream.send(request)
        passed: bytes | None = None
        if kind == "unix":
            data, fds = await stream.receive_fds(65536, 1)
            try:
                passed = b"".join(os.pread(fd, 100, 0) for fd in fds)
            finally:
                for fd in fds:
                    os.close(fd)
        else:
            data = b""
        with contextlib.suppress(anyio.EndOfStream):
            while True:
                data += await stream.receive()
    reply: dict[str, Any] = json.loads(data)
    return reply, passed


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
async def test_socket_activation(
    case: Case, sockdir: Path, anyio_backend: tuple[str, dict[str, Any]]
) -> None:
    """Every fd: target opens the socket systemd passed under that name or number."""
    name, options = anyio_backend
    loop = "uvloop" if "loop_factory" in options else name
    replies = []
    with anyio.fail_after(TIMEOUT):
        async with AsyncExitStack() as stack:
            activated = await start(case, sockdir, loop, stack)
            # The first connection makes the activator exec the child; the
            # others wait in their sockets' backlogs.
            for i, (kind, address) in enumerate(
                zip(case.sockets, activated.addresses, strict=True)
            ):
                replies.append(await ask(kind, address, f"hello {i}".encode()))
            status = await activated.process.wait()
            log = await activated.log.read_rest()
    assert status == 0, log
    for i, (kind, target, (reply, passed)) in enumerate(
        zip(case.sockets, case.targets, replies, strict=True)
    ):
        assert reply["target"] == target, log
        assert reply["request"] == f"hello {i}"
        # The activator execs the child in its own process, as LISTEN_PID says.
        assert reply["pid"] == activated.process.pid
        assert reply["inherited"] == case.inherited
        assert reply["fd_passing"] == (kind == "unix")
        assert passed == (target.encode() if kind == "unix" else None)
