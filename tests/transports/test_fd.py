"""The fd transport: numbers, names, socket activation, and every kind of descriptor."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

import fdchannel
from fdchannel import fd_names
from fdchannel.address import FdAddress
from fdchannel.capabilities import Capability
from fdchannel.errors import AddressError, ConnectError, TransportError
from fdchannel.transports import fd as fd_transport
from fdchannel.transports._file_stream import FileStream
from fdchannel.transports._one_stream import OneStreamListener
from fdchannel.transports._pipe import PipeStream
from fdchannel.transports._socket import SocketListener, SocketStream, UnixSocketStream

pytestmark = pytest.mark.anyio

TIMEOUT = 10
REPO = Path(fdchannel.__file__).resolve().parent.parent


@dataclass(frozen=True)
class Kind:
    """How to make one kind of descriptor, and what opening it must give."""

    name: str
    #: Returns the descriptor to open; ``stack`` closes everything it made.
    make: Callable[[ExitStack, Path], int]
    stream: type | None = None
    capabilities: Capability = Capability.NONE
    #: A listening socket: a multi-accept listener, refused by connect.
    listening: bool = False
    #: Opening fails, with this text.
    error: str | None = None


def _keep(stack: ExitStack, sock: socket.socket) -> int:
    stack.callback(sock.close)
    return sock.fileno()


def _unix_pair(stack: ExitStack, tmp: Path) -> int:
    ours, _theirs = (_keep(stack, s) for s in socket.socketpair())
    return ours


def _tcp_pair(stack: ExitStack, tmp: Path) -> int:
    server = socket.create_server(("127.0.0.1", 0))
    stack.callback(server.close)
    client = socket.create_connection(server.getsockname())
    conn, _ = server.accept()
    _keep(stack, conn)
    return _keep(stack, client)


def _listening(family: socket.AddressFamily) -> Callable[[ExitStack, Path], int]:
    def make(stack: ExitStack, tmp: Path) -> int:
        sock = socket.socket(family)
        sock.bind(str(tmp / "l") if family == socket.AF_UNIX else ("127.0.0.1", 0))
        sock.listen()
        return _keep(stack, sock)

    return make


def _pipe_end(end: int) -> Callable[[ExitStack, Path], int]:
    def make(stack: ExitStack, tmp: Path) -> int:
        fds = os.pipe()
        for fd in fds:
            stack.callback(os.close, fd)
        return fds[end]

    return make


def _opened(path: str, flags: int) -> Callable[[ExitStack, Path], int]:
    def make(stack: ExitStack, tmp: Path) -> int:
        fd = os.open(path.replace("TMP", str(tmp)), flags)
        stack.callback(os.close, fd)
        return fd

    return make


def _regular(stack: ExitStack, tmp: Path) -> int:
    (tmp / "f").write_bytes(b"")
    return _opened("TMP/f", os.O_RDWR)(stack, tmp)


def _datagram(stack: ExitStack, tmp: Path) -> int:
    return _keep(stack, socket.socket(socket.AF_INET, socket.SOCK_DGRAM))


def _unconnected(stack: ExitStack, tmp: Path) -> int:
    return _keep(stack, socket.socket(socket.AF_INET, socket.SOCK_STREAM))


def _closed(stack: ExitStack, tmp: Path) -> int:
    # The highest number the process may use: free, and nothing will take it meanwhile.
    fd = resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 1
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)
    return fd


UNIX_CAPS = Capability.FD_PASSING | Capability.HALF_CLOSE
KINDS = [
    Kind("unix-socket", _unix_pair, UnixSocketStream, UNIX_CAPS),
    Kind("tcp-socket", _tcp_pair, SocketStream, Capability.HALF_CLOSE),
    Kind("unix-listening", _listening(socket.AF_UNIX), listening=True),
    Kind("tcp-listening", _listening(socket.AF_INET), listening=True),
    Kind("pipe-read-end", _pipe_end(0), PipeStream, Capability.HALF_CLOSE),
    Kind("pipe-write-end", _pipe_end(1), PipeStream, Capability.HALF_CLOSE),
    Kind("regular-file", _regular, FileStream, Capability.SEEKABLE),
    Kind("char-device", _opened("/dev/null", os.O_RDWR), FileStream, Capability.NONE),
    Kind("datagram", _datagram, error="SOCK_DGRAM socket; a stream socket is needed"),
    Kind("unconnected", _unconnected, error="neither connected nor listening"),
    Kind("directory", _opened("TMP", os.O_RDONLY), error="is a directory"),
    Kind("not-open", _closed, error="is not open"),
]


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
async def test_kind_is_detected(kind: Kind, stack: ExitStack, tmp_path: Path) -> None:
    fd = kind.make(stack, tmp_path)
    address = FdAddress(str(fd))
    if kind.error is not None:
        with pytest.raises(ConnectError, match=kind.error):
            await fd_transport.connect(address)
        with pytest.raises(TransportError, match=kind.error) as caught:
            await fd_transport.listen(address)
        assert f"fd:{fd}" in str(caught.value)
        return
    if kind.listening:
        with pytest.raises(ConnectError, match="listening socket"):
            await fd_transport.connect(address)
        async with await fd_transport.listen(address) as listener:
            assert isinstance(listener, SocketListener)
            assert listener.capabilities == Capability.MULTI_ACCEPT
    else:
        async with await fd_transport.connect(address) as stream:
            assert type(stream) is kind.stream
            assert stream.capabilities == kind.capabilities
        async with await fd_transport.listen(address) as one:
            assert isinstance(one, OneStreamListener)
            assert one.stream_capabilities == kind.capabilities
            async with await one.accept() as stream:
                assert type(stream) is kind.stream
    # Opening worked on a copy: the caller's descriptor is still open.
    os.fstat(fd)


async def test_socket_stream_uses_a_copy() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        with anyio.fail_after(TIMEOUT):
            async with await fd_transport.connect(FdAddress(str(ours.fileno()))) as stream:
                assert stream.fileno() != ours.fileno()
                await stream.send(b"ping")
                assert theirs.recv(10) == b"ping"
        # Closing the stream left the caller's socket working.
        ours.send(b"still here")
        assert theirs.recv(20) == b"still here"


async def test_listening_socket_accepts_many() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    with server:
        with anyio.fail_after(TIMEOUT):
            async with await fd_transport.listen(FdAddress(str(server.fileno()))) as listener:
                for i in range(2):
                    # The kernel completes the handshake before accept().
                    with socket.create_connection(server.getsockname()) as client:
                        client.sendall(b"peer %d" % i)
                        async with await listener.accept() as peer:
                            assert await peer.receive() == b"peer %d" % i
        assert server.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)


async def test_pipe_ends() -> None:
    read_fd, write_fd = os.pipe()
    try:
        with anyio.fail_after(TIMEOUT):
            reader = await fd_transport.connect(FdAddress(str(read_fd)))
            writer = await fd_transport.connect(FdAddress(str(write_fd)))
            async with reader, writer:
                await writer.send(b"through the pipe")
                with pytest.raises(fdchannel.CapabilityError, match="read end"):
                    await reader.send(b"x")
                await writer.send_eof()
                with pytest.raises(anyio.ClosedResourceError):
                    await writer.send(b"late")
                # EOF comes once every copy of the write end is closed.
                os.close(write_fd)
                write_fd = -1
                assert await reader.receive() == b"through the pipe"
                with pytest.raises(anyio.EndOfStream):
                    await reader.receive()

            # A write end learns when the last reader is gone.
            other_read, write_fd = os.pipe()
            writer = await fd_transport.connect(FdAddress(str(write_fd)))
            async with writer:
                os.close(other_read)
                await writer.wait_peer_closed()
                with pytest.raises(anyio.EndOfStream):
                    await writer.receive()
                with pytest.raises(anyio.BrokenResourceError):
                    await writer.send(b"nobody reads")
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


async def test_regular_file_at_its_current_offset(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 4, os.SEEK_SET)
        with anyio.fail_after(TIMEOUT):
            listener = await fd_transport.listen(FdAddress(str(fd)))
            async with listener, await listener.accept() as stream:
                assert await stream.receive() == b"456789"
                with pytest.raises(anyio.EndOfStream):
                    await stream.receive()
        # The copy shares the open file description, offset included.
        assert os.lseek(fd, 0, os.SEEK_CUR) == 10
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("name", "message"),
    [("3x", "must be all digits"), ("", "needs a descriptor")],
)
async def test_bad_numbers(name: str, message: str) -> None:
    with pytest.raises(AddressError, match=message):
        await fd_transport.connect(FdAddress(name))


async def test_registered_names() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        fd_transport.register_fd("ctl", ours.fileno())
        try:
            assert fd_transport.registered_fds() == {"ctl": ours.fileno()}
            with anyio.fail_after(TIMEOUT):
                async with await fd_transport.connect(FdAddress("ctl")) as stream:
                    assert Capability.FD_PASSING in stream.capabilities
                    await stream.send(b"by name")
                    assert theirs.recv(10) == b"by name"
        finally:
            assert fd_transport.unregister_fd("ctl") == ours.fileno()
        assert fd_transport.unregister_fd("ctl") is None
        with pytest.raises(ConnectError, match="fd:ctl: no descriptor has that name"):
            await fd_transport.connect(FdAddress("ctl"))
        with pytest.raises(TransportError, match="fd:ctl"):
            await fd_transport.listen(FdAddress("ctl"))
    with pytest.raises(AddressError, match="start with a digit"):
        fd_transport.register_fd("1st", 0)


# Started the way a socket-activating service manager starts a service: the
# descriptors moved to 3 and 4, LISTEN_PID set to the pid that then execs.
LAUNCHER = """
import os, sys
for target, source in enumerate(sys.argv[1:3], start=3):
    os.dup2(int(source), target)
    os.close(int(source))
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.executable, [sys.executable, "-c", sys.argv[3]])
"""

CHILD = """
import json, anyio
from fdchannel.address import FdAddress
from fdchannel.transports import fd

async def main():
    report = {"inherited": fd.inherited_fds()}
    async with await fd.connect(FdAddress("control")) as stream:
        report["control"] = [type(stream).__name__, stream.capabilities.value]
        await stream.send(b"hello from the service")
    async with await fd.listen(FdAddress("web")) as listener:
        report["web"] = [type(listener).__name__, listener.capabilities.value]
    print(json.dumps(report))

anyio.run(main)
"""


def test_socket_activation_in_a_real_child(tmp_path: Path) -> None:
    control, peer = socket.socketpair()
    web = socket.socket(socket.AF_UNIX)
    web.bind(str(tmp_path / "web"))
    web.listen()
    env = dict(os.environ, LISTEN_FDS="2", LISTEN_FDNAMES="control:web")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    with control, peer, web:
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                LAUNCHER,
                str(control.fileno()),
                str(web.fileno()),
                CHILD,
            ],
            pass_fds=(control.fileno(), web.fileno()),
            env=env,
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert result.returncode == 0, result.stderr.decode()
        assert peer.recv(100) == b"hello from the service"
    report = json.loads(result.stdout)
    assert report == {
        "inherited": {"control": 3, "web": 4},
        "control": ["UnixSocketStream", UNIX_CAPS.value],
        "web": ["SocketListener", Capability.MULTI_ACCEPT.value],
    }


def test_inherited_fds_only_for_this_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    # Meant for another process: ignored (and read once, so reset around it).
    monkeypatch.setenv("LISTEN_PID", str(os.getppid()))
    monkeypatch.setenv("LISTEN_FDS", "1")
    fd_names._inherited.cache_clear()
    try:
        assert fd_transport.inherited_fds() == {}
    finally:
        fd_names._inherited.cache_clear()
