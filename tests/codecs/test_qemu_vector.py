"""The qemu codec against the captured QEMU 10 cpr channel (shared vectors)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import anyio
import pytest

import fdchannel
from fdchannel.codecs import Decoder, qemu
from fdchannel.state import FdState, NamedFd
from fdchannel.transports._socket import UnixSocketStream

# Each row is one recvmsg of the capture: the bytes, and the memfd name its descriptor had.
CAPTURE: list[tuple[str, str | None]] = [
    (
        "51435052 00000001 01 00000013 2f726f6d406574632f616370692f7273647000 00000000 20",
        "/rom@etc/acpi/rsdp",
    ),
    (
        "01 00000016 2f726f6d406574632f7461626c652d6c6f6164657200 00000000 20",
        "/rom@etc/table-loader",
    ),
    ("01 00000015 2f726f6d406574632f616370692f7461626c657300 00000000 20", "/rom@etc/acpi/tables"),
    ("01 00000007 70632e726f6d00 00000000 20", "pc.rom"),
    ("01 00000008 70632e62696f7300 00000000 20", "pc.bios"),
    ("01 00000005 72616d3000 00000000 20", "memory-backend-memfd"),
    ("00", None),
]
NAMES = [
    "/rom@etc/acpi/rsdp",
    "/rom@etc/table-loader",
    "/rom@etc/acpi/tables",
    "pc.rom",
    "pc.bios",
    "ram0",
]
ROWS = [bytes.fromhex(hexbytes.replace(" ", "")) for hexbytes, _ in CAPTURE]

pytestmark = pytest.mark.anyio


@pytest.fixture
def memfds() -> Iterator[list[int]]:
    fds = [os.memfd_create(name) for _, name in CAPTURE if name is not None]
    for fd in fds:
        os.ftruncate(fd, 4096)
    yield fds
    for fd in fds:
        os.close(fd)


def _inode(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def test_encoder_reproduces_capture_message_by_message(memfds: list[int]) -> None:
    state = FdState([NamedFd(name, 0, fd) for name, fd in zip(NAMES, memfds, strict=True)])
    messages = qemu.encode(state)
    assert [data for data, _ in messages] == ROWS
    assert [fds for _, fds in messages] == [[fd] for fd in memfds] + [[]]


def test_pure_decoder_reads_capture(memfds: list[int]) -> None:
    decoder = Decoder()
    dups = [os.dup(fd) for fd in memfds]
    for row, fd in zip(ROWS, [*dups, None], strict=True):
        decoder.feed(row, [] if fd is None else [fd])
    assert decoder.done and decoder.codec == "qemu"
    with decoder.finish() as state:
        assert [(e.name, e.id) for e in state.fds] == [(n, 0) for n in NAMES]
        assert [_inode(e.fd) for e in state.fds] == [_inode(fd) for fd in memfds]


async def test_capture_over_a_socketpair(memfds: list[int]) -> None:
    """Real memfds cross a real socket exactly as the capture shows, both ways."""
    left, right = socket.socketpair()
    sender, receiver = UnixSocketStream(left, None), UnixSocketStream(right, None)
    state = FdState([NamedFd(name, 0, fd) for name, fd in zip(NAMES, memfds, strict=True)])
    try:
        with anyio.fail_after(10):
            await fdchannel.send_state(sender, state, codec="qemu")
            # What arrives, one recvmsg at a time, is the capture row by row.
            rows: list[tuple[bytes, int]] = []
            while True:
                try:
                    data, fds = await receiver.receive_fds(65536, 253)
                except anyio.EndOfStream:
                    break
                rows.append((data, len(fds)))
                for fd in fds:
                    os.close(fd)
            assert rows == [
                (row, 1 if name else 0) for row, (_, name) in zip(ROWS, CAPTURE, strict=True)
            ]
    finally:
        await sender.aclose()
        await receiver.aclose()


async def test_receive_state_detects_qemu(memfds: list[int]) -> None:
    left, right = socket.socketpair()
    sender, receiver = UnixSocketStream(left, None), UnixSocketStream(right, None)
    state = FdState([NamedFd(name, 0, fd) for name, fd in zip(NAMES, memfds, strict=True)])
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(fdchannel.send_state, sender, state, "qemu")
                received = await fdchannel.receive_state(receiver)
        with received:
            assert [(e.name, e.id) for e in received.fds] == [(n, 0) for n in NAMES]
            assert [_inode(e.fd) for e in received.fds] == [_inode(fd) for fd in memfds]
            for entry in received.fds:
                assert os.get_inheritable(entry.fd) is False
    finally:
        await sender.aclose()
        await receiver.aclose()
