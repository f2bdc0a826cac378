"""The native codec: round trips, windows, limits, and hostile input."""

from __future__ import annotations

import os
import struct
from functools import partial

import anyio
import pytest

import fdchannel
from fdchannel import FdState, NamedFd, ProtocolError
from fdchannel.codecs import Decoder, native
from fdchannel.state import Limits
from fdchannel.transports._socket import UnixSocketStream

from ..conftest import close_fds as close

pytestmark = pytest.mark.anyio
TIMEOUT = 30


def memfds(count: int) -> list[int]:
    return [os.memfd_create(f"m{i}", os.MFD_CLOEXEC) for i in range(count)]


async def transfer(
    pair: tuple[UnixSocketStream, UnixSocketStream], state: FdState, window: int | None
) -> FdState:
    a, b = pair
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(fdchannel.send_state, a, state, "native", window=window))
            received = await fdchannel.receive_state(b)
    return received


@pytest.mark.parametrize(
    ("count", "metadata", "window"),
    [
        (0, b"", None),
        (1, b"meta", None),
        (253, b"", 0),
        (254, b"x" * 100, 253),
        (1500, os.urandom(3 << 20), 506),
    ],
)
async def test_round_trip(
    pair: tuple[UnixSocketStream, UnixSocketStream], count: int, metadata: bytes, window: int | None
) -> None:
    fds = memfds(count)
    state = FdState([NamedFd(f"name-{i}", i % 7, fd) for i, fd in enumerate(fds)], metadata)
    try:
        received = await transfer(pair, state, window=window)
        with received:
            assert [(e.name, e.id) for e in received.fds] == [(e.name, e.id) for e in state.fds]
            assert [os.fstat(e.fd).st_ino for e in received.fds] == [
                os.fstat(fd).st_ino for fd in fds
            ]
            assert received.metadata == metadata
    finally:
        close(fds)


def encoded(state: FdState, window: int = 0) -> bytes:
    return b"".join(s.data for s in native.encode(state, window) if isinstance(s, native.Send))


def test_windows_wait_for_acks() -> None:
    state = FdState([NamedFd(str(i), 0, 100 + i) for i in range(1100)])
    steps = list(native.encode(state, window=506))
    assert [s.count for s in steps if isinstance(s, native.AwaitAck)] == [506, 1012]
    sends = [s for s in steps if isinstance(s, native.Send)]
    assert all(len(s.fds) <= 253 and s.data for s in sends)


HEADER = struct.pack(">IBBHII", native.MAGIC, 1, 0, 0, 0, 1)  # announces one entry
LONG_NAME = b"x" * 60000 + b"\0"


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (struct.pack(">IBBHII", native.MAGIC, 2, 0, 0, 0, 0), "major version 2"),
        (HEADER + struct.pack(">BI", 0x02, 2), "FDS frame where TABLE"),
        (HEADER + struct.pack(">BI", 0x09, 2), "unknown frame type"),
        (HEADER + struct.pack(">BI", 0x01, 0xFFFFFFFF), "claims 4294967295 bytes"),
        (HEADER + struct.pack(">BIIQ", 0x01, 12, 2_000_000, 0), "2000000 entries"),
        (HEADER + struct.pack(">BIIQ", 0x01, 12, 0, 1 << 40), "metadata"),
        (
            HEADER + struct.pack(">BIIQi", 0x01, 16 + len(LONG_NAME), 1, 0, 0) + LONG_NAME,
            "a name of 60000 bytes",
        ),
        (HEADER + struct.pack(">BIIQi", 0x01, 18, 1, 0, 7) + b"ab", "names hold 0"),
        (HEADER + struct.pack(">BIIQ", 0x01, 12, 0, 0), "header announces 1 entries"),
        (b"\x00\x00\x00\x00", "unknown state stream magic"),
    ],
)
def test_hostile_headers_fail_without_allocating(stream: bytes, message: str) -> None:
    decoder = Decoder(Limits(max_entries=1_000_000, max_metadata=1 << 30))
    with pytest.raises(ProtocolError, match=message):
        decoder.feed(stream, [])
    decoder.close()


def test_checksum_mismatch() -> None:
    data = bytearray(encoded(FdState([], b"metadata")))
    data[-10] ^= 0xFF  # the last metadata byte, just before the END frame
    decoder = Decoder()
    with pytest.raises(ProtocolError, match="checksum"):
        decoder.feed(bytes(data), [])
    decoder.close()


def test_fds_without_marker_are_rejected_and_closed() -> None:
    decoder = Decoder()
    fds = memfds(2)
    with pytest.raises(ProtocolError, match="after the end"):
        decoder.feed(encoded(FdState([], b"")), fds)
    decoder.close()


def test_truncated_stream_names_what_is_missing() -> None:
    data = encoded(FdState([], b"abc"))
    decoder = Decoder()
    decoder.feed(data[:-3], [])
    with pytest.raises(ProtocolError, match="before its end marker"):
        decoder.finish()
    decoder.close()


LOW_LIMIT_RECEIVER = """
import os, resource, socket, sys, anyio, fdchannel
from fdchannel.transports._socket import UnixSocketStream

async def main():
    stream = UnixSocketStream(socket.socket(fileno=int(sys.argv[1])), None)
    low = len(os.listdir("/proc/self/fd")) + 100
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, low))
    try:
        await fdchannel.receive_state(stream)
    except fdchannel.FdPassingError as exc:
        print("refused:", exc, flush=True)
    await stream.aclose()
anyio.run(main)
"""


async def test_rejects_when_descriptors_cannot_fit(
    pair: tuple[UnixSocketStream, UnixSocketStream],
) -> None:
    """The receiver fails early, naming its limit, and the sender hears why."""
    import sys

    a, b = pair
    fds = memfds(600)
    state = FdState([NamedFd(str(i), 0, fd) for i, fd in enumerate(fds)])
    try:
        with anyio.fail_after(TIMEOUT):
            async with await anyio.open_process(
                [sys.executable, "-c", LOW_LIMIT_RECEIVER, str(b.fileno())],
                pass_fds=[b.fileno()],
            ) as child:
                with pytest.raises(fdchannel.HandoffError, match="hard limit"):
                    await fdchannel.send_state(a, state, "native", window=253)
                assert child.stdout is not None
                out = b"".join([chunk async for chunk in child.stdout]).decode()
                assert out.startswith("refused:") and "hard limit" in out
                assert await child.wait() == 0
    finally:
        close(fds)
