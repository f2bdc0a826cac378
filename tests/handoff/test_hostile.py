"""Hostile or broken peers: each gives a bounded, typed failure and leaks nothing."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

import fdchannel
from fdchannel import FdState, HandoffError, HandoffTimeout, NamedFd
from fdchannel.codecs import native
from fdchannel.transports._socket import UnixSocketStream

from .inprocess import handed_over
from .peer import channels

pytestmark = pytest.mark.anyio
SHORT = 1.0


def valid_native_stream() -> bytes:
    memfdless = FdState([], b"metadata")  # no descriptors: plain bytes suffice
    steps = native.encode(memfdless, window=0)
    return b"".join(s.data for s in steps if isinstance(s, native.Send))


def raw_peer(path: Path) -> socket.socket:
    """A peer that speaks no library: a plain socket, connected to a listener that is up."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    return sock


# (what the peer sends before it stalls, what the incoming side must raise)
STALLS = [
    pytest.param(b"", HandoffTimeout, id="connects-and-says-nothing"),
    pytest.param(valid_native_stream()[:16], HandoffTimeout, id="header-then-stalls"),
    pytest.param(valid_native_stream()[:-3], HandoffTimeout, id="all-but-the-end-then-stalls"),
    pytest.param(b"GET / HTTP/1.1\r\n\r\n", HandoffError, id="speaks-another-protocol"),
]


@pytest.mark.parametrize(("sent", "error"), STALLS)
async def test_stalling_peer_is_bounded(
    sockdir: Path, sent: bytes, error: type[HandoffError]
) -> None:
    async with fdchannel.Incoming(channels(str(sockdir / "cpr"), str(sockdir / "main"))) as inc:
        await inc.listen_cpr()
        peer = raw_peer(sockdir / "cpr")
        try:
            peer.sendall(sent)
            with anyio.fail_after(SHORT + 2):
                began = anyio.current_time()
                with pytest.raises(error):
                    await inc.receive_cpr(timeout=SHORT)
                assert anyio.current_time() - began < SHORT + 1
        finally:
            peer.close()


async def test_one_byte_at_a_time_still_arrives(
    pair: tuple[UnixSocketStream, UnixSocketStream],
) -> None:
    a, b = pair
    memfd = os.memfd_create("slow", os.MFD_CLOEXEC)
    data_steps = list(native.encode(FdState([NamedFd("slow", 0, memfd)], b"meta"), window=0))
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:

                async def trickle() -> None:
                    for step in data_steps:
                        assert isinstance(step, native.Send)
                        if step.fds:  # the descriptors ride on the frame's first byte
                            await a.send_fds(step.data[:1], list(step.fds))
                            rest = step.data[1:]
                        else:
                            rest = step.data
                        for i in range(len(rest)):
                            await a.send(rest[i : i + 1])
                            await anyio.lowlevel.checkpoint()
                    await a.send_eof()

                tg.start_soon(trickle)
                with await fdchannel.receive_state(b) as state:
                    assert [(e.name, e.id) for e in state.fds] == [("slow", 0)]
                    assert state.metadata == b"meta"
    finally:
        os.close(memfd)


async def test_descriptors_on_the_main_channel_are_closed(sockdir: Path) -> None:
    chans = channels(str(sockdir / "cpr"), str(sockdir / "main"))
    memfd = os.memfd_create("ram0", os.MFD_CLOEXEC)
    stray = [os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC) for _ in range(3)]
    try:
        with anyio.fail_after(10):
            async with handed_over(chans, chans, FdState([NamedFd("ram0", 0, memfd)])) as (
                inc,
                out,
            ):
                main = await out.connect_main()
                # A main stream is bytes only: descriptors on it are closed on arrival.
                assert isinstance(main, UnixSocketStream)
                await main.send_fds(b"\0" * 8, stray)  # an empty main stream, with extras
                await main.send_eof()
                assert await inc.receive_main(timeout=5) == b""
    finally:
        os.close(memfd)
        for fd in stray:
            os.close(fd)
