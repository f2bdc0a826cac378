"""The native codec: round trips, windows, limits, and hostile input."""

from __future__ import annotations

import os
import struct
import zlib
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


def header(count: int) -> bytes:
    return struct.pack(">IBBHII", native.MAGIC, 1, 0, 0, 0, count)


def fds_frame(n: int, length: int = 2) -> bytes:
    return struct.pack(">BIH", 0x02, length, n)


def table(
    count: int, runs: list[tuple[bytes, int, int]], metadata: int = 0, names: bytes | None = None
) -> bytes:
    """A TABLE frame; ``names`` replaces the NUL-ended names of the runs."""
    blob = b"".join(name + b"\0" for name, _, _ in runs) if names is None else names
    payload = struct.pack(">IQI", count, metadata, len(runs))
    payload += b"".join(struct.pack(">i", first) for _, first, _ in runs)
    payload += b"".join(struct.pack(">I", length) for _, _, length in runs)
    return struct.pack(">BI", 0x01, len(payload) + len(blob)) + payload + blob


LONG_NAME = b"x" * 60000

# (stream, descriptors attached, the error's message); no allocation follows any claim.
HOSTILE = [
    (struct.pack(">IBBHII", native.MAGIC, 2, 0, 0, 0, 0), 0, "major version 2"),
    (header(2_000_000), 0, "2000000 entries"),
    (header(1) + table(1, [(b"a", 0, 1)]), 0, "TABLE frame where FDS"),
    (header(1) + struct.pack(">BIH", 0x09, 2, 1), 0, "unknown frame type"),
    (header(1) + struct.pack(">BIH", 0x02, 0xFFFFFFFF, 1), 0, "claims 4294967295 bytes"),
    (header(1) + fds_frame(1, length=3), 0, "FDS frame of 3 bytes"),
    (header(1) + fds_frame(0), 0, "announces 0 descriptors"),
    (header(1) + fds_frame(2), 2, "announces 2 descriptors"),
    (header(1) + fds_frame(1), 0, "1 descriptor\\(s\\) announced, 0 arrived"),
    (header(0) + table(0, [], metadata=1 << 40), 0, "metadata"),
    (header(0) + table(1, []), 0, "header announces 0 entries, TABLE 1"),
    (header(0) + struct.pack(">BI", 0x01, 12), 0, "TABLE frame of 12 bytes is too short"),
    (header(0) + table(0, [(b"a", 0, 1)]), 0, "cannot hold 1 runs"),
    (header(1) + fds_frame(1) + table(1, [(LONG_NAME, 0, 1)]), 1, "a name of 60000 bytes"),
    (header(1) + fds_frame(1) + table(1, [(b"a", 0, 2)]), 1, "runs hold 2 entries, not 1"),
    (header(1) + fds_frame(1) + table(1, [(b"a", 0, 0)]), 1, "runs hold 0 entries, not 1"),
    (header(3) + fds_frame(3) + table(3, [(b"a", 0, 3), (b"b", 0, 0)]), 3, "no entry"),
    (header(2) + fds_frame(2) + table(2, [(b"a", 2**31 - 1, 2)]), 2, "signed 32-bit"),
    (
        header(4) + fds_frame(4) + table(4, [(b"a", 5, 2), (b"b", 0, 1), (b"a", 6, 1)]),
        4,
        "duplicate descriptor name 'a' id 6",
    ),
    (header(1) + fds_frame(1) + table(1, [(b"a", 0, 1)], names=b"ab"), 1, "names hold 0"),
    (b"\x00\x00\x00\x00", 0, "unknown state stream magic"),
]


@pytest.mark.parametrize(("stream", "attached", "message"), HOSTILE, ids=[m for _, _, m in HOSTILE])
def test_hostile_input_fails_without_allocating(stream: bytes, attached: int, message: str) -> None:
    decoder = Decoder(Limits(max_entries=1_000_000, max_metadata=1 << 30))
    with pytest.raises(ProtocolError, match=message):
        decoder.feed(stream, memfds(attached))  # closed by the decoder as it fails
    decoder.close()


# (name, first id, entries): tables of one run, which have a reading of their own.
ONE_RUN = [
    (b"conn", 0, 10_000),
    (b"\xc3\xa9t\xc3\xa9", -5, 3),
    (b"\xff\xfe", 7, 1),  # not UTF-8: surrogate escapes
    (b"x" * 4096, 2**31 - 3, 3),  # the longest name, and the last ids that fit
]


@pytest.mark.parametrize(("name", "first", "count"), ONE_RUN)
def test_a_one_run_table_reads_as_any_table(
    monkeypatch: pytest.MonkeyPatch, name: bytes, first: int, count: int
) -> None:
    payload = memoryview(table(count, [(name, first, count)], metadata=9)[5:])
    fast = native._read_table(payload, count, Limits())
    monkeypatch.setattr(native, "_one_run", lambda *args: None)
    general = native._read_table(payload, count, Limits())
    assert [list(column) for column in fast[0]] == [list(column) for column in general[0]]
    assert fast[1] == general[1] == 9


def stepwise(data: bytes, fds: list[int]) -> tuple[FdState, list[bytes]]:
    """The incremental parser's reading (a first read too short to be whole), and the
    acknowledgements it owes."""
    decoder = Decoder()
    try:
        decoder.feed(data[:1], fds)
        decoder.feed(data[1:], [])
        return decoder.finish(), decoder.take_outgoing()
    finally:
        decoder.close()


def named(fds: list[int], names: list[str], ids: list[int]) -> FdState:
    return FdState([NamedFd(n, i, fd) for n, i, fd in zip(names, ids, fds, strict=True)])


# (entries as (names, ids), metadata): states the encoder sends whole.
WHOLE = [
    ([], [], b""),
    ([], [], b"meta"),
    (["ram0"], [0], b""),
    (["conn"] * 253, list(range(253)), b""),
    (["conn"] * 254, list(range(-5, 249)), b"x" * 3),
    ([f"n{i}" for i in range(300)], [0] * 300, b""),
    (["a", "a", "b", "a", "\u00e9t\u00e9"], [1, 2, 0, 7, 0], b""),
    (["big"], [0], os.urandom(native.META_CHUNK + 17)),  # two META frames
]


@pytest.mark.parametrize(("names", "ids", "metadata"), WHOLE, ids=range(len(WHOLE)))
def test_a_whole_stream_reads_as_the_steps_do(
    names: list[str], ids: list[int], metadata: bytes
) -> None:
    fds = memfds(len(names))
    try:
        sent = named(fds, names, ids)
        data = encoded(FdState(sent.fds, metadata))
        whole = native.parse_whole(data, list(fds))
        assert whole is not None, "the encoder's own shape is read whole"
        steps, acks = stepwise(data, list(fds))
        assert whole == steps == FdState(sent.fds, metadata) and acks == []
    finally:
        close(fds)


def _frames_of_one(count: int) -> bytes:
    """A valid stream whose FDS frames carry one descriptor each (not the encoder's shape)."""
    head = header(count) + fds_frame(1) * count + table(count, [(b"a", 0, count)])
    return head + struct.pack(">BII", 0x04, 4, zlib.crc32(head))


# (stream, descriptors, what the steps make of it: None for a state, else the error).
NOT_WHOLE = [
    (encoded(FdState([NamedFd("a", i, 0) for i in range(254)]), window=253), 254, None),
    (_frames_of_one(3), 3, None),
    (encoded(FdState([NamedFd("a", 0, 0)])), 2, "after the end"),
    (encoded(FdState([], b"meta"))[:-1], 0, "before its end marker"),
    (encoded(FdState([], b"meta")) + b"\0", 0, "after the end"),
]


@pytest.mark.parametrize(
    ("stream", "count", "error"),
    NOT_WHOLE,
    ids=["ack-due", "one-per-frame", "extra-descriptor", "no-end", "byte-after-end"],
)
def test_what_is_not_whole_is_left_to_the_steps(
    stream: bytes, count: int, error: str | None
) -> None:
    fds = memfds(count)
    try:
        assert native.parse_whole(stream, list(fds)) is None
    except BaseException:
        close(fds)
        raise
    decoder = Decoder()  # owns the descriptors from here on
    try:
        if error is None:
            with read_all(decoder, stream, fds) as result:
                assert len(result) == count
        else:
            with pytest.raises(ProtocolError, match=error):
                read_all(decoder, stream, fds)
    finally:
        decoder.close()


def read_all(decoder: Decoder, stream: bytes, fds: list[int]) -> FdState:
    decoder.feed(stream, fds)
    return decoder.finish()


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
