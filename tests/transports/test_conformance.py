"""One conformance suite that every transport pair (connect/listen) runs.

Socket-like pairs are open at both ends at once, in either layer: async
ends (``fdchannel.connect``/``listen``), blocking ends
(``fdchannel.blocking``, each call in a worker thread under its own
timeout) and the mixed pairs, one case body for all of them through
``ends.End``.  File-like pairs (file, exec; async only) are written first,
then read back.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

import fdchannel
from fdchannel import Capability, CapabilityError
from fdchannel.address import (
    Address,
    ExecAddress,
    FdAddress,
    FileAddress,
    TcpAddress,
    UnixAddress,
    VsockAddress,
)
from fdchannel.channel import Channel, ChannelType
from fdchannel.fds import SCM_MAX_FD
from fdchannel.transports import Stream

from .ends import ASYNC, BLOCKING, Broken, Closed, End, Layer

pytestmark = pytest.mark.anyio

TOTAL = 64 * 1024 * 1024
#: Pairs with a blocking end move a quarter: what is checked is the layer's
#: loop of short writes, waits and EOF, and 16 MiB still overruns a unix
#: pair's buffers (0.2 to 7 MiB) many times; 64 MiB would make the 45 runs
#: with a blocking end (15 pairs on three event loops) about 17 s, not 4.
BLOCKING_TOTAL = 16 * 1024 * 1024
CHUNK = 1024 * 1024
TIMEOUT = 30
#: How long a call meant to be given up on waits first (cancelled, or timed out).
SHORT = 0.1
#: More descriptors than one message carries.
FD_COUNT = SCM_MAX_FD + 47

# --- opening pairs ------------------------------------------------------------------------------


@asynccontextmanager
async def opened(outgoing: End, incoming: End) -> AsyncIterator[tuple[End, End]]:
    try:
        yield outgoing, incoming
    finally:
        await outgoing.close()
        await incoming.close()


@asynccontextmanager
async def socket_pair(
    address: Address,
    connecting: Layer,
    listening: Layer,
    connect_to: Callable[[Address], Address] | None = None,
) -> AsyncIterator[tuple[End, End]]:
    """A connected (outgoing, incoming) pair through a real listener."""
    listener = await listening.listen(address)
    outgoing: list[End] = []
    incoming: list[End] = []

    async def accept() -> None:
        incoming.append(await listener.accept())

    try:
        target = connect_to(listener.address) if connect_to else listener.address
        # If the connect fails, a blocking accept (no cancelling a thread) comes
        # back at its own timeout.
        async with anyio.create_task_group() as tg:
            tg.start_soon(accept)
            outgoing.append(await connecting.connect(target))
    except BaseException:
        for end in outgoing + incoming:
            await end.close()
        raise
    finally:
        await listener.close()
    async with opened(outgoing[0], incoming[0]) as pair:
        yield pair


@asynccontextmanager
async def fd_pair(connecting: Layer, listening: Layer) -> AsyncIterator[tuple[End, End]]:
    """Both ends of a socketpair opened as ``fd:N`` (each transport call takes a copy)."""
    left, right = socket.socketpair()
    with left, right:
        outgoing = await connecting.connect(FdAddress(str(left.fileno())))
        try:
            listener = await listening.listen(FdAddress(str(right.fileno())))
        except BaseException:
            await outgoing.close()
            raise
    # The originals are closed: only the copies hold the connection now.
    try:
        incoming = await listener.accept()
    except BaseException:
        await outgoing.close()
        raise
    finally:
        await listener.close()
    async with opened(outgoing, incoming) as pair:
        yield pair


@dataclass(frozen=True)
class Transport:
    """How to open a socket-like transport's two ends, in any pair of layers."""

    name: str
    open: Callable[[Path, Layer, Layer], AbstractAsyncContextManager[tuple[End, End]]]
    #: Whether fdchannel.blocking opens it too.
    blocking: bool = True
    marks: tuple[pytest.MarkDecorator, ...] = ()


def listening_on(
    make: Callable[[Path], Address], connect_to: Callable[[Address], Address] | None = None
) -> Callable[[Path, Layer, Layer], AbstractAsyncContextManager[tuple[End, End]]]:
    return lambda tmp, out, inc: socket_pair(make(tmp), out, inc, connect_to)


@dataclass(frozen=True)
class PairSpec:
    """One row of the table: a transport, the layer that connects and the one that listens."""

    transport: Transport
    connecting: Layer
    listening: Layer

    @property
    def name(self) -> str:
        layers = (self.connecting.name, self.listening.name)
        if layers == ("async", "async"):
            return self.transport.name  # the names the async pairs always had
        if layers == ("blocking", "blocking"):
            return f"{self.transport.name}-blocking"
        return f"{self.transport.name}-{layers[0]}-to-{layers[1]}"

    @property
    def total(self) -> int:
        """Bytes the transfer case moves."""
        return TOTAL if BLOCKING not in (self.connecting, self.listening) else BLOCKING_TOTAL

    def concurrent(self, tmp: Path) -> AbstractAsyncContextManager[tuple[End, End]]:
        return self.transport.open(tmp, self.connecting, self.listening)


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


_NO_VSOCK = _vsock_loopback_unavailable()

TRANSPORTS = [
    Transport("unix-path", listening_on(lambda d: UnixAddress(str(d / "s")))),
    Transport("unix-abstract", listening_on(lambda d: UnixAddress(f"fdc-{d.name}", abstract=True))),
    Transport(
        "unix-abstract-loose",
        listening_on(lambda d: UnixAddress(f"fdc-{d.name}", abstract=True, tight=False)),
        blocking=False,  # the same socket as unix-abstract but for the name's length
    ),
    Transport("tcp-ipv4", listening_on(lambda d: TcpAddress("127.0.0.1", "0"))),
    Transport(
        "tcp-ipv6",
        listening_on(lambda d: TcpAddress("::1", "0", ipv6=True)),
        marks=(pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback on this host"),),
    ),
    Transport("fd-socketpair", lambda d, out, inc: fd_pair(out, inc)),
    Transport(
        "vsock-loopback",
        listening_on(
            lambda d: VsockAddress(str(2**32 - 1), "0"),
            connect_to=lambda a: VsockAddress("1", a.port),  # type: ignore[union-attr]
        ),
        blocking=False,  # fdchannel.blocking has no vsock
        marks=(pytest.mark.skipif(_NO_VSOCK is not None, reason=str(_NO_VSOCK)),),
    ),
]

LAYER_PAIRS = [(ASYNC, ASYNC), (BLOCKING, BLOCKING), (ASYNC, BLOCKING), (BLOCKING, ASYNC)]


def _socket_pairs() -> list[Any]:
    rows = []
    for connecting, listening in LAYER_PAIRS:
        for transport in TRANSPORTS:
            if BLOCKING in (connecting, listening) and not transport.blocking:
                continue
            spec = PairSpec(transport, connecting, listening)
            rows.append(pytest.param(spec, marks=transport.marks, id=spec.name))
    return rows


SOCKET_PAIRS = _socket_pairs()


@dataclass(frozen=True)
class SequentialSpec:
    """A file-like transport: (writer address, reader address), used one after the other."""

    name: str
    addresses: Callable[[Path], tuple[Address, Address]]


SEQUENTIAL_PAIRS = [
    pytest.param(
        SequentialSpec(
            "file", lambda d: (FileAddress(str(d / "f"), 4096), FileAddress(str(d / "f"), 4096))
        ),
        id="file",
    ),
    pytest.param(
        SequentialSpec(
            "exec",
            lambda d: (
                ExecAddress(("/bin/sh", "-c", f"cat > {d}/f")),
                ExecAddress(("/bin/sh", "-c", f"cat {d}/f")),
            ),
        ),
        id="exec",
    ),
]


def pattern(size: int) -> bytes:
    return hashlib.shake_256(b"fdchannel").digest(size)


# --- socket-like pairs, either layer ------------------------------------------------------------


async def send_all(stream: End, data: bytes) -> None:
    for i in range(0, len(data), CHUNK):
        await stream.send(data[i : i + CHUNK])


async def receive_digest(stream: End) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    while chunk := await stream.receive(CHUNK):
        size += len(chunk)
        digest.update(chunk)
    return size, digest.hexdigest()


@pytest.mark.parametrize("spec", SOCKET_PAIRS)
async def test_transfer_with_checksum(spec: PairSpec, sockdir: Path) -> None:
    data = pattern(spec.total)
    with anyio.fail_after(TIMEOUT):
        async with spec.concurrent(sockdir) as (out, inc):
            result: list[tuple[int, str]] = []

            async def read() -> None:
                result.append(await receive_digest(inc))

            async with anyio.create_task_group() as tg:
                tg.start_soon(read)
                await send_all(out, data)
                await out.send_eof()
    assert result == [(spec.total, hashlib.sha256(data).hexdigest())]


@pytest.mark.parametrize("spec", SOCKET_PAIRS)
async def test_half_close_keeps_other_direction(spec: PairSpec, sockdir: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with spec.concurrent(sockdir) as (out, inc):
            assert Capability.HALF_CLOSE in out.capabilities
            assert Capability.HALF_CLOSE in inc.capabilities
            await out.send(b"ping")
            await out.send_eof()
            await out.send_eof()  # a second shutdown(2) changes nothing
            with pytest.raises(Broken):  # EPIPE: our own side is shut
                await out.send(b"after the end")
            assert await inc.receive(CHUNK) == b"ping"
            assert not inc.at_eof
            assert await inc.receive(CHUNK) == b""
            assert inc.at_eof
            assert await inc.receive(CHUNK) == b""  # the end stays the end
            await inc.send(b"pong")
            assert await out.receive(CHUNK) == b"pong"
            await inc.close()
            await out.wait_peer_closed()
            assert out.at_eof


async def send_until_broken(stream: End) -> None:
    """Send until the peer's close breaks the stream (a few sends at most)."""
    for _ in range(100):
        await stream.send(b"x")


@pytest.mark.parametrize("spec", SOCKET_PAIRS)
async def test_close_is_idempotent(spec: PairSpec, sockdir: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with spec.concurrent(sockdir) as (out, inc):
            await out.close()
            await out.close()
            with pytest.raises(Closed):
                await out.send(b"x")
            with pytest.raises(Closed):
                await out.receive(CHUNK)
            with pytest.raises(Closed):
                await out.send_eof()
            with pytest.raises(Closed):
                await out.wait_peer_closed()
            # The peer sees EOF, then a send to the closed side breaks: at once
            # on unix, after the reset the first byte brings back on TCP.
            assert await inc.receive(CHUNK) == b""
            with pytest.raises(Broken):
                await send_until_broken(inc)


@pytest.mark.parametrize("spec", SOCKET_PAIRS)
async def test_peer_close_is_seen_without_polling(spec: PairSpec, sockdir: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with spec.concurrent(sockdir) as (out, inc):
            await inc.send(b"early")
            await inc.close()
            await out.wait_peer_closed()
            # Bytes that came before the close are still there to read.
            assert not out.at_eof
            assert await out.receive(CHUNK) == b"early"
            assert await out.receive(CHUNK) == b""


@contextmanager
def memfds(count: int) -> Iterator[list[int]]:
    fds = [os.memfd_create(f"conformance-{i}", os.MFD_CLOEXEC) for i in range(count)]
    try:
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


@pytest.mark.parametrize("spec", SOCKET_PAIRS)
async def test_descriptors_pass_where_the_pair_can(spec: PairSpec, sockdir: Path) -> None:
    """Descriptors travel in order, each with its byte, over pairs with FD_PASSING; the
    others refuse them at both ends."""
    with anyio.fail_after(TIMEOUT), memfds(FD_COUNT) as fds:
        async with spec.concurrent(sockdir) as (out, inc):
            assert (Capability.FD_PASSING in out.capabilities) == (
                Capability.FD_PASSING in inc.capabilities
            )
            if Capability.FD_PASSING not in out.capabilities:
                with pytest.raises(CapabilityError):
                    await out.send_fds(b"x", fds[:1])
                with pytest.raises(CapabilityError):
                    await out.send_fds_many([(b"x", fds[:1])])
                with pytest.raises(CapabilityError):
                    await inc.receive_fds(1, 1)
                return
            messages = [(b"c", fds[:1]), (b"no descriptors", [])]
            expected = b"ab" + b"".join(data for data, _ in messages)

            async def send() -> None:
                await out.send_fds(b"ab", fds)  # two messages: 253, then 47
                await out.send_fds_many(messages)

            data = b""
            received: list[int] = []
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(send)
                    while len(data) < len(expected):
                        more, arrived = await inc.receive_fds(CHUNK, SCM_MAX_FD)
                        assert more, "the stream ended early"
                        data, received = data + more, received + arrived
                await out.send_eof()
                assert await inc.receive_fds(CHUNK, SCM_MAX_FD) == (b"", [])
                assert data == expected
                inodes = [os.fstat(fd).st_ino for fd in received]
                assert inodes == [os.fstat(fd).st_ino for fd in fds + fds[:1]]
                assert not any(os.get_inheritable(fd) for fd in received)
            finally:
                for fd in received:
                    os.close(fd)


def _prefix_of_repeated(received: bytes, chunk: bytes) -> bool:
    return all(
        received[i : i + len(chunk)] == chunk[: len(received) - i]
        for i in range(0, len(received), len(chunk))
    )


@pytest.mark.parametrize("spec", SOCKET_PAIRS)
async def test_cancel_mid_transfer_leaves_nothing(spec: PairSpec, sockdir: Path) -> None:
    """A receive and a send given up on while they wait mid-transfer (cancelled in
    async code, a TransportTimeout in blocking code) lose nothing sent before
    them, and closing leaves nothing open (the descriptor check)."""
    chunk = pattern(CHUNK)
    started = 4
    with anyio.fail_after(TIMEOUT):
        async with spec.concurrent(sockdir) as (out, inc):
            received = bytearray()

            async def send_started() -> None:
                for _ in range(started):
                    await out.send(chunk)

            async with anyio.create_task_group() as tg:
                tg.start_soon(send_started)
                while len(received) < started * CHUNK:
                    received += await inc.receive(CHUNK)
            # Nothing more is sent yet: the receive waits, and is given up on.
            assert await inc.receive_within(CHUNK, SHORT) is None
            # Nobody reads: the buffers fill (TCP's grow to some MiB), and a
            # send waits, and is given up on, most likely part-way through.
            sent = started * CHUNK
            for _ in range(128):
                if not await out.send_within(chunk, SHORT):
                    break
                sent += CHUNK
            else:
                pytest.fail("128 MiB went out with nobody reading")
            await out.close()
            while more := await inc.receive(CHUNK):
                received += more
            # Every whole send arrived, and at most part of the one given up on.
            assert sent <= len(received) < sent + CHUNK
            assert _prefix_of_repeated(bytes(received), chunk)


@pytest.mark.parametrize("layer", [ASYNC, BLOCKING], ids=lambda layer: layer.name)
@pytest.mark.parametrize("target", ["tcp", "fd-tcp-connected", "fd-tcp-listening"])
async def test_cpr_channel_refused_without_fd_passing(layer: Layer, target: str) -> None:
    """A cpr channel must pass descriptors: TCP is refused by name, and an fd: that
    turns out to be a TCP socket once opened, with nothing left open."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            connected, _ = server.accept()
            with connected:
                addresses: dict[str, Address] = {
                    "tcp": TcpAddress("127.0.0.1", str(port)),
                    "fd-tcp-connected": FdAddress(str(client.fileno())),
                    "fd-tcp-listening": FdAddress(str(server.fileno())),
                }
                channel = Channel(ChannelType.CPR, addresses[target])
                with anyio.fail_after(TIMEOUT):
                    with pytest.raises(CapabilityError, match="cpr channel must pass"):
                        await layer.listen(channel)
                    if target != "fd-tcp-listening":  # nothing to connect to from a listener
                        with pytest.raises(CapabilityError, match="cpr channel must pass"):
                            await layer.connect(channel)


async def test_cpr_channel_text_refused_without_fd_passing() -> None:
    channel = fdchannel.parse_channel(
        '{"channel-type": "cpr", "addr": {"transport": "socket", "type": "inet",'
        ' "host": "127.0.0.1", "port": "0"}}'
    )
    with pytest.raises(fdchannel.CapabilityError, match=r"inet|tcp"):
        await fdchannel.listen(channel)
    with pytest.raises(fdchannel.CapabilityError, match=r"inet|tcp"):
        await fdchannel.connect(channel)


# --- file-like pairs (async only) ---------------------------------------------------------------


async def send_chunks(stream: Stream, data: bytes) -> None:
    for i in range(0, len(data), CHUNK):
        await stream.send(data[i : i + CHUNK])


async def receive_stream_digest(stream: Stream) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    while True:
        try:
            chunk = await stream.receive(CHUNK)
        except anyio.EndOfStream:
            return size, digest.hexdigest()
        size += len(chunk)
        digest.update(chunk)


@pytest.mark.parametrize("spec", SEQUENTIAL_PAIRS)
async def test_sequential_transfer_with_checksum(spec: SequentialSpec, sockdir: Path) -> None:
    writer_address, reader_address = spec.addresses(sockdir)
    data = pattern(TOTAL)
    with anyio.fail_after(TIMEOUT):
        writer = await fdchannel.connect(writer_address)
        try:
            await send_chunks(writer, data)
            if Capability.HALF_CLOSE in writer.capabilities:
                await writer.send_eof()
        finally:
            await writer.aclose()
        async with await fdchannel.listen(reader_address) as listener:
            reader = await listener.accept()
            try:
                assert await receive_stream_digest(reader) == (
                    TOTAL,
                    hashlib.sha256(data).hexdigest(),
                )
            finally:
                await reader.aclose()


@pytest.mark.parametrize("spec", SEQUENTIAL_PAIRS)
async def test_sequential_aclose_is_idempotent(spec: SequentialSpec, sockdir: Path) -> None:
    writer_address, _ = spec.addresses(sockdir)
    with anyio.fail_after(TIMEOUT):
        writer = await fdchannel.connect(writer_address)
        await writer.send(b"x")
        await writer.aclose()
        await writer.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await writer.send(b"x")


@pytest.mark.parametrize("spec", SEQUENTIAL_PAIRS)
async def test_sequential_cancel_mid_transfer_leaves_nothing(
    spec: SequentialSpec, sockdir: Path
) -> None:
    """Cancelled while writing: the writer closes, its child (if any) is reaped."""
    writer_address, _ = spec.addresses(sockdir)
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
