"""CPython's own socket.send_fds / socket.recv_fds as the peer, both ways."""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable

import anyio
import anyio.to_thread
import pytest

from fdchannel.transports._socket import UnixSocketStream

pytestmark = pytest.mark.anyio


def memfds(n: int) -> list[int]:
    return [os.memfd_create(f"py{i}", os.MFD_CLOEXEC) for i in range(n)]


def inodes(fds: list[int]) -> list[int]:
    return [os.fstat(fd).st_ino for fd in fds]


async def stdlib_sends(
    stream: UnixSocketStream, peer: socket.socket, fds: list[int]
) -> tuple[bytes, list[int]]:
    await anyio.to_thread.run_sync(socket.send_fds, peer, [b"hello"], fds)
    return await stream.receive_fds(100, 253)


async def we_send(
    stream: UnixSocketStream, peer: socket.socket, fds: list[int]
) -> tuple[bytes, list[int]]:
    await stream.send_fds(b"hello", fds)
    data, got, _, _ = await anyio.to_thread.run_sync(socket.recv_fds, peer, 100, 253)
    return data, got


@pytest.mark.parametrize("direction", [stdlib_sends, we_send], ids=["stdlib-to-us", "us-to-stdlib"])
@pytest.mark.parametrize("count", [1, 10, 253])
async def test_descriptors_cross_with_the_stdlib(
    count: int, direction: Callable[..., Awaitable[tuple[bytes, list[int]]]]
) -> None:
    ours, theirs = socket.socketpair()
    stream = UnixSocketStream(ours, None)
    sent = memfds(count)
    try:
        with anyio.fail_after(10):
            data, got = await direction(stream, theirs, sent)
        assert data == b"hello" and inodes(got) == inodes(sent)
        for fd in got:
            os.close(fd)
    finally:
        for fd in sent:
            os.close(fd)
        await stream.aclose()
        theirs.close()
