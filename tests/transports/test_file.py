"""The file transport: write at an offset, read back, and say clearly what failed."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from fdchannel.address import FileAddress
from fdchannel.capabilities import Capability
from fdchannel.errors import AddressError, CapabilityError, ConnectError, TransportError
from fdchannel.transports import file
from fdchannel.transports.file import FileStream, PipeStream

pytestmark = pytest.mark.anyio

TIMEOUT = 10
MIB = 1024 * 1024


def pattern(size: int) -> bytes:
    return hashlib.shake_256(b"file transport").digest(size)


async def read_all(stream: object, chunk: int = MIB) -> bytes:
    assert isinstance(stream, FileStream | PipeStream)
    parts = []
    while True:
        try:
            parts.append(await stream.receive(chunk))
        except anyio.EndOfStream:
            return b"".join(parts)


async def test_write_then_read_back_at_offset(tmp_path: Path) -> None:
    path = tmp_path / "state"
    offset = 4096 + 17
    data = pattern(8 * MIB)
    address = FileAddress(str(path), offset)
    with anyio.fail_after(TIMEOUT):
        writer = await file.connect(address)
        assert writer.capabilities == Capability.SEEKABLE
        for i in range(0, len(data), MIB):
            await writer.send(data[i : i + MIB])
        await writer.send_eof()  # no half-close on a file: a marker, not an error
        await writer.aclose()

        assert path.stat().st_size == offset + len(data)
        assert path.read_bytes()[:offset] == bytes(offset), "QEMU truncates: a hole before"

        async with await file.listen(address) as listener:
            assert listener.capabilities == Capability.NONE
            assert listener.stream_capabilities == Capability.SEEKABLE
            reader = await listener.accept()
            async with reader:
                received = await read_all(reader)
            with pytest.raises(CapabilityError, match="exactly one stream"):
                await listener.accept()
    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()


async def test_existing_file_is_truncated_and_private(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.write_bytes(b"x" * 100)
    path.unlink()  # a fresh file shows the creation mode, whatever the umask
    old = os.umask(0)
    try:
        async with await file.connect(FileAddress(str(path), 10)) as writer:
            await writer.send(b"abc")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_bytes(b"y" * 100)
    async with await file.connect(FileAddress(str(path), 10)) as writer:
        await writer.send(b"abc")
    assert path.read_bytes() == bytes(10) + b"abc"


@pytest.mark.parametrize(
    ("offset", "expected"),
    [(0, b"0123456789"), (4, b"456789"), (10, b""), (1000, b"")],
)
async def test_read_ends_at_end_of_file(tmp_path: Path, offset: int, expected: bytes) -> None:
    path = tmp_path / "state"
    path.write_bytes(b"0123456789")
    with anyio.fail_after(TIMEOUT):
        listener = await file.listen(FileAddress(str(path), offset))
        async with listener, await listener.accept() as reader:
            assert await read_all(reader, chunk=3) == expected
            with pytest.raises(anyio.EndOfStream):
                await reader.receive()
            await reader.wait_peer_closed()  # a file has no peer: at once


def _missing(tmp: Path) -> str:
    return str(tmp / "missing")


def _in_missing_dir(tmp: Path) -> str:
    return str(tmp / "no-such-dir" / "f")


def _directory(tmp: Path) -> str:
    return str(tmp)


def _not_permitted(tmp: Path) -> str:
    if os.geteuid() == 0:
        # Root passes permission bits; sysfs still refuses to create files.
        return "/sys/fdchannel-test"
    path = tmp / "locked"
    path.write_bytes(b"")
    path.chmod(0)
    return str(path)


@pytest.mark.parametrize(
    ("make_path", "side", "error", "reason"),
    [
        (_missing, "listen", TransportError, "No such file"),
        (_in_missing_dir, "connect", ConnectError, "No such file"),
        (_directory, "listen", TransportError, "Is a directory"),
        (_directory, "connect", ConnectError, "Is a directory"),
        (_not_permitted, "listen", TransportError, "Permission denied|No such file"),
        (_not_permitted, "connect", ConnectError, "Permission denied"),
    ],
    ids=["missing", "missing-dir", "dir-read", "dir-write", "eacces-read", "eacces-write"],
)
async def test_open_errors_name_the_path(
    tmp_path: Path,
    make_path: Callable[[Path], str],
    side: str,
    error: type[TransportError],
    reason: str,
) -> None:
    path = make_path(tmp_path)
    address = FileAddress(path)
    open_side = file.listen if side == "listen" else file.connect
    with pytest.raises(error, match=reason) as caught:
        await open_side(address)
    assert path in str(caught.value)
    assert caught.value.address == address
    if side == "listen":
        assert not isinstance(caught.value, ConnectError)


async def test_write_error_names_the_path() -> None:
    # /dev/full answers every write with ENOSPC.
    async with await file.connect(FileAddress("/dev/full")) as writer:
        with pytest.raises(TransportError, match=r"'/dev/full'.*No space left"):
            await writer.send(b"x" * 100)


async def test_offset_out_of_range() -> None:
    with pytest.raises(AddressError, match="out of range"):
        await file.connect(FileAddress("/tmp/never-created", 2**63))


async def test_one_way_and_closed_streams(tmp_path: Path) -> None:
    address = FileAddress(str(tmp_path / "f"))
    writer = await file.connect(address)
    with pytest.raises(anyio.EndOfStream):
        await writer.receive()  # nobody sends into a file being written
    with pytest.raises(CapabilityError):
        await writer.send_fds(b"x", [0])
    await writer.send_eof()
    with pytest.raises(anyio.ClosedResourceError):
        await writer.send(b"after eof")
    await writer.aclose()
    await writer.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        await writer.send(b"x")
    with pytest.raises(anyio.ClosedResourceError):
        writer.fileno()

    async with await file.listen(address) as listener:
        reader = await listener.accept()
        with pytest.raises(CapabilityError, match="opened for reading"):
            await reader.send(b"x")
        await reader.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await reader.receive()


async def test_close_during_a_read_waits_for_the_thread(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(pattern(4 * MIB))
    with anyio.fail_after(TIMEOUT):
        async with await file.listen(FileAddress(str(path))) as listener:
            reader = await listener.accept()
            got: list[int] = []

            async def read() -> None:
                got.append(len(await reader.receive(4 * MIB)))

            async with anyio.create_task_group() as tg:
                tg.start_soon(read)
                await anyio.wait_all_tasks_blocked()
                await reader.aclose()  # the descriptor closes once the read is done
    assert got in ([4 * MIB], [])


async def test_unaccepted_stream_closes_with_listener(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    listener = await file.listen(FileAddress(str(path)))
    await listener.aclose()
    await listener.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        await listener.accept()


async def test_fifo_is_a_pipe_stream(tmp_path: Path) -> None:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    address = FileAddress(str(path))
    with pytest.raises(ConnectError, match="nobody has open for reading"):
        await file.connect(address)
    with anyio.fail_after(TIMEOUT):
        async with await file.listen(address) as listener:
            reader = await listener.accept()
            async with reader, await file.connect(address) as writer:
                assert writer.capabilities == reader.capabilities == Capability.HALF_CLOSE
                await writer.send(b"through a fifo")
                await writer.send_eof()
                assert await read_all(reader) == b"through a fifo"
