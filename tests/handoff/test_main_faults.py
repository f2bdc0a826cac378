"""Faults on the main channel inside a real handoff.

The old process's state is acknowledged by a real Incoming on a unix cpr
channel, then ``Outgoing.send_main`` meets a main channel that cannot take
the stream: a device that is full, a pipe whose reader left, a command
that stops reading or exits early, or never reads at all.  Each must give
HandoffError naming the cause (HandoffTimeout for a command that never
reads) within the deadline, leave the handoff FAILED, kill and reap the
command, and leave the old process owning everything.

cpr-transfer refuses a ``file:`` main channel (as QEMU does: the main
channel must be a stream), so a full device and a FIFO reach the main
channel as ``fd:`` descriptors, which the same file and pipe streams serve.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

import fdchannel
from fdchannel import ChannelError, FdState, HandoffError, HandoffTimeout, NamedFd
from fdchannel.handoff import State
from fdchannel.transports.exec import ExecStream

from .inprocess import handed_over
from .peer import MAIN_DATA, channels
from .test_faults import Resources

pytestmark = pytest.mark.anyio
SHORT = 1.0  # complete's deadline


def cpr_channel(sockdir: Path) -> str:
    return f"cpr,addr.transport=socket,addr.type=unix,addr.path={sockdir / 'cpr'}"


async def full_device(stack: AsyncExitStack, sockdir: Path) -> str:
    """/dev/full: every write answers ENOSPC."""
    fd = os.open("/dev/full", os.O_WRONLY | os.O_CLOEXEC)
    stack.callback(os.close, fd)
    return f"fd:{fd}"


async def fifo_reader_leaves(stack: AsyncExitStack, sockdir: Path) -> str:
    """A FIFO whose reader, a real process, reads 10 bytes and exits: EPIPE."""
    path = sockdir / "fifo"
    os.mkfifo(path)
    # Opening a FIFO's read end with O_NONBLOCK never waits, and once it is
    # open, opening the write end with O_NONBLOCK succeeds (ENXIO without a
    # reader): both ends exist before the reader runs, and nothing blocks.
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        writer = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        stack.callback(os.close, writer)
        os.set_blocking(reader, True)  # head must wait for bytes, not see EAGAIN
        head = await anyio.open_process(
            ["head", "-c", "10"], stdin=reader, stdout=subprocess.DEVNULL, stderr=None
        )
    finally:
        os.close(reader)  # head holds the only read end now

    async def reap() -> None:
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(ProcessLookupError):
                head.kill()  # only if the test ended before head did
            await head.aclose()

    stack.push_async_callback(reap)
    return f"fd:{writer}"


def command(text: str) -> Callable[[AsyncExitStack, Path], Awaitable[str]]:
    async def build(stack: AsyncExitStack, sockdir: Path) -> str:
        return f"exec:{text}"

    return build


@dataclass(frozen=True)
class MainFault:
    """One broken main channel and what ``complete`` must say about it."""

    name: str
    main: Callable[[AsyncExitStack, Path], Awaitable[str]]
    message: str
    error: type[HandoffError] = HandoffError


MAIN_FAULTS = [
    MainFault("enospc", full_device, r"No space left on device"),
    MainFault("fifo-reader-exits", fifo_reader_leaves, r"no reader is left"),
    # MAIN_DATA (4 MiB) is more than the command's pipe holds (1 MiB at most).
    MainFault("exec-stops-reading", command("head -c 10 >/dev/null"), r"stopped reading"),
    MainFault("exec-exits-3-unread", command("exit 3"), r"exited with status 3"),
    MainFault("exec-exits-0-unread", command("true"), r"stopped reading"),
    MainFault("exec-reads-all-exits-3", command("cat >/dev/null; exit 3"), r"status 3"),
    MainFault("exec-killed", command("kill -9 $$"), r"killed by signal 9"),
    # Alive: its stdin closed (EPIPE, no exit status to wait for), or never read.
    MainFault("exec-closes-stdin-lives", command("exec 0<&-; exec sleep 30"), r"stopped reading"),
    MainFault(
        "exec-never-reads", command("exec sleep 30"), r"did not finish within", HandoffTimeout
    ),
]


def reaped(pid: int) -> bool:
    """Whether ``pid`` is no child of ours any more (neither running nor a zombie)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


@asynccontextmanager
async def acknowledged(
    sockdir: Path, main: str, resources: Resources
) -> AsyncIterator[tuple[fdchannel.Outgoing, fdchannel.Stream]]:
    """An Outgoing whose state a real Incoming acknowledged, its main channel connected."""
    # The new process listens on a main channel of its own: it only
    # acknowledges the state and never reads the old one's main.
    incoming = channels(str(sockdir / "cpr"), str(sockdir / "main"))
    outgoing = [main, cpr_channel(sockdir)]
    async with handed_over(incoming, outgoing, resources.state()) as (_, out):
        yield out, await out.connect_main(timeout=5)


@pytest.mark.parametrize("fault", MAIN_FAULTS, ids=[f.name for f in MAIN_FAULTS])
async def test_main_channel_fault(sockdir: Path, fault: MainFault) -> None:
    resources = Resources()
    try:
        with anyio.fail_after(15):
            async with AsyncExitStack() as stack:
                main = await fault.main(stack, sockdir)
                async with acknowledged(sockdir, main, resources) as (out, stream):
                    began = time.monotonic()
                    with pytest.raises(HandoffError, match=fault.message) as info:
                        await out.send_main(MAIN_DATA, timeout=SHORT)
                    assert time.monotonic() - began < SHORT + 1
                    assert type(info.value) is fault.error
                    assert out.state is State.FAILED
                    with pytest.raises(anyio.ClosedResourceError):
                        await stream.send(b"x")  # closed by complete
                    if isinstance(stream, ExecStream):
                        assert stream.returncode is not None
                        assert reaped(stream.pid)
        resources.still_usable()
    finally:
        resources.close()


async def test_a_main_command_that_reads_everything_completes(sockdir: Path) -> None:
    resources = Resources()
    try:
        with anyio.fail_after(15):
            main = "exec:cat >/dev/null"
            async with acknowledged(sockdir, main, resources) as (out, stream):
                await out.send_main(MAIN_DATA, timeout=10)
                assert out.state is State.DONE
                assert isinstance(stream, ExecStream)
                assert stream.returncode == 0
                assert reaped(stream.pid)
        resources.still_usable()
    finally:
        resources.close()


async def test_abort_kills_a_main_command_at_once(sockdir: Path) -> None:
    """Giving up does not wait out the command's grace period, nor raise its fate."""
    resources = Resources()
    try:
        with anyio.fail_after(15):
            async with acknowledged(sockdir, "exec:exec sleep 30", resources) as (out, stream):
                began = time.monotonic()
                await out.abort()
                assert time.monotonic() - began < 1
                assert out.state is State.ABORTED
                assert isinstance(stream, ExecStream)
                assert stream.returncode == -signal.SIGKILL
                assert reaped(stream.pid)
        resources.still_usable()
    finally:
        resources.close()


def test_a_file_main_is_refused_before_anything_is_touched(sockdir: Path) -> None:
    with pytest.raises(ChannelError, match="needs a stream"):
        fdchannel.Outgoing(["file:/dev/full", cpr_channel(sockdir)])
    assert not (sockdir / "cpr").exists()


async def test_incoming_gives_up_on_a_main_command_that_stalls(sockdir: Path) -> None:
    """The new process's side: a command that announces 100 bytes, sends 4 and
    stalls fails at the deadline, and is killed rather than given its grace period."""
    main = r"exec:printf '\000\000\000\000\000\000\000\144abcd'; exec sleep 30"
    chans = [main, cpr_channel(sockdir)]
    memfd = os.memfd_create("ram0", os.MFD_CLOEXEC)
    try:
        with anyio.fail_after(15):
            async with handed_over(chans, chans, FdState([NamedFd("ram0", 0, memfd)])) as (inc, _):
                stream = await inc.accept_main(timeout=5)
                assert isinstance(stream, ExecStream)
                began = time.monotonic()
                with pytest.raises(HandoffTimeout, match="reading the main channel"):
                    await inc.receive_main(timeout=SHORT)
                assert time.monotonic() - began < SHORT + 1
                assert inc.state is State.FAILED
                assert stream.returncode == -signal.SIGKILL
                assert reaped(stream.pid)
    finally:
        os.close(memfd)
