"""Fault injection with real processes: either side SIGKILLed at each step.

The side under test runs here; the peer is a real process that kills
itself with SIGKILL at the step named.  Whatever happens, the side here
raises the matching HandoffError or HandoffTimeout within its timeout, the
outgoing side can still use every descriptor it had, and nothing leaks.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

import fdchannel
from fdchannel import FdState, HandoffError, HandoffTimeout, NamedFd
from fdchannel.transfer import Codec

from ..children import reading_lines
from .peer import MAIN_DATA, channels

pytestmark = pytest.mark.anyio
SHORT = 1.5  # seconds a step may take where the peer is gone for good


@asynccontextmanager
async def peer(
    role: str, sockdir: Path, die_at: str, codec: str
) -> AsyncIterator[tuple[Process, BufferedByteReceiveStream]]:
    """Run tests/handoff/peer.py; always killed and reaped."""
    command = [
        sys.executable,
        "-m",
        "tests.handoff.peer",
        role,
        str(sockdir / "cpr"),
        str(sockdir / "main"),
        die_at,
        codec,
    ]
    async with reading_lines(command) as child:
        yield child


async def wait_line(lines: BufferedByteReceiveStream, expected: str) -> None:
    """Wait for the peer to report reaching ``expected``."""
    while (await lines.receive_until(b"\n", 1024)).decode() != expected:
        pass


class Resources:
    """What the old process owns: memory and a listening socket with a client."""

    def __init__(self) -> None:
        self.memfd = os.memfd_create("ram0", os.MFD_CLOEXEC)
        os.write(self.memfd, b"ram!")
        self.server = socket.create_server(("127.0.0.1", 0))

    def state(self, codec: str = "native") -> FdState:
        return FdState(
            [NamedFd("ram0", 0, self.memfd), NamedFd("listener", 0, self.server.fileno())],
            b"meta" if codec == "native" else b"",  # QEMU's format has no metadata
        )

    def still_usable(self) -> None:
        assert os.pread(self.memfd, 4, 0) == b"ram!"
        with socket.create_connection(self.server.getsockname(), timeout=5):
            conn, _ = self.server.accept()
            conn.close()

    def close(self) -> None:
        os.close(self.memfd)
        self.server.close()


# (peer dies at, codec, the call that fails here, the error)
INCOMING_DEATHS = [
    ("listening", "native", "start", HandoffTimeout),  # (a) before accepting
    ("mid-read", "native", "start", HandoffError),  # (b) while reading the state
    ("mid-read", "qemu", "start", HandoffError),
    ("received", "native", "start", HandoffError),  # (c) read it all, no ack
    ("received", "qemu", "finish", HandoffTimeout),  # a bare close is QEMU's ack
    ("acked", "native", "finish", HandoffTimeout),  # (d) acked, main never accepted
    ("mid-main", "native", "complete", HandoffError),  # (e) during the main stream
]


@pytest.mark.parametrize(
    ("die_at", "codec", "failing", "error"),
    INCOMING_DEATHS,
    ids=[f"{d}-{c}" for d, c, _, _ in INCOMING_DEATHS],
)
async def test_incoming_killed(
    sockdir: Path, die_at: str, codec: Codec, failing: str, error: type[HandoffError]
) -> None:
    resources = Resources()
    try:
        async with peer("incoming", sockdir, die_at, codec) as (process, lines):
            with anyio.fail_after(20):
                await wait_line(lines, "listening")
                out = fdchannel.Outgoing(
                    channels(str(sockdir / "cpr"), str(sockdir / "main")), codec=codec
                )
                calls: dict[str, Callable[[], Awaitable[object]]] = {
                    "start": lambda: out.send_cpr(resources.state(codec), timeout=SHORT),
                    "finish": lambda: out.connect_main(timeout=SHORT),
                    "complete": lambda: out.send_main(MAIN_DATA, timeout=SHORT),
                }
                async with out:
                    for name, call in calls.items():
                        began = time.monotonic()
                        if name != failing:
                            await call()
                            continue
                        if die_at in ("listening", "acked"):
                            # Dead before we connect: a live listener would take
                            # the connection into its backlog, unaccepted.
                            await process.wait()
                        with pytest.raises(error):
                            await call()
                        assert time.monotonic() - began < SHORT + 1
                        assert out.state is fdchannel.handoff.State.FAILED
                        break
                assert await process.wait() == -signal.SIGKILL
        resources.still_usable()
    finally:
        resources.close()


@pytest.mark.parametrize("codec", ["native", "qemu"])
async def test_incoming_out_of_descriptors(sockdir: Path, codec: Codec) -> None:
    """The new process cannot hold the state: both sides fail typed, the old one keeps all."""
    resources = Resources()
    try:
        async with peer("incoming", sockdir, "low-limit", codec) as (process, lines):
            with anyio.fail_after(20):
                await wait_line(lines, "listening")
                chans = channels(str(sockdir / "cpr"), str(sockdir / "main"))
                # More descriptors than the receiver has room for (5).
                base = resources.state(codec)
                extra = [NamedFd("extra", i, resources.memfd) for i in range(10)]
                state = FdState([*base.fds, *extra], base.metadata)
                async with fdchannel.Outgoing(chans, codec=codec) as out:
                    with pytest.raises(HandoffError) as info:
                        await out.send_cpr(state, timeout=SHORT * 4)
                if codec == "native":  # the receiver says why before closing
                    assert "hard limit" in str(info.value)
                # It raised: FdPassingError naming the limit (native, before any
                # descriptor arrived), TruncatedFdsError (qemu, when one did not fit).
                assert await process.wait() == 1
        resources.still_usable()
    finally:
        resources.close()


# (peer dies at, the call that fails here, the error)
OUTGOING_DEATHS = [
    ("ready", "receive_cpr", HandoffTimeout),  # before connecting
    ("mid-send", "receive_cpr", HandoffError),  # half a header, then gone
    ("acked", "accept_main", HandoffTimeout),  # never connects main
    ("mid-main", "receive_main", HandoffError),  # main stream cut short
]


@pytest.mark.parametrize(
    ("die_at", "failing", "error"), OUTGOING_DEATHS, ids=[d for d, _, _ in OUTGOING_DEATHS]
)
async def test_outgoing_killed(
    sockdir: Path, die_at: str, failing: str, error: type[HandoffError]
) -> None:
    inc = fdchannel.Incoming(channels(str(sockdir / "cpr"), str(sockdir / "main")))
    async with inc:
        await inc.listen_cpr()
        async with peer("outgoing", sockdir, die_at, "native") as (process, _):
            with anyio.fail_after(20):
                state: FdState | None = None
                try:
                    for name in ("receive_cpr", "listen_main", "accept_main", "receive_main"):
                        began = time.monotonic()
                        if name == failing:
                            with pytest.raises(error):
                                await getattr(inc, name)(timeout=SHORT)
                            assert time.monotonic() - began < SHORT + 1
                            break
                        if name == "receive_cpr":
                            state = await inc.receive_cpr(timeout=SHORT * 4)
                            assert os.pread(state.get("ram0"), 4, 0) == b"ram!"
                        elif name == "listen_main":
                            await inc.listen_main()
                        else:
                            await getattr(inc, name)(timeout=SHORT * 4)
                finally:
                    if state is not None:
                        state.close()
                assert await process.wait() == -signal.SIGKILL


@pytest.mark.parametrize("codec", ["native", "qemu"])
async def test_full_handoff_between_processes(sockdir: Path, codec: Codec) -> None:
    """No fault: the real peer receives, acknowledges and reads main to the end."""
    resources = Resources()
    try:
        async with peer("incoming", sockdir, "never", codec) as (process, lines):
            with anyio.fail_after(20):
                await wait_line(lines, "listening")
                async with fdchannel.Outgoing(
                    channels(str(sockdir / "cpr"), str(sockdir / "main")),
                    codec=codec,
                ) as out:
                    ack = await out.send_cpr(resources.state(codec), timeout=10)
                    assert ack.descriptors == 2
                    await out.send_main(MAIN_DATA, timeout=10)
                    assert out.state is fdchannel.handoff.State.DONE
                await wait_line(lines, "done")
                assert await process.wait() == 0
        resources.still_usable()
    finally:
        resources.close()


async def test_reject_is_heard_by_the_sender(sockdir: Path) -> None:
    resources = Resources()
    chans = channels(str(sockdir / "cpr"), str(sockdir / "main"))
    try:
        with anyio.fail_after(20):
            async with fdchannel.Incoming(chans) as inc, fdchannel.Outgoing(chans) as out:
                await inc.listen_cpr()
                errors: list[BaseException] = []

                async def send() -> None:
                    try:
                        await out.send_cpr(resources.state(), timeout=10)
                    except HandoffError as exc:
                        errors.append(exc)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(send)
                    with await inc.receive_cpr(timeout=10):
                        await inc.reject("version 7 is too new for me")
                assert len(errors) == 1
                assert "version 7 is too new for me" in str(errors[0])
                assert not (sockdir / "main").exists(), "a rejecting side never listens on main"
        resources.still_usable()
    finally:
        resources.close()
