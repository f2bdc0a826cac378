"""The qemu codec from QEMU 10.0 to 11.1: captured streams, subsections, hostile input.

The vectors are real cpr channels (tests/codecs/vectors/README.md): QEMU
10.0 ends with the descriptor list's 0x00, QEMU 11.1 sends its entries in
another order and then the ``CprState/vfio devices`` subsection.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import fdchannel
from fdchannel import FdState, NamedFd, ProtocolError
from fdchannel.codecs import Decoder, qemu
from fdchannel.codecs.qemu import VFIO_DEVICES, Subsection, VfioDevice
from fdchannel.state import DEFAULT_LIMITS, Limits
from fdchannel.transports._socket import UnixSocketStream

from ..conftest import open_fds
from ..fuzzing import examples

VECTORS = Path(__file__).parent / "vectors"
QEMU10 = (VECTORS / "qemu-10.0-cpr.bin").read_bytes()
QEMU11 = (VECTORS / "qemu-11.1-cpr.bin").read_bytes()

#: (name, id) in the order each QEMU sent them: 10.0 newest first, 11.1 its own order.
ENTRIES_10 = [
    ("/rom@etc/acpi/rsdp", 0),
    ("/rom@etc/table-loader", 0),
    ("/rom@etc/acpi/tables", 0),
    ("pc.rom", 0),
    ("pc.bios", 0),
    ("ram0", 0),
]
ENTRIES_11 = [
    ("/rom@etc/acpi/rsdp", 0),
    ("/rom@etc/acpi/tables", 0),
    ("pc.bios", 0),
    ("/rom@etc/table-loader", 0),
    ("pc.rom", 0),
    ("ram0", 0),
]
#: QEMU 11.1's last message: the list's end, then its one subsection.
TAIL_11 = bytes.fromhex("000515") + b"CprState/vfio devices" + bytes.fromhex("0000000100")
EMPTY_VFIO = Subsection(VFIO_DEVICES, 1, b"\x00")


@dataclass(frozen=True)
class Vector:
    name: str
    data: bytes
    entries: list[tuple[str, int]]
    subsections: tuple[Subsection, ...]
    #: How many recvmsg the capture took (one per descriptor, then the tail).
    messages: int = 7


VECTOR_CASES = [
    Vector("qemu-10.0", QEMU10, ENTRIES_10, ()),
    Vector("qemu-11.1", QEMU11, ENTRIES_11, (EMPTY_VFIO,)),
]


def memfds(count: int) -> list[int]:
    """Fresh descriptors standing in for QEMU's memfds (the 0x20 markers)."""
    return [os.memfd_create(f"fake-{index}", os.MFD_CLOEXEC) for index in range(count)]


def inode(fd: int) -> tuple[int, int]:
    info = os.fstat(fd)
    return info.st_dev, info.st_ino


def chunks_of(data: bytes, how: str) -> list[bytes]:
    """``data`` split as a peer might deliver it."""
    if how == "whole":
        return [data]
    if how == "bytewise":
        return [data[i : i + 1] for i in range(len(data))]
    raise AssertionError(how)


def decode(
    chunks: list[bytes], fds: list[int], limits: Limits = DEFAULT_LIMITS, **options: bool
) -> FdState:
    """Feed ``chunks`` (all descriptors with the first) and finish; the decoder's
    descriptors are closed whatever happens."""
    decoder = Decoder(limits, **options)
    try:
        for index, chunk in enumerate(chunks):
            decoder.feed(chunk, fds if index == 0 else [])
        return decoder.finish()
    finally:
        decoder.close()


# --------------------------------------------------------------------------
# The captured streams


@pytest.mark.parametrize("vector", VECTOR_CASES, ids=lambda v: v.name)
@pytest.mark.parametrize("how", ["whole", "bytewise"])
def test_vector_decodes(vector: Vector, how: str) -> None:
    before = open_fds()
    fds = memfds(len(vector.entries))
    inodes = [inode(fd) for fd in fds]
    with decode(chunks_of(vector.data, how), fds) as state:
        assert [(entry.name, entry.id) for entry in state.fds] == vector.entries
        assert [inode(entry.fd) for entry in state.fds] == inodes
        assert state.qemu_subsections == vector.subsections
        assert all(sub.known for sub in state.qemu_subsections)
    assert open_fds() == before


@pytest.mark.parametrize("vector", VECTOR_CASES, ids=lambda v: v.name)
def test_vector_message_by_message(vector: Vector) -> None:
    """Each message with its one descriptor, as QEMU sent them; the encoder agrees."""
    fds = memfds(len(vector.entries))
    try:
        state = FdState(
            [
                NamedFd(name, ident, fd)
                for (name, ident), fd in zip(vector.entries, fds, strict=True)
            ]
        )
        state.qemu_subsections = vector.subsections
        messages = qemu.encode(state)
        assert b"".join(data for data, _ in messages) == vector.data
        assert len(messages) == vector.messages
        decoder = Decoder()
        try:
            for data, sent in messages:
                decoder.feed(data, [os.dup(fd) for fd in sent])
            assert decoder.done
            with decoder.finish() as received:
                assert [(e.name, e.id) for e in received.fds] == vector.entries
                assert [inode(e.fd) for e in received.fds] == [inode(fd) for fd in fds]
                assert received.qemu_subsections == vector.subsections
        finally:
            decoder.close()
    finally:
        for fd in fds:
            os.close(fd)


@pytest.mark.parametrize("vector", VECTOR_CASES, ids=lambda v: v.name)
def test_vector_round_trip(vector: Vector) -> None:
    """A decoded state re-encoded with its own subsections gives back the same bytes."""
    with decode([vector.data], memfds(len(vector.entries))) as state:
        assert b"".join(data for data, _ in qemu.encode(state)) == vector.data


def test_what_changed_from_10_0_to_11_1() -> None:
    """The same entries in another order, and 28 bytes after the list's end."""
    assert QEMU11.endswith(TAIL_11) and QEMU10.endswith(b"\x20\x00")
    assert len(QEMU11) - len(QEMU10) == len(TAIL_11) - 1 == 28
    assert sorted(ENTRIES_10) == sorted(ENTRIES_11) and ENTRIES_10 != ENTRIES_11


# --------------------------------------------------------------------------
# Encoding for a target QEMU


def encoded(entries: list[tuple[str, int]], target: str | None, *subs: Subsection) -> bytes:
    state = FdState([NamedFd(name, ident, 100 + i) for i, (name, ident) in enumerate(entries)])
    state.qemu_subsections = subs
    return b"".join(data for data, _ in qemu.encode(state, target))


@pytest.mark.parametrize(
    ("entries", "target", "expected"),
    [
        (ENTRIES_10, None, QEMU10),  # the default keeps QEMU 10.0's bytes
        (ENTRIES_10, "10.0", QEMU10),
        (ENTRIES_11, "11.1", QEMU11),
        (ENTRIES_11, "10.1", QEMU11),
        (ENTRIES_11, "11", QEMU11),
        (ENTRIES_11, "11.1.3", QEMU11),
    ],
)
def test_encode_for_target(
    entries: list[tuple[str, int]], target: str | None, expected: bytes
) -> None:
    assert encoded(entries, target) == expected


def test_encode_for_10_0_drops_only_what_carries_nothing() -> None:
    assert encoded(ENTRIES_11, "10.0", EMPTY_VFIO) == encoded(ENTRIES_11, None)
    assert encoded(ENTRIES_11, "10.0", Subsection.vfio_devices(iommufd=False)).endswith(b"\x20\x00")
    device = Subsection.vfio_devices([VfioDevice("0000:00:01.0", 1, 2, 3)])
    with pytest.raises(ProtocolError, match=r"QEMU 10\.0 takes no subsections"):
        encoded(ENTRIES_11, "10.0", device)
    with pytest.raises(ProtocolError, match="CprState/future"):
        encoded(ENTRIES_11, "10.0", Subsection("CprState/future", 1, b"x"))


def test_encode_for_11_keeps_own_subsections() -> None:
    device = Subsection.vfio_devices([VfioDevice("0000:00:01.0", 1, 2, 3)])
    assert encoded(ENTRIES_11, "11.1", device).endswith(device.to_bytes())
    future = Subsection("CprState/future", 7, b"abc")
    assert encoded(ENTRIES_11, "11.1", future).endswith(TAIL_11[1:] + future.to_bytes())


@pytest.mark.parametrize("target", ["9.2", "7", "x", "11.1-rc0", ""])
def test_encode_rejects_unknown_targets(target: str) -> None:
    with pytest.raises(ValueError, match=r"cpr-transfer|QEMU version"):
        encoded(ENTRIES_10, target)


# --------------------------------------------------------------------------
# Hand-built streams


def entry(name: str, ident: int = 0) -> bytes:
    raw = name.encode() + b"\0"
    return struct.pack(">BI", 1, len(raw)) + raw + struct.pack(">iB", ident, 0x20)


def sub(name: str, version: int, body: bytes = b"") -> bytes:
    raw = name.encode()
    return struct.pack(">BB", 5, len(raw)) + raw + struct.pack(">I", version) + body


def device(name: str, devid: int = 1, ioas: int = 2, hwpt: int = 3) -> bytes:
    raw = name.encode() + b"\0"
    return struct.pack(">BI", 1, len(raw)) + raw + struct.pack(">iII", devid, ioas, hwpt)


HEAD = struct.pack(">II", qemu.MAGIC, qemu.VERSION)
TWO = HEAD + entry("ram0") + entry("pc.bios") + b"\x00"
VFIO = "CprState/vfio devices"
DEVICES = device("0000:00:02.0", 7, 1, 2) + device("0000:00:03.0", -1, 0xFFFFFFFF, 0) + b"\x00"


@dataclass(frozen=True)
class Good:
    """A stream that must decode: (name, id) in order, then the subsections."""

    id: str
    data: bytes
    entries: list[tuple[str, int]] = field(default_factory=lambda: [("ram0", 0), ("pc.bios", 0)])
    subsections: tuple[Subsection, ...] = ()


GOOD = [
    Good("no subsections", TWO),
    Good("iommufd, empty", TWO + sub(VFIO, 1, b"\x00"), subsections=(EMPTY_VFIO,)),
    Good("no iommufd: no body", TWO + sub(VFIO, 1), subsections=(Subsection(VFIO, 1),)),
    Good(
        "two devices",
        TWO + sub(VFIO, 1, DEVICES),
        subsections=(
            Subsection.vfio_devices(
                [
                    VfioDevice("0000:00:02.0", 7, 1, 2),
                    VfioDevice("0000:00:03.0", -1, 0xFFFFFFFF, 0),
                ]
            ),
        ),
    ),
    Good(
        "no body, then an unknown one",
        TWO + sub(VFIO, 1) + sub("CprState/next", 3, b"\x01\x02"),
        subsections=(Subsection(VFIO, 1), Subsection("CprState/next", 3, b"\x01\x02")),
    ),
    Good(
        "unknown first: it runs to the end, the known one inside it",
        TWO + sub("CprState/next", 3, b"zz") + sub(VFIO, 1, b"\x00"),
        subsections=(Subsection("CprState/next", 3, b"zz" + sub(VFIO, 1, b"\x00")),),
    ),
    Good(
        "vfio devices version 2 is unknown",
        TWO + sub(VFIO, 2, b"\x00\x00"),
        subsections=(Subsection(VFIO, 2, b"\x00\x00"),),
    ),
    Good(
        "unknown with no body",
        TWO + sub("CprState/x", 0),
        subsections=(Subsection("CprState/x", 0),),
    ),
    Good(
        "entries in unusual order",
        HEAD
        + entry("a", 7)
        + entry("b", -3)
        + entry("a", 2)
        + entry("c", 0)
        + entry("a", 5)
        + b"\x00",
        entries=[("a", 7), ("b", -3), ("a", 2), ("c", 0), ("a", 5)],
    ),
    Good(
        "subsection names sorted backwards",
        TWO + sub(VFIO, 1, b"\x00") + sub("CprState/a", 1),
        subsections=(EMPTY_VFIO, Subsection("CprState/a", 1)),
    ),
]


@pytest.mark.parametrize("case", GOOD, ids=lambda case: case.id)
@pytest.mark.parametrize("how", ["whole", "bytewise"])
def test_good_streams(case: Good, how: str) -> None:
    with decode(chunks_of(case.data, how), memfds(len(case.entries))) as state:
        assert [(e.name, e.id) for e in state.fds] == case.entries
        assert state.qemu_subsections == case.subsections
        assert b"".join(data for data, _ in qemu.encode(state)) == case.data


def test_unknown_subsection_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fdchannel.codecs.qemu"):
        state = decode([TWO + sub("CprState/future", 9, b"abc")], memfds(2))
    with state:
        (found,) = state.qemu_subsections
        assert (found.name, found.version_id, found.body, found.known) == (
            "CprState/future",
            9,
            b"abc",
            False,
        )
    assert "'CprState/future' version 9" in caplog.text


@dataclass(frozen=True)
class Bad:
    """A stream that must fail with a ProtocolError matching ``error``."""

    id: str
    data: bytes
    error: str
    fds: int = 2
    limits: Limits = DEFAULT_LIMITS


BAD = [
    Bad("bad marker after the list", TWO + b"\x06", "0x06 .* is not 0x05"),
    Bad(
        "bad marker after a subsection",
        TWO + sub(VFIO, 1, b"\x00") + b"\x00",
        "0x00 .* is not 0x05",
    ),
    Bad("marker then the end", TWO + b"\x05", "ended after"),
    Bad("name cut short", (TWO + sub(VFIO, 1))[:-8], "ended after"),
    Bad("version cut short", (TWO + sub(VFIO, 1))[:-2], "ended after"),
    Bad("device list cut short", TWO + sub(VFIO, 1, DEVICES[:-3]), "ended after"),
    Bad("device list without its end", TWO + sub(VFIO, 1, DEVICES[:-1]), "ended after"),
    Bad("device list, bad tag", TWO + sub(VFIO, 1, b"\x02"), "neither 0x01 .* nor 0x00"),
    Bad("device name without NUL", TWO + sub(VFIO, 1, b"\x01\x00\x00\x00\x01x" + bytes(13)), "NUL"),
    Bad("device name length 0", TWO + sub(VFIO, 1, b"\x01" + bytes(17)), "length 0"),
    Bad("not CprState's", TWO + sub("OtherState/vfio", 1), "not one of CprState's"),
    Bad("name too short", TWO + b"\x05\x03abc" + bytes(4), "name length 3"),
    Bad("name NUL", TWO + sub("CprState/a\0b", 1), "not one of CprState's"),
    Bad(
        "name longer than limits.max_name",
        TWO + sub(VFIO, 1, b"\x00"),
        "name length 21",
        limits=Limits(max_name=16),
    ),
    Bad(
        "device list longer than limits.max_subsection",
        TWO + sub(VFIO, 1, DEVICES),
        "longer than 20 bytes",
        limits=Limits(max_subsection=20),
    ),
    Bad(
        "more devices than limits.max_entries",
        HEAD + entry("ram0") + b"\x00" + sub(VFIO, 1, DEVICES),
        "more than 1 vfio devices",
        limits=Limits(max_entries=1),
        fds=1,
    ),
    Bad(
        "unknown body longer than limits.max_subsection",
        TWO + sub("CprState/x", 1, bytes(65)),
        "longer than 64 bytes",
        limits=Limits(max_subsection=64),
    ),
    Bad(
        "more subsections than limits.max_subsections",
        TWO + sub(VFIO, 1) + sub("CprState/x", 1),
        "more than 1 subsections",
        limits=Limits(max_subsections=1),
    ),
    Bad("duplicate subsection", TWO + sub(VFIO, 1) + sub(VFIO, 1), "subsection .* twice"),
    Bad(
        "duplicate, iommufd shape",
        TWO + sub(VFIO, 1, b"\x00") + sub(VFIO, 1, b"\x00"),
        "twice",
    ),
    Bad(
        "unknown subsection, strict",
        TWO + sub("CprState/future", 1, b"abc"),
        "unknown subsection 'CprState/future' version 1",
        limits=Limits(qemu_strict=True),
    ),
    Bad(
        "vfio version 2, strict",
        TWO + sub(VFIO, 2, b"\x00"),
        "unknown subsection",
        limits=Limits(qemu_strict=True),
    ),
    Bad("descriptor left over", TWO + sub(VFIO, 1, b"\x00"), "1 descriptor", fds=3),
    Bad("duplicate entry", HEAD + entry("a") + entry("a") + b"\x00", "twice"),
]


@pytest.mark.parametrize("case", BAD, ids=lambda case: case.id)
@pytest.mark.parametrize("how", ["whole", "bytewise"])
def test_bad_streams(case: Bad, how: str) -> None:
    """A typed error, and every descriptor received is closed."""
    before = open_fds()
    fds = memfds(case.fds)
    with pytest.raises(ProtocolError, match=case.error):
        decode(chunks_of(case.data, how), fds, case.limits).close()
    assert open_fds() == before


def test_strict_from_the_decoder() -> None:
    data = TWO + sub("CprState/future", 1)
    with pytest.raises(ProtocolError, match="strict"):
        decode([data], memfds(2), strict=True).close()
    with decode([data], memfds(2), Limits(qemu_strict=True), strict=False) as state:
        assert not state.qemu_subsections[0].known


def test_done_means_the_stream_may_end_here() -> None:
    decoder = Decoder()
    try:
        decoder.feed(TWO[:-1], memfds(2))
        assert not decoder.done  # the list is not finished
        decoder.feed(TWO[-1:], [])
        assert decoder.done  # a QEMU 10.0 state could end here...
        decoder.feed(b"\x05\x15CprState/vfio", [])
        assert not decoder.done  # ...but a subsection began
        decoder.feed(b" devices\x00\x00\x00\x01", [])
        assert decoder.done  # a build without IOMMUFD: no body
        decoder.feed(b"\x00", [])
        assert decoder.done
        with decoder.finish() as state:
            assert state.qemu_subsections == (EMPTY_VFIO,)
    finally:
        decoder.close()


# --------------------------------------------------------------------------
# The value types


@pytest.mark.parametrize(
    ("name", "version", "body", "error"),
    [
        ("vfio devices", 1, b"", "CprState/NAME"),
        ("CprState/", 1, b"", "CprState/NAME"),
        ("CprState/" + "x" * 247, 1, b"", "255 bytes"),
        (VFIO, -1, b"", "u32"),
        (VFIO, 1 << 32, b"", "u32"),
        (VFIO, 1, b"\x00\x05", "bytes after its body"),
        (VFIO, 1, b"\x01", "middle of a field"),
        (VFIO, 1, b"\x07", "neither"),
    ],
)
def test_subsection_checks_itself(name: str, version: int, body: bytes, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        Subsection(name, version, body)


@pytest.mark.parametrize(
    ("devid", "ioas", "hwpt", "name"),
    [(1 << 31, 0, 0, "a"), (0, -1, 0, "a"), (0, 0, 1 << 32, "a"), (0, 0, 0, "a\0")],
)
def test_vfio_device_checks_itself(devid: int, ioas: int, hwpt: int, name: str) -> None:
    with pytest.raises(ValueError, match=r"int32|u32|NUL"):
        VfioDevice(name, devid, ioas, hwpt)


def test_vfio_devices_shapes() -> None:
    assert Subsection.vfio_devices().body == b"\x00"
    assert Subsection.vfio_devices(iommufd=False).body == b""
    assert Subsection.vfio_devices(iommufd=False).devices == ()
    with pytest.raises(ValueError, match="without IOMMUFD"):
        Subsection.vfio_devices([VfioDevice("a", 0, 0, 0)], iommufd=False)
    assert Subsection("CprState/x", 1).devices is None


def test_state_equality_counts_subsections() -> None:
    plain = FdState([NamedFd("ram0", 0, 5)])
    other = FdState([NamedFd("ram0", 0, 5)])
    other.qemu_subsections = (EMPTY_VFIO,)
    assert plain != other
    assert "qemu_subsections" in repr(other) and "qemu_subsections" not in repr(plain)


# --------------------------------------------------------------------------
# Over a socket, as receive_state reads it


@pytest.fixture
def socketpair() -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = socket.socketpair()
    yield left, right
    left.close()
    right.close()


@pytest.mark.anyio
async def test_receive_state_reads_a_qemu11_stream(
    socketpair: tuple[socket.socket, socket.socket],
) -> None:
    """The capture's messages over a real socket, half-closed: no 'bytes after the end'."""
    left, right = socketpair
    fds = memfds(len(ENTRIES_11))
    state = FdState(
        [NamedFd(name, ident, fd) for (name, ident), fd in zip(ENTRIES_11, fds, strict=True)]
    )
    state.qemu_subsections = (EMPTY_VFIO,)
    try:
        for data, sent in qemu.encode(state):
            if sent:  # QEMU's one descriptor, with its 0x20
                socket.send_fds(left, [data], sent)
            else:
                left.sendall(data)
        left.shutdown(socket.SHUT_WR)
        receiver = UnixSocketStream(right.dup(), None)
        try:
            with anyio.fail_after(10):
                received = await fdchannel.receive_state(receiver)
        finally:
            await receiver.aclose()
        with received:
            assert [(e.name, e.id) for e in received.fds] == ENTRIES_11
            assert [inode(e.fd) for e in received.fds] == [inode(fd) for fd in fds]
            assert received.qemu_subsections == (EMPTY_VFIO,)
    finally:
        for fd in fds:
            os.close(fd)


# --------------------------------------------------------------------------
# Any state, any subsections: encode, split, decode, encode again

names = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1, max_size=12)
devices = st.builds(
    VfioDevice,
    names,
    st.integers(-(1 << 31), (1 << 31) - 1),
    st.integers(0, (1 << 32) - 1),
    st.integers(0, (1 << 32) - 1),
)
vfio = st.one_of(
    st.just(Subsection.vfio_devices(iommufd=False)),
    st.lists(devices, max_size=3).map(Subsection.vfio_devices),
)
unknown = st.builds(
    Subsection,
    st.sampled_from(["CprState/next", "CprState/x y", "CprState/vfio devices"]),
    st.integers(2, 1 << 31),
    st.binary(max_size=40),
)


@st.composite
def subsection_lists(draw: st.DrawFn) -> tuple[Subsection, ...]:
    """What a QEMU could send: maybe the vfio one, maybe one unknown, which comes last."""
    found: list[Subsection] = []
    if draw(st.booleans()):
        found.append(draw(vfio))
    if draw(st.booleans()):
        extra = draw(unknown)
        if all(sub.name != extra.name for sub in found):
            found.append(extra)
    return tuple(found)


@settings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(names, st.integers(-5, 5)), max_size=5, unique=True),
    subsection_lists(),
    st.data(),
)
def test_round_trip_any_split(
    entries: list[tuple[str, int]], subsections: tuple[Subsection, ...], data: st.DataObject
) -> None:
    before = open_fds()
    fds = memfds(len(entries))
    try:
        state = FdState([NamedFd(n, i, fd) for (n, i), fd in zip(entries, fds, strict=True)])
        state.qemu_subsections = subsections
        messages = qemu.encode(state)
        stream = b"".join(chunk for chunk, _ in messages)
        decoder = Decoder()
        try:
            for chunk, sent in messages:
                cut = data.draw(st.integers(0, len(chunk)))
                # Descriptors come with or before their 0x20, never after it.
                decoder.feed(chunk[:cut], [os.dup(fd) for fd in sent])
                decoder.feed(chunk[cut:], [])
            with decoder.finish() as received:
                assert [(e.name, e.id) for e in received.fds] == entries
                assert received.qemu_subsections == subsections
                assert b"".join(chunk for chunk, _ in qemu.encode(received)) == stream
        finally:
            decoder.close()
    finally:
        for fd in fds:
            os.close(fd)
    assert open_fds() == before


@settings(max_examples=examples(500), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([QEMU10, QEMU11]), st.data())
def test_mutated_captures_fail_typed_and_close_everything(
    stream: bytes, data: st.DataObject
) -> None:
    """Bytes changed, cut or appended anywhere: a state or a ProtocolError, no leak."""
    before = open_fds()
    mutated = bytearray(stream)
    for _ in range(data.draw(st.integers(0, 3))):
        mutated[data.draw(st.integers(0, len(mutated) - 1))] = data.draw(st.integers(0, 255))
    mutated = mutated[: data.draw(st.integers(0, len(mutated)))] + data.draw(st.binary(max_size=8))
    strict = data.draw(st.booleans())
    with contextlib.suppress(ProtocolError):
        decode([bytes(mutated)], memfds(data.draw(st.integers(0, 7))), strict=strict).close()
    assert open_fds() == before
