"""The relay between two real processes: descriptors in order, the ack travels back."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

import fdchannel
from fdchannel.address import UnixAddress
from fdchannel.relaying import RelayStats, relay
from fdchannel.transports._socket import UnixSocketStream

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]


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
