"""The relay between two real processes: descriptors in order, the ack travels back."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

import fdchannel
from fdchannel.address import UnixAddress
from fdchannel.errors import CapabilityError
from fdchannel.relaying import RelayStats, relay
from fdchannel.transports._socket import SocketStream, UnixSocketStream

from .intruder import intruder, lines, needs_root
from .relay_reset_peer import memfd_state, unread_reply, unread_state

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
                        # The relay that cannot carry the state resets the far side
                        # (TCP: an RST), so the failure is not taken for a clean end.
                        async with await far.accept() as stream:
                            with pytest.raises(anyio.BrokenResourceError):
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


#: (who resets, how) -> what the other side gets directly, native and qemu: the relay
#: must give the same.  A reset is a close with the peer's bytes unread (or a death
#: then); a qemu receiver sends nothing, so a qemu sender that goes just ends early.
HANDOFF_ENDS = {
    ("nobody", "accepts"): ("Ack(accepted)", "Ack(closed)"),
    ("receiver", "closes"): ("ConnectionLostError", "ConnectionLostError"),
    ("receiver", "killed"): ("ConnectionLostError", "ConnectionLostError"),
    ("sender", "closes"): ("ConnectionLostError", "ProtocolError"),
    ("sender", "killed"): ("ConnectionLostError", "ProtocolError"),
}


async def killed_peer(
    role: str,
    codec: str,
    at: str,
    task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """A peer in a child that kills itself with the other side's bytes unread
    (tests.relay_reset_peer); a receiver says where it listens."""
    argv = [sys.executable, "-m", "tests.relay_reset_peer", role, codec, at]
    async with await anyio.open_process(argv, cwd=ROOT, stderr=None) as peer:
        assert peer.stdout is not None
        if role == "receiver":
            line = await BufferedByteReceiveStream(peer.stdout).receive_until(b"\n", 200)
            task_status.started(line.decode().removeprefix("listening "))
        assert await peer.wait() == -signal.SIGKILL


async def exchange(
    receiver: Callable[..., Coroutine[Any, Any, None]],
    sender: Callable[[str], Coroutine[Any, Any, None]],
    front: str | None,
) -> list[RelayStats]:
    """The receiver started, then the sender, directly or through a relay on
    ``front``; the relay's stats."""
    stats: list[RelayStats] = []

    async def run_relay(target: str, *, task_status: anyio.abc.TaskStatus[object]) -> None:
        assert front is not None
        stats.append(await relay(front, target, task_status=task_status))

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            address = target = await tg.start(receiver)
            if front is not None:
                address = str(await tg.start(run_relay, target))
            tg.start_soon(sender, address)
    return stats


async def handoff_end(
    sockdir: Path,
    codec: str,
    who: str,
    how: str,
    *,
    relayed: bool,
) -> tuple[str, list[RelayStats]]:
    """What the side facing ``who`` got (the sender's Ack or error; facing a
    sender, the receiver's), directly or through a relay; and the relay's stats."""
    outcomes: dict[str, str] = {}

    async def receiver(*, task_status: anyio.abc.TaskStatus[str]) -> None:
        if who == "receiver" and how == "killed":
            return await killed_peer("receiver", codec, f"unix:{sockdir / 'receiver'}", task_status)
        async with await fdchannel.listen(f"unix:{sockdir / 'receiver'}") as listener:
            task_status.started(str(listener.address))
            if who == "receiver":
                async with unread_state(listener):
                    return
            try:
                received = await fdchannel.receive_cpr(listener, timeout=TIMEOUT)
            except fdchannel.FdChannelError as exc:
                outcomes["receiver"] = type(exc).__name__
                return
        with received.state:
            await received.accept()
        outcomes["receiver"] = "received"

    async def sender(address: str) -> None:
        if who == "sender" and how == "killed":
            return await killed_peer("sender", codec, address)
        if who == "sender":
            async with unread_reply(address, codec):
                return
        with memfd_state() as state:
            try:
                ack = await fdchannel.send_cpr(address, state, codec=codec, timeout=TIMEOUT)  # type: ignore[arg-type]
            except fdchannel.FdChannelError as exc:
                outcomes["sender"] = type(exc).__name__
            else:
                outcomes["sender"] = f"Ack({ack.kind})"

    stats = await exchange(receiver, sender, f"unix:{sockdir / 'front'}" if relayed else None)
    return outcomes["receiver" if who == "sender" else "sender"], stats


@pytest.mark.parametrize("codec", ["native", "qemu"])
@pytest.mark.parametrize(("who", "how"), list(HANDOFF_ENDS))
async def test_the_close_as_ack_means_the_same_through_the_relay(
    sockdir: Path, codec: str, who: str, how: str
) -> None:
    """An accept is an Ack, and a reset the same error, with a relay between or not."""
    expected = HANDOFF_ENDS[who, how][codec == "qemu"]
    direct, _ = await handoff_end(sockdir, codec, who, how, relayed=False)
    relayed, (stats,) = await handoff_end(sockdir, codec, who, how, relayed=True)
    assert (direct, relayed) == (expected, expected)
    resets = who != "nobody" and expected == "ConnectionLostError"
    assert stats.reset_by == (who if resets else None)


#: (who resets, how) -> what the other side reads after it, on a bare connection:
#: the sender waits for the receiver's close, the receiver (after a reply) for more.
STREAM_ENDS = {
    ("nobody", "ends"): "EOF",
    ("receiver", "closes"): "reset",
    ("receiver", "killed"): "reset",
    ("sender", "closes"): "reset",
}


async def stream_end(
    sockdir: Path, who: str, how: str, kinds: tuple[str, str], *, relayed: bool
) -> tuple[str, list[RelayStats]]:
    """What the side facing ``who`` read last ("EOF" or "reset"), directly or
    through a relay listening on a ``kinds[0]`` socket for a receiver on a
    ``kinds[1]`` one; and the relay's stats."""
    outcomes: dict[str, str] = {}

    def where(kind: str, name: str) -> str:
        return f"unix:{sockdir / name}" if kind == "unix" else "tcp:127.0.0.1:0"

    async def read_to_end(stream: fdchannel.Stream, side: str, *first: bytes) -> None:
        """Send ``first`` (then half-close), and read to the end."""
        try:
            if first:
                await stream.send(*first)
                await stream.send_eof()
            while await stream.receive():
                pass
        except anyio.EndOfStream:
            outcomes[side] = "EOF"
        except anyio.BrokenResourceError:  # a reset seen by a send, or by a receive
            outcomes[side] = "reset"

    async def receiver(*, task_status: anyio.abc.TaskStatus[str]) -> None:
        at = where(kinds[1], "receiver")
        if who == "receiver" and how == "killed":
            return await killed_peer("receiver", "qemu", at, task_status)
        async with await fdchannel.listen(at) as listener:
            task_status.started(str(listener.address))
            if who == "receiver":
                async with unread_state(listener):
                    return
            async with await listener.accept() as stream:
                if who == "nobody":
                    await read_to_end(stream, "state")  # the whole state, to the sender's EOF
                else:
                    await stream.receive()
                await read_to_end(stream, "receiver", b"reply")

    async def sender(address: str) -> None:
        async with await fdchannel.connect(address) as stream:
            await stream.send(b"state" * 1000)
            if who == "sender":
                assert isinstance(stream, SocketStream)
                await anyio.wait_readable(stream.socket)  # the reply waits unread
                return
            await read_to_end(stream, "sender", b"end")

    stats = await exchange(receiver, sender, where(kinds[0], "front") if relayed else None)
    return outcomes["receiver" if who == "sender" else "sender"], stats


@pytest.mark.parametrize("kinds", [("unix", "tcp"), ("tcp", "unix"), ("tcp", "tcp")])
@pytest.mark.parametrize(("who", "how"), list(STREAM_ENDS))
async def test_a_reset_crosses_every_socket_kind(
    sockdir: Path, kinds: tuple[str, str], who: str, how: str
) -> None:
    """TCP has an abortive close (an RST), AF_UNIX the close with bytes unread: the relay
    passes a reset on from either kind to either, both ways, and an end as an end."""
    direct, _ = await stream_end(sockdir, who, how, kinds, relayed=False)
    relayed, (stats,) = await stream_end(sockdir, who, how, kinds, relayed=True)
    assert (direct, relayed) == (STREAM_ENDS[who, how],) * 2
    assert stats.reset_by == (None if who == "nobody" else who)


@pytest.mark.parametrize("who", ["receiver", "sender"])
async def test_a_reset_with_descriptors_held_leaks_none(sockdir: Path, who: str) -> None:
    """The byte the relay holds back carries descriptors (their copies went on with it):
    the reset is passed on, and no copy stays open (the fixture checks every descriptor)."""
    relay_from, relay_to = f"unix:{sockdir / 'from'}", f"unix:{sockdir / 'to'}"
    memfd = os.memfd_create("ram", os.MFD_CLOEXEC)
    stats: list[RelayStats] = []

    async def run_relay(*, task_status: anyio.abc.TaskStatus[object]) -> None:
        stats.append(await relay(relay_from, relay_to, task_status=task_status))

    try:
        with anyio.fail_after(TIMEOUT):
            async with await fdchannel.listen(relay_to) as far, anyio.create_task_group() as tg:
                await tg.start(run_relay)
                async with (
                    await fdchannel.connect(relay_from) as sender,
                    await far.accept() as receiver,
                ):
                    ends = (receiver, sender)
                    resetting, other = ends if who == "receiver" else ends[::-1]
                    assert isinstance(other, UnixSocketStream)
                    assert isinstance(resetting, UnixSocketStream)
                    await other.send_fds(b"!", [memfd] * 3)  # one byte: the one held back
                    await anyio.wait_readable(resetting.socket)
                    await resetting.aclose()  # with the descriptors unread
                    with pytest.raises(anyio.BrokenResourceError):
                        await other.receive()
    finally:
        os.close(memfd)
    (result,) = stats
    assert result.reset_by == who
    assert (result.forward if who == "receiver" else result.backward).fds == 3
