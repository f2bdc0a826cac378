"""Debian's QEMU as the peer: migration streams into and out of fdchannel, and QMP getfd.

A paused guest migrates to our incoming side over unix, tcp and exec; the
bytes we captured migrate into a second QEMU through our outgoing side over
unix, tcp, fd, file and exec; and QMP ``getfd`` takes a socket we pass by
SCM_RIGHTS.  A page of random bytes that a loader device writes into the
source's RAM must show up in the destination's RAM: the stream arrived whole.
"""

from __future__ import annotations

import os
import shlex
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest

import fdchannel
from fdchannel import Listener, Stream, TcpAddress, UnixAddress

from .qemu import (
    MIGRATION_MAGIC,
    MIGRATION_VERSION,
    QEMU_BINARY,
    Qemu,
    QmpClient,
    QmpError,
    migration_header,
    start_qemu,
)

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.interop,
    pytest.mark.skipif(
        QEMU_BINARY is None,
        reason="qemu-system-x86_64 is not installed (Debian package qemu-system-x86)",
    ),
]

#: Seconds a whole test may take; a QEMU starts in well under one.
TEST_TIMEOUT = 30
#: Where the loader device puts the pattern in guest RAM, and its size.
PATTERN_ADDR = 0x200000
PATTERN_SIZE = 4096
#: A 64 MiB paused guest migrates in about 0.5 MB; anything far larger is a bug.
MAX_STREAM = 64 * 1024 * 1024


async def read_to_eof(stream: Stream) -> bytes:
    """Everything the stream delivers until EOF."""
    data = bytearray()
    while True:
        try:
            data += await stream.receive(1024 * 1024)
        except anyio.EndOfStream:
            return bytes(data)
        assert len(data) <= MAX_STREAM, "migration stream is implausibly large"


def write_pattern(workdir: Path) -> bytes:
    """A file of random bytes for the source's loader device; returns them."""
    pattern = os.urandom(PATTERN_SIZE)
    (workdir / "pattern").write_bytes(pattern)
    return pattern


def source_args(workdir: Path) -> tuple[str, ...]:
    """A loader device that writes the pattern into the source's RAM at reset."""
    loader = f"loader,addr={PATTERN_ADDR:#x},file={workdir / 'pattern'},force-raw=on"
    return ("-device", loader)


async def guest_memory(vm: Qemu, workdir: Path) -> bytes:
    """The pattern's page of guest RAM, as QEMU's ``pmemsave`` writes it out."""
    dump = workdir / f"{vm.name}.mem"
    await vm.qmp.execute(
        "pmemsave", {"val": PATTERN_ADDR, "size": PATTERN_SIZE, "filename": str(dump)}
    )
    return await anyio.Path(dump).read_bytes()


def check_stream(data: bytes) -> None:
    """A migration stream starts with "QEVM" and format version 3."""
    magic, version = migration_header(data)
    assert magic == MIGRATION_MAGIC, f"stream starts with {data[:4]!r}, not QEVM"
    assert version == MIGRATION_VERSION


async def check_source_done(qmp: QmpClient) -> None:
    """The source says the migration completed and the guest is left paused.

    Called after the stream's EOF: QEMU closes the channel in its cleanup,
    after it has moved to postmigrate (the completed event comes earlier).
    """
    info = await qmp.wait_migration()
    assert info["status"] == "completed"
    status = await qmp.execute("query-status")
    assert status["status"] == "postmigrate" and not status["running"]


# --------------------------------------------------------------------------
# QEMU's outgoing side -> our incoming side.

#: Opens our listener in a directory; returns it and the URI QEMU migrates to.
OpenIncoming = Callable[[Path], Awaitable[tuple[Listener, str]]]


async def incoming_unix(workdir: Path) -> tuple[Listener, str]:
    listener = await fdchannel.listen(f"unix:{workdir / 'mig.sock'}")
    assert isinstance(listener.address, UnixAddress)
    return listener, f"unix:{listener.address.path}"


async def incoming_tcp(workdir: Path) -> tuple[Listener, str]:
    listener = await fdchannel.listen("tcp:127.0.0.1:0")
    assert isinstance(listener.address, TcpAddress)
    port = int(listener.address.port)
    assert port != 0, "the listener must report the port the kernel chose"
    return listener, f"tcp:127.0.0.1:{port}"


async def incoming_exec(workdir: Path) -> tuple[Listener, str]:
    # QEMU's command writes into a FIFO that our command reads: the stream
    # passes through two exec channels while QEMU is still producing it.
    fifo = shlex.quote(str(workdir / "mig.fifo"))
    os.mkfifo(workdir / "mig.fifo", 0o600)
    # "exec" makes the shell become cat: closing the stream kills the shell,
    # and a cat forked by it would outlive the test blocked on the FIFO.
    listener = await fdchannel.listen(f"exec:exec cat {fifo}")
    return listener, f"exec:cat > {fifo}"


INCOMING: list[OpenIncoming] = [incoming_unix, incoming_tcp, incoming_exec]


async def capture(src: Qemu, open_incoming: OpenIncoming, workdir: Path) -> bytes:
    """Migrate ``src`` to our incoming side and return the stream it sent."""
    await src.qmp.enable_migration_events()
    listener, uri = await open_incoming(workdir)
    async with listener:
        await src.qmp.execute("migrate", {"uri": uri})
        async with await listener.accept() as stream:
            data = await read_to_eof(stream)
    await check_source_done(src.qmp)
    return data


@pytest.mark.parametrize(
    "open_incoming", INCOMING, ids=[f.__name__.removeprefix("incoming_") for f in INCOMING]
)
async def test_qemu_migrates_to_us(open_incoming: OpenIncoming, sockdir: Path) -> None:
    write_pattern(sockdir)
    with anyio.fail_after(TEST_TIMEOUT):
        async with start_qemu(sockdir, "src", *source_args(sockdir)) as src:
            assert (await src.qmp.execute("query-status"))["status"] == "prelaunch"
            data = await capture(src, open_incoming, sockdir)
    check_stream(data)


# --------------------------------------------------------------------------
# Our outgoing side -> QEMU's incoming side.

#: Starts the destination's incoming migration and sends ``data`` to it.
Replay = Callable[[QmpClient, Path, bytes], Awaitable[None]]


async def send_and_wait_close(stream: Stream, data: bytes) -> None:
    """Send, half-close, and wait for QEMU to close its end once it has loaded all."""
    async with stream:
        await stream.send(data)
        await stream.send_eof()
        await stream.wait_peer_closed()


async def replay_unix(qmp: QmpClient, workdir: Path, data: bytes) -> None:
    path = workdir / "in.sock"
    await qmp.execute("migrate-incoming", {"uri": f"unix:{path}"})
    await send_and_wait_close(await fdchannel.connect(f"unix:{path}"), data)


async def replay_tcp(qmp: QmpClient, workdir: Path, data: bytes) -> None:
    await qmp.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
    # QEMU reports the port it was given by the kernel.
    info = await qmp.execute("query-migrate")
    (address,) = info["socket-address"]
    await send_and_wait_close(await fdchannel.connect(f"tcp:127.0.0.1:{address['port']}"), data)


async def replay_fd(qmp: QmpClient, workdir: Path, data: bytes) -> None:
    ours, theirs = socket.socketpair()
    try:
        try:
            await qmp.execute("getfd", {"fdname": "incoming"}, fds=[theirs.fileno()])
        finally:
            theirs.close()  # QEMU holds its own copy now
        await qmp.execute("migrate-incoming", {"uri": "fd:incoming"})
        stream = await fdchannel.connect(f"fd:{ours.fileno()}")
    finally:
        ours.close()  # the stream works on a duplicate
    await send_and_wait_close(stream, data)


async def replay_file(qmp: QmpClient, workdir: Path, data: bytes) -> None:
    # QEMU 7.2 has no file: migration (8.2 added it); the documented way to
    # load a saved stream is a command that prints it.
    path = workdir / "saved.mig"
    async with await fdchannel.connect(f"file:{path}") as stream:
        await stream.send(data)
    await qmp.execute("migrate-incoming", {"uri": f"exec:cat {shlex.quote(str(path))}"})


async def replay_exec(qmp: QmpClient, workdir: Path, data: bytes) -> None:
    # Compressed on the way, QEMU's documented exec: use, through a FIFO so
    # that both commands run at once ("exec": see incoming_exec).
    fifo = shlex.quote(str(workdir / "in.fifo"))
    os.mkfifo(workdir / "in.fifo", 0o600)
    async with await fdchannel.connect(f"exec:exec gzip -c > {fifo}") as stream:
        await qmp.execute("migrate-incoming", {"uri": f"exec:gzip -dc < {fifo}"})
        await stream.send(data)
        await stream.send_eof()
        await stream.wait_peer_closed()  # gzip exited with status 0


REPLAY: list[Replay] = [replay_unix, replay_tcp, replay_fd, replay_file, replay_exec]


@pytest.mark.parametrize("replay", REPLAY, ids=[f.__name__.removeprefix("replay_") for f in REPLAY])
async def test_we_migrate_to_qemu(replay: Replay, sockdir: Path) -> None:
    pattern = write_pattern(sockdir)
    with anyio.fail_after(TEST_TIMEOUT):
        async with start_qemu(sockdir, "src", *source_args(sockdir)) as src:
            assert await guest_memory(src, sockdir) == pattern
            data = await capture(src, incoming_unix, sockdir)
        check_stream(data)
        async with start_qemu(sockdir, "dst", "-incoming", "defer") as dst:
            assert (await dst.qmp.execute("query-status"))["status"] == "inmigrate"
            assert await guest_memory(dst, sockdir) != pattern
            await dst.qmp.enable_migration_events()
            await replay(dst.qmp, sockdir, data)
            info = await dst.qmp.wait_migration()
            assert info["status"] == "completed"
            # QEMU 7.2 restores the source's run state, and the source never ran.
            status = await dst.qmp.execute("query-status")
            assert status["status"] == "prelaunch" and not status["running"]
            assert await guest_memory(dst, sockdir) == pattern


# --------------------------------------------------------------------------
# QMP getfd: a descriptor passed by SCM_RIGHTS on our stream.


async def test_getfd_migrates_to_passed_socket(sockdir: Path) -> None:
    write_pattern(sockdir)
    with anyio.fail_after(TEST_TIMEOUT):
        async with start_qemu(sockdir, "src", *source_args(sockdir)) as src:
            qmp = src.qmp
            assert fdchannel.Capability.FD_PASSING in qmp.stream.capabilities
            # Without a descriptor attached QEMU refuses: the one below really
            # travels by SCM_RIGHTS.
            with pytest.raises(QmpError, match="SCM_RIGHTS"):
                await qmp.execute("getfd", {"fdname": "mig"})
            await qmp.enable_migration_events()
            ours, theirs = socket.socketpair()
            try:
                try:
                    await qmp.execute("getfd", {"fdname": "mig"}, fds=[theirs.fileno()])
                finally:
                    theirs.close()
                stream = await fdchannel.connect(f"fd:{ours.fileno()}")
            finally:
                ours.close()
            async with stream:
                await qmp.execute("migrate", {"uri": "fd:mig"})
                # EOF comes when QEMU closes the descriptor we gave it.
                data = await read_to_eof(stream)
            await check_source_done(qmp)
    check_stream(data)
