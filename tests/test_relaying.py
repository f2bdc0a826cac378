"""The relay between two real processes: descriptors in order, the ack travels back."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

import fdchannel
from fdchannel.address import UnixAddress
from fdchannel.errors import CapabilityError
from fdchannel.relaying import RelayStats, relay
from fdchannel.transports._socket import UnixSocketStream

from .intruder import intruder, lines, needs_root

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 10


async def read_lines(stream: BufferedByteReceiveStream) -> list[str]:
    lines = []
    while True:
        try:
            lines.append((await stream.receive_until(b"\n", 1024)).decode())
        except anyio.IncompleteRead:
            return lines


@pytest.mark.parametrize("codec", ["native", "qemu"])
async def test_relay_carries_a_handoff(sockdir: Path, codec: str) -> None:
    relay_from, relay_to, main = (str(sockdir / n) for n in ("from", "to", "main"))
    stats: list[RelayStats] = []

    def peer(role: str, cpr: str) -> list[str]:
        return [sys.executable, "-m", "tests.handoff.peer", role, cpr, main, "never", codec]

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:

            async def run_relay(*, task_status: anyio.abc.TaskStatus[object]) -> None:
                stats.append(
                    await relay(f"unix:{relay_from}", f"unix:{relay_to}", task_status=task_status)
                )

            await tg.start(run_relay)
            async with (
                await anyio.open_process(peer("incoming", relay_to), cwd=ROOT, stderr=None) as new,
                await anyio.open_process(
                    peer("outgoing", relay_from), cwd=ROOT, stderr=None
                ) as old,
            ):
                assert new.stdout is not None and old.stdout is not None
                old_lines = await read_lines(BufferedByteReceiveStream(old.stdout))
                new_lines = await read_lines(BufferedByteReceiveStream(new.stdout))
                assert await old.wait() == 0
                assert await new.wait() == 0
    # The old process saw the ack that the new one gave by closing, through the relay.
    assert old_lines == ["ready", "acked", "done"]
    assert new_lines == ["listening", "received", "acked", "done"]
    (result,) = stats
    assert result.forward.fds == 1
    assert result.forward.ended and result.backward.ended
    assert result.first_to_close == "sender"


async def test_descriptor_never_arrives_after_its_byte(sockdir: Path) -> None:
    """Bytes with descriptors attached at known offsets keep them at or before those offsets."""
    relay_from = UnixAddress(str(sockdir / "from"))
    relay_to = UnixAddress(str(sockdir / "to"))
    memfds = [os.memfd_create(f"m{i}", os.MFD_CLOEXEC) for i in range(300)]
    try:
        with anyio.fail_after(20):
            async with await fdchannel.listen(relay_to) as far, anyio.create_task_group() as tg:
                await tg.start(relay, relay_from, relay_to)
                sender = await fdchannel.connect(relay_from)
                receiver = await far.accept()
                assert isinstance(sender, UnixSocketStream)
                assert isinstance(receiver, UnixSocketStream)
                # Message i: 1000 plain bytes, then one byte carrying descriptor i.
                for fd in memfds:
                    await sender.send(b"." * 1000)
                    await sender.send_fds(b"!", [fd])
                await sender.send_eof()
                offset, arrivals = 0, []
                while True:
                    try:
                        data, fds = await receiver.receive_fds(4096, 253)
                    except anyio.EndOfStream:
                        break
                    for fd in fds:
                        arrivals.append((offset + len(data), fd))
                    offset += len(data)
                await receiver.aclose()
                await sender.wait_peer_closed()
                await sender.aclose()
        assert len(arrivals) == len(memfds)
        for i, (end_of_chunk, fd) in enumerate(arrivals):
            byte_offset = i * 1001 + 1000  # where descriptor i's "!" byte is
            assert end_of_chunk > byte_offset - 4096, "arrived long before its byte"
            assert end_of_chunk >= byte_offset + 1, "arrived after its byte"
            assert os.fstat(fd).st_ino == os.fstat(memfds[i]).st_ino
            os.close(fd)
    finally:
        for fd in memfds:
            os.close(fd)


@needs_root
async def test_relay_skips_a_refused_peer_and_serves_the_next(sockdir: Path) -> None:
    name = f"fdc-relay-{sockdir.name}"
    source = f"cpr,addr.transport=socket,addr.type=unix,addr.path={name},addr.abstract=on"
    with anyio.fail_after(TIMEOUT):
        async with (
            await fdchannel.listen(UnixAddress(str(sockdir / "to"))) as far,
            anyio.create_task_group() as tg,
        ):
            stats: list[RelayStats] = []

            async def run_relay(*, task_status: anyio.abc.TaskStatus[object]) -> None:
                stats.append(await relay(source, f"unix:{sockdir / 'to'}", task_status=task_status))

            await tg.start(run_relay)
            async with await intruder(name) as bad:
                assert await lines(bad, 2) == [b"connected", b"closed"]
            sender = await fdchannel.connect(source)
            receiver = await far.accept()
            await sender.send(b"hello")
            await sender.send_eof()
            assert await receiver.receive() == b"hello"
            await receiver.aclose()  # the ack travels back
            with pytest.raises(anyio.EndOfStream):
                await sender.receive()
            await sender.aclose()
    assert stats[0].forward.bytes == 5


async def test_relay_raises_one_typed_error_not_a_group(sockdir: Path) -> None:
    memfd = os.memfd_create("x", os.MFD_CLOEXEC)
    try:
        with anyio.fail_after(TIMEOUT):
            async with await fdchannel.listen("tcp:127.0.0.1:0") as far:
                to = str(far.address)
                async with anyio.create_task_group() as tg:

                    async def take() -> None:
                        async with await far.accept() as stream:
                            with contextlib.suppress(anyio.EndOfStream):
                                await stream.receive()

                    tg.start_soon(take)
                    failures: list[BaseException] = []

                    async def run_relay(*, task_status: anyio.abc.TaskStatus[object]) -> None:
                        try:
                            await relay(f"unix:{sockdir / 'from'}", to, task_status=task_status)
                        except BaseException as exc:
                            failures.append(exc)

                    await tg.start(run_relay)
                    sender = await fdchannel.connect(f"unix:{sockdir / 'from'}")
                    assert isinstance(sender, UnixSocketStream)
                    await sender.send_fds(b"x", [memfd])  # tcp cannot take it
                    await sender.aclose()
        assert len(failures) == 1
        assert isinstance(failures[0], CapabilityError), repr(failures[0])
    finally:
        os.close(memfd)
