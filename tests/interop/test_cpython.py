"""CPython's own socket.send_fds / socket.recv_fds as the peer, both ways."""

from __future__ import annotations

import os
import socket

import anyio
import anyio.to_thread
import pytest

from fdchannel.transports._socket import UnixSocketStream

pytestmark = pytest.mark.anyio


def memfds(n: int) -> list[int]:
    return [os.memfd_create(f"py{i}", os.MFD_CLOEXEC) for i in range(n)]


def inodes(fds: list[int]) -> list[int]:
    return [os.fstat(fd).st_ino for fd in fds]


@pytest.mark.parametrize("count", [1, 10, 253])
async def test_stdlib_sends_we_receive(count: int) -> None:
    ours, theirs = socket.socketpair()
    stream = UnixSocketStream(ours, None)
    sent = memfds(count)
    try:
        with anyio.fail_after(10):
            await anyio.to_thread.run_sync(socket.send_fds, theirs, [b"hello"], sent)
            data, got = await stream.receive_fds(100, 253)
        assert data == b"hello" and inodes(got) == inodes(sent)
        for fd in got:
            os.close(fd)
    finally:
        for fd in sent:
            os.close(fd)
        await stream.aclose()
        theirs.close()


@pytest.mark.parametrize("count", [1, 10, 253])
async def test_we_send_stdlib_receives(count: int) -> None:
    ours, theirs = socket.socketpair()
    stream = UnixSocketStream(ours, None)
    sent = memfds(count)
    try:
        with anyio.fail_after(10):
            await stream.send_fds(b"hello", sent)
            data, got, _, _ = await anyio.to_thread.run_sync(socket.recv_fds, theirs, 100, 253)
        assert data == b"hello" and inodes(got) == inodes(sent)
        for fd in got:
            os.close(fd)
    finally:
        for fd in sent:
            os.close(fd)
        await stream.aclose()
        theirs.close()
