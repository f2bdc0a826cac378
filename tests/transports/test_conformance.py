"""One conformance suite that every transport pair (connect/listen) runs.

Socket-like pairs are open at both ends at once; file-like pairs (file,
exec) are written first, then read back.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

import fdchannel
from fdchannel import Capability
from fdchannel.address import (
    Address,
    ExecAddress,
    FdAddress,
    FileAddress,
    TcpAddress,
    UnixAddress,
    VsockAddress,
)
from fdchannel.transports import Stream

pytestmark = pytest.mark.anyio

TOTAL = 64 * 1024 * 1024
CHUNK = 1024 * 1024
TIMEOUT = 30


@asynccontextmanager
async def socket_pair(
    address: Address, connect_to: Callable[[Address], Address] | None = None
) -> AsyncIterator[tuple[Stream, Stream]]:
    """A connected (outgoing, incoming) pair through a real listener."""
    async with await fdchannel.listen(address) as listener:
        incoming: list[Stream] = []

        async def accept() -> None:
            incoming.append(await listener.accept())

        target = connect_to(listener.address) if connect_to else listener.address
        async with anyio.create_task_group() as tg:
            tg.start_soon(accept)
            outgoing = await fdchannel.connect(target)
    try:
        yield outgoing, incoming[0]
    finally:
        await outgoing.aclose()
        await incoming[0].aclose()


@asynccontextmanager
async def fd_pair(_: Path) -> AsyncIterator[tuple[Stream, Stream]]:
    """Both ends of a socketpair opened as ``fd:N`` (each transport call takes a copy)."""
    left, right = socket.socketpair()
    with left, right:
        outgoing = await fdchannel.connect(FdAddress(str(left.fileno())))
        try:
            listener = await fdchannel.listen(FdAddress(str(right.fileno())))
        except BaseException:
            await outgoing.aclose()
            raise
    # The originals are closed: only the copies hold the connection now.
    async with listener:
        incoming = await listener.accept()
    try:
        yield outgoing, incoming
    finally:
        await outgoing.aclose()
        await incoming.aclose()


@dataclass(frozen=True)
class PairSpec:
    """How to open one transport's two ends."""

    name: str
    #: For socket-like pairs: opens both ends at once, given a temporary directory.
    open: Callable[[Path], AbstractAsyncContextManager[tuple[Stream, Stream]]] | None = None
    #: For file-like pairs: (writer address, reader address), used one after the other.
    sequential: Callable[[Path], tuple[Address, Address]] | None = None

    def concurrent(self, tmp: Path) -> AbstractAsyncContextManager[tuple[Stream, Stream]]:
        assert self.open is not None
        return self.open(tmp)


def listening_on(
    make: Callable[[Path], Address], connect_to: Callable[[Address], Address] | None = None
) -> Callable[[Path], AbstractAsyncContextManager[tuple[Stream, Stream]]]:
    return lambda tmp: socket_pair(make(tmp), connect_to)


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def _vsock_loopback_unavailable() -> str | None:
    from .test_vsock import _loopback_unavailable

    return _loopback_unavailable()


SOCKET_PAIRS = [
    PairSpec("unix-path", open=listening_on(lambda d: UnixAddress(str(d / "s")))),
    PairSpec(
        "unix-abstract", open=listening_on(lambda d: UnixAddress(f"fdc-{d.name}", abstract=True))
    ),
    PairSpec(
        "unix-abstract-loose",
        open=listening_on(lambda d: UnixAddress(f"fdc-{d.name}", abstract=True, tight=False)),
    ),
    PairSpec("tcp-ipv4", open=listening_on(lambda d: TcpAddress("127.0.0.1", "0"))),
    pytest.param(
        PairSpec("tcp-ipv6", open=listening_on(lambda d: TcpAddress("::1", "0", ipv6=True))),
        marks=pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback on this host"),
    ),
    PairSpec("fd-socketpair", open=fd_pair),
    pytest.param(
        PairSpec(
            "vsock-loopback",
            open=listening_on(
                lambda d: VsockAddress(str(2**32 - 1), "0"),
                connect_to=lambda a: VsockAddress("1", a.port),  # type: ignore[union-attr]
            ),
        ),
        marks=pytest.mark.skipif(
            _vsock_loopback_unavailable() is not None,
            reason=str(_vsock_loopback_unavailable()),
        ),
    ),
]

SEQUENTIAL_PAIRS = [
    PairSpec(
        "file",
        sequential=lambda d: (FileAddress(str(d / "f"), 4096), FileAddress(str(d / "f"), 4096)),
    ),
    PairSpec(
        "exec",
        sequential=lambda d: (
            ExecAddress(("/bin/sh", "-c", f"cat > {d}/f")),
            ExecAddress(("/bin/sh", "-c", f"cat {d}/f")),
        ),
    ),
]


def _ids(spec: object) -> str:
    return spec.name if isinstance(spec, PairSpec) else str(spec)


def pattern(size: int) -> bytes:
    return hashlib.shake_256(b"fdchannel").digest(size)


async def send_all(stream: Stream, data: bytes) -> None:
    for i in range(0, len(data), CHUNK):
        await stream.send(data[i : i + CHUNK])


async def receive_digest(stream: Stream) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    while True:
        try:
            chunk = await stream.receive(CHUNK)
        except anyio.EndOfStream:
            return size, digest.hexdigest()
        size += len(chunk)
        digest.update(chunk)


@pytest.mark.parametrize("spec", SOCKET_PAIRS, ids=_ids)
async def test_transfer_with_checksum(spec: PairSpec, sockdir: Path) -> None:
    data = pattern(TOTAL)
    with anyio.fail_after(TIMEOUT):
        async with spec.concurrent(sockdir) as (out, inc):
            result: list[tuple[int, str]] = []

            async def read() -> None:
                result.append(await receive_digest(inc))

            async with anyio.create_task_group() as tg:
                tg.start_soon(read)
                await send_all(out, data)
                await out.send_eof()
    assert result == [(TOTAL, hashlib.sha256(data).hexdigest())]


@pytest.mark.parametrize("spec", SEQUENTIAL_PAIRS, ids=_ids)
async def test_sequential_transfer_with_checksum(spec: PairSpec, sockdir: Path) -> None:
    assert spec.sequential is not None
    writer_address, reader_address = spec.sequential(sockdir)
    data = pattern(TOTAL)
    with anyio.fail_after(TIMEOUT):
        writer = await fdchannel.connect(writer_address)
        try:
            await send_all(writer, data)
            if Capability.HALF_CLOSE in writer.capabilities:
                await writer.send_eof()
        finally:
            await writer.aclose()
        async with await fdchannel.listen(reader_address) as listener:
            reader = await listener.accept()
            try:
                assert await receive_digest(reader) == (TOTAL, hashlib.sha256(data).hexdigest())
            finally:
                await reader.aclose()


@pytest.mark.parametrize("spec", SOCKET_PAIRS, ids=_ids)
async def test_half_close_keeps_other_direction(spec: PairSpec, sockdir: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with spec.concurrent(sockdir) as (out, inc):
            assert Capability.HALF_CLOSE in out.capabilities
            await out.send(b"ping")
            await out.send_eof()
            assert await inc.receive() == b"ping"
            with pytest.raises(anyio.EndOfStream):
                await inc.receive()
            await inc.send(b"pong")
            assert await out.receive() == b"pong"
            await inc.aclose()
            await out.wait_peer_closed()


@pytest.mark.parametrize("spec", SOCKET_PAIRS, ids=_ids)
async def test_aclose_is_idempotent(spec: PairSpec, sockdir: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with spec.concurrent(sockdir) as (out, inc):
            await out.aclose()
            await out.aclose()
            with pytest.raises(anyio.ClosedResourceError):
                await out.send(b"x")
            with pytest.raises(anyio.ClosedResourceError):
                await out.receive()
            # The peer sees EOF, then a send to the closed side breaks.
            with pytest.raises(anyio.EndOfStream):
                await inc.receive()


@pytest.mark.parametrize("spec", SEQUENTIAL_PAIRS, ids=_ids)
async def test_sequential_aclose_is_idempotent(spec: PairSpec, sockdir: Path) -> None:
    assert spec.sequential is not None
    writer_address, _ = spec.sequential(sockdir)
    with anyio.fail_after(TIMEOUT):
        writer = await fdchannel.connect(writer_address)
        await writer.send(b"x")
        await writer.aclose()
        await writer.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await writer.send(b"x")


@pytest.mark.parametrize("spec", SEQUENTIAL_PAIRS, ids=_ids)
async def test_sequential_cancel_mid_transfer_leaves_nothing(spec: PairSpec, sockdir: Path) -> None:
    """Cancelled while writing: the writer closes, its child (if any) is reaped."""
    assert spec.sequential is not None
    writer_address, _ = spec.sequential(sockdir)
    with anyio.fail_after(TIMEOUT):
        writer = await fdchannel.connect(writer_address)
        try:
            with anyio.CancelScope() as scope:
                for _ in range(16):
                    await writer.send(b"\0" * CHUNK)
                scope.cancel()
                await writer.send(b"\0" * CHUNK)  # the cancellation lands here
        finally:
            with anyio.CancelScope(shield=True):
                await writer.aclose()


@pytest.mark.parametrize("spec", SOCKET_PAIRS, ids=_ids)
async def test_cancel_mid_transfer_leaves_nothing(spec: PairSpec, sockdir: Path) -> None:
    started = anyio.Event()
    with anyio.fail_after(TIMEOUT):
        async with spec.concurrent(sockdir) as (out, inc):

            async def write_forever() -> None:
                while True:
                    await out.send(b"\0" * CHUNK)

            async def read_forever() -> None:
                while True:
                    await inc.receive(CHUNK)
                    started.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(write_forever)
                tg.start_soon(read_forever)
                await started.wait()
                tg.cancel_scope.cancel()


@pytest.mark.parametrize("spec", SOCKET_PAIRS, ids=_ids)
async def test_peer_close_is_seen_without_polling(spec: PairSpec, sockdir: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with spec.concurrent(sockdir) as (out, inc):
            await inc.send(b"early")
            await inc.aclose()
            await out.wait_peer_closed()
            # Bytes that came before the close are still there to read.
            assert await out.receive() == b"early"
            with pytest.raises(anyio.EndOfStream):
                await out.receive()


async def test_cpr_channel_refused_without_fd_passing() -> None:
    channel = fdchannel.parse_channel(
        '{"channel-type": "cpr", "addr": {"transport": "socket", "type": "inet",'
        ' "host": "127.0.0.1", "port": "0"}}'
    )
    with pytest.raises(fdchannel.CapabilityError, match=r"inet|tcp"):
        await fdchannel.listen(channel)
    with pytest.raises(fdchannel.CapabilityError, match=r"inet|tcp"):
        await fdchannel.connect(channel)


def test_child_processes_are_gone() -> None:
    # Sequential pairs run real commands; none may outlive the test that ran it.
    children = [p for p in os.listdir("/proc") if p.isdigit() and _parent_of(int(p)) == os.getpid()]
    assert children == []


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None
