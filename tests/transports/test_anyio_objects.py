"""Streams and listeners as anyio objects: ``serve``, typed attributes, ``from_fd``.

``fdchannel.Listener`` is an ``anyio.abc.Listener`` (code written against
anyio serves with it unchanged), streams and listeners answer ``extra()``
with fdchannel's and anyio's typed attributes, and a descriptor received
from a peer becomes a stream or listener directly.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import anyio
import anyio.abc
import pytest
from anyio.abc import SocketAttribute

import fdchannel
from fdchannel.address import TcpAddress, UnixAddress
from fdchannel.capabilities import Capability
from fdchannel.errors import ConnectError, TransportError
from fdchannel.transports import FdAttribute, Listener, Stream
from fdchannel.transports._one_stream import OneStreamListener

pytestmark = pytest.mark.anyio
TIMEOUT = 10


async def test_listener_is_an_anyio_listener_and_serves(sockdir: Path) -> None:
    address = UnixAddress(str(sockdir / "s"))
    served: list[bytes] = []
    async with await fdchannel.listen(address) as listener:
        assert isinstance(listener, anyio.abc.Listener)

        async def echo(stream: Stream) -> None:
            data = await stream.receive()
            served.append(data)
            await stream.send(data.upper())

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(listener.serve, echo, tg)
                for word in (b"one", b"two", b"three"):
                    async with await fdchannel.connect(address) as client:
                        await client.send(word)
                        assert await client.receive() == word.upper()
                tg.cancel_scope.cancel()
    assert sorted(served) == [b"one", b"three", b"two"]


async def test_a_one_stream_listener_serves_once_and_returns(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"contents")
    seen: list[bytes] = []

    async def read(stream: Stream) -> None:
        seen.append(await stream.receive())

    with anyio.fail_after(TIMEOUT):
        async with await fdchannel.listen(f"file:{tmp_path / 'f'}") as listener:
            await listener.serve(read)
    assert seen == [b"contents"]


async def test_a_closed_listener_stops_serving(sockdir: Path) -> None:
    listener = await fdchannel.listen(UnixAddress(str(sockdir / "s")))

    async def never(stream: Stream) -> None:
        raise AssertionError("nobody connected")

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, never)
            await anyio.wait_all_tasks_blocked()
            await listener.aclose()


async def test_unix_stream_attributes(sockdir: Path) -> None:
    address = UnixAddress(str(sockdir / "s"))
    async with await fdchannel.listen(address) as listener:
        assert listener.extra(FdAttribute.address) == address
        assert (
            listener.extra(FdAttribute.fileno)
            == listener.extra(SocketAttribute.raw_socket).fileno()
        )
        assert listener.extra(SocketAttribute.family) == socket.AF_UNIX
        with anyio.fail_after(TIMEOUT):
            client = await fdchannel.connect(address)
            server = await listener.accept()
        async with client, server:
            for stream in (client, server):
                assert Capability.FD_PASSING in stream.extra(FdAttribute.capabilities)
                assert stream.extra(FdAttribute.fileno) == stream.fileno()
                assert stream.extra(SocketAttribute.raw_socket).fileno() == stream.fileno()
            pid, uid, _ = server.extra(FdAttribute.peer_credentials)
            assert (pid, uid) == (os.getpid(), os.geteuid())
            assert server.extra(SocketAttribute.local_address) == str(sockdir / "s")
            with pytest.raises(anyio.TypedAttributeLookupError):
                server.extra(SocketAttribute.local_port)


async def test_tcp_stream_attributes() -> None:
    async with await fdchannel.listen(TcpAddress("127.0.0.1", "0")) as listener:
        port = listener.extra(SocketAttribute.local_port)
        assert port > 0
        with anyio.fail_after(TIMEOUT):
            client = await fdchannel.connect(f"tcp:127.0.0.1:{port}")
            server = await listener.accept()
        async with client, server:
            assert client.extra(SocketAttribute.remote_port) == port
            assert server.extra(SocketAttribute.local_port) == port
            assert Capability.FD_PASSING not in client.extra(FdAttribute.capabilities)
            with pytest.raises(anyio.TypedAttributeLookupError):
                client.extra(FdAttribute.peer_credentials)


async def test_stream_from_a_received_socket_owns_it() -> None:
    mine, theirs = socket.socketpair()
    fd = mine.detach()
    with anyio.fail_after(TIMEOUT):
        async with Stream.from_fd(fd) as stream:
            assert stream.fileno() == fd  # taken over, not duplicated
            assert Capability.FD_PASSING in stream.capabilities
            theirs.sendall(b"hi")
            assert await stream.receive() == b"hi"
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)  # closed with the stream
    theirs.close()


async def test_stream_from_a_pipe_end() -> None:
    read, write = os.pipe()
    os.write(write, b"piped")
    os.close(write)
    async with Stream.from_fd(read) as stream:
        assert await stream.receive() == b"piped"


async def test_listener_from_a_received_listening_socket(sockdir: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sockdir / "s"))
    sock.listen()
    fd = sock.detach()
    async with Listener.from_fd(fd) as listener:
        assert Capability.MULTI_ACCEPT in listener.capabilities
        with anyio.fail_after(TIMEOUT):
            client = await fdchannel.connect(f"unix:{sockdir / 's'}")
            server = await listener.accept()
        await client.aclose()
        await server.aclose()


async def test_listener_from_a_pipe_yields_it_once() -> None:
    read, write = os.pipe()
    os.close(write)
    async with Listener.from_fd(read) as listener:
        assert isinstance(listener, OneStreamListener)
        async with await listener.accept():
            pass


@pytest.mark.parametrize("incoming", [False, True])
async def test_from_fd_refusal_leaves_the_descriptor_open(sockdir: Path, incoming: bool) -> None:
    """A datagram socket is no stream: the refusal is typed and ``fd`` stays the caller's."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        with pytest.raises(TransportError):
            Listener.from_fd(sock.fileno()) if incoming else Stream.from_fd(sock.fileno())
        os.fstat(sock.fileno())
    finally:
        sock.close()


async def test_a_listening_socket_is_not_a_stream(sockdir: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sockdir / "s"))
    sock.listen()
    try:
        with pytest.raises(ConnectError, match="listening socket"):
            Stream.from_fd(sock.fileno())
    finally:
        sock.close()
