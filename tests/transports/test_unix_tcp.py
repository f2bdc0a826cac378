"""The unix transport's security defaults and the tcp transport's QEMU options."""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

import anyio
import pytest

import fdchannel
from fdchannel import blocking
from fdchannel.address import TcpAddress, UnixAddress
from fdchannel.blocking._listener import SocketListener as blocking_SocketListener
from fdchannel.errors import AddressError, ConnectError, TransportError
from fdchannel.transports import unix
from fdchannel.transports._socket import SocketListener

pytestmark = pytest.mark.anyio
TIMEOUT = 10
NOBODY = 65534


@pytest.mark.parametrize(
    ("mode", "umask"),
    [(0o600, 0o022), (0o660, 0o077), (0o600, 0o000)],
)
async def test_socket_file_mode(sockdir: Path, mode: int, umask: int) -> None:
    old = os.umask(umask)
    try:
        async with await fdchannel.listen(UnixAddress(str(sockdir / "s")), mode=mode):
            assert stat.S_IMODE(os.stat(sockdir / "s").st_mode) == mode
    finally:
        os.umask(old)
    assert not (sockdir / "s").exists(), "the listener removes its socket file"


async def test_stale_socket_is_replaced(sockdir: Path) -> None:
    path = sockdir / "s"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    async with await fdchannel.listen(UnixAddress(str(path))) as listener:
        with anyio.fail_after(TIMEOUT):
            accepted: list[fdchannel.transports.Stream] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: _append(accepted, listener.accept()))
                client = await fdchannel.connect(UnixAddress(str(path)))
        await client.aclose()
        await accepted[0].aclose()


async def test_live_socket_is_never_stolen(sockdir: Path) -> None:
    path = UnixAddress(str(sockdir / "s"))
    async with await fdchannel.listen(path):
        with pytest.raises(TransportError, match="another process is listening"):
            await fdchannel.listen(path)
        assert (sockdir / "s").exists()


async def test_regular_file_is_not_replaced(sockdir: Path) -> None:
    (sockdir / "f").write_text("data")
    with pytest.raises(TransportError, match="not a socket"):
        await fdchannel.listen(UnixAddress(str(sockdir / "f")))
    assert (sockdir / "f").read_text() == "data"


@pytest.mark.parametrize(
    ("address", "limit"),
    [
        (UnixAddress("/tmp/" + "x" * 103), "107"),
        (UnixAddress("x" * 108, abstract=True), "107"),
    ],
)
async def test_path_too_long_names_the_limit(address: UnixAddress, limit: str) -> None:
    with pytest.raises(AddressError, match=limit):
        await fdchannel.listen(address)
    with pytest.raises(AddressError, match=limit):
        await fdchannel.connect(address)


async def test_connect_to_missing_socket(sockdir: Path) -> None:
    with pytest.raises(ConnectError) as info:
        await fdchannel.connect(UnixAddress(str(sockdir / "missing")))
    assert info.value.address == UnixAddress(str(sockdir / "missing"))


@pytest.mark.parametrize("layer", ["async", "blocking"])
async def test_connect_to_a_full_backlog_fails(sockdir: Path, layer: str) -> None:
    # A unix listener whose backlog is full makes a non-blocking connect fail
    # with EAGAIN at once: connect backs off, then raises.  (The async layer
    # once took EAGAIN for a TCP-style connect in progress and returned an
    # unconnected stream, whose first send failed.)
    address = UnixAddress(str(sockdir / "s"))
    connected: list[fdchannel.transports.Stream | blocking.Stream] = []
    async with await fdchannel.listen(address, backlog=1):
        try:
            with pytest.raises(ConnectError, match="temporarily unavailable"):  # noqa: PT012
                for _ in range(8):  # the kernel queues backlog + 1 of them
                    if layer == "async":
                        connected.append(await fdchannel.connect(address))
                    else:
                        connected.append(blocking.connect(address, timeout=TIMEOUT))
            assert 1 <= len(connected) <= 3
            for stream in connected:
                assert isinstance(stream.fileno(), int)
                with socket.socket(fileno=os.dup(stream.fileno())) as sock:
                    assert sock.getpeername() == str(sockdir / "s")  # connected, every one
        finally:
            for stream in connected:
                if isinstance(stream, blocking.Stream):
                    stream.close()
                else:
                    await stream.aclose()


async def test_peer_credentials_are_reported(sockdir: Path) -> None:
    async with await fdchannel.listen(UnixAddress(str(sockdir / "s"))) as listener:
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                accepted: list[fdchannel.transports.Stream] = []
                tg.start_soon(lambda: _append(accepted, listener.accept()))
                client = await fdchannel.connect(listener.address)
        server = accepted[0]
        assert isinstance(server, fdchannel.transports._socket.UnixSocketStream)
        assert server.peer_credentials == (os.getpid(), os.geteuid(), os.getegid())
        await client.aclose()
        await server.aclose()


async def _append(into: list[fdchannel.transports.Stream], op: object) -> None:
    into.append(await op)  # type: ignore[misc]


async def test_policy_helper() -> None:
    me = os.geteuid()
    assert unix.same_user_or_root(unix.Credentials(1, me, 0))
    assert unix.same_user_or_root(unix.Credentials(1, 0, 0))
    assert not unix.same_user_or_root(unix.Credentials(1, NOBODY if me != NOBODY else 1, 0))


async def test_tcp_to_takes_first_free_port() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        address = TcpAddress("127.0.0.1", str(port), to=min(port + 20, 65535))
        try:
            listener = await fdchannel.listen(address)
        except TransportError:
            pytest.skip("no free port above the busy one")
        async with listener:
            assert isinstance(listener.address, TcpAddress)
            assert port < int(listener.address.port) <= port + 20


async def test_tcp_port_zero_reports_the_port() -> None:
    async with await fdchannel.listen(TcpAddress("127.0.0.1", "0")) as listener:
        assert isinstance(listener.address, TcpAddress)
        assert int(listener.address.port) > 0


@pytest.mark.parametrize(
    ("address", "family"),
    [
        (TcpAddress("localhost", "0", ipv4=True), socket.AF_INET),
        (TcpAddress("localhost", "0", ipv6=False), socket.AF_INET),
        # "localhost" may have no IPv6 address here; "::1" always does.
        (TcpAddress("::1", "0", ipv6=True), socket.AF_INET6),
        (TcpAddress("::1", "0", ipv4=False), socket.AF_INET6),
    ],
)
async def test_tcp_family_restrictions(address: TcpAddress, family: socket.AddressFamily) -> None:
    try:
        listener = await fdchannel.listen(address)
    except TransportError as exc:
        pytest.skip(f"localhost has no address of this family here: {exc}")
    async with listener:
        assert listener.socket.family == family  # type: ignore[attr-defined]


async def test_tcp_no_family_left() -> None:
    with pytest.raises(AddressError, match="ipv4=off and ipv6=off"):
        await fdchannel.listen(TcpAddress("127.0.0.1", "0", ipv4=False, ipv6=False))


async def test_tcp_keep_alive_applied_both_sides() -> None:
    address = TcpAddress("127.0.0.1", "0", keep_alive=True, keep_alive_idle=30)
    async with await fdchannel.listen(address) as listener:
        with anyio.fail_after(TIMEOUT):
            accepted: list[fdchannel.transports.Stream] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: _append(accepted, listener.accept()))
                client = await fdchannel.connect(listener.address)
        for stream in (client, accepted[0]):
            sock = stream.socket  # type: ignore[attr-defined]
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
            await stream.aclose()


@pytest.mark.parametrize("port", ["http-nonexistent-service", "70000"])
async def test_tcp_bad_port_at_use(port: str) -> None:
    with pytest.raises((AddressError, ConnectError)):
        await fdchannel.connect(TcpAddress("127.0.0.1", port))


async def test_tcp_connection_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectError, match=str(port)):
        await fdchannel.connect(TcpAddress("127.0.0.1", str(port)))


def _failing_setup(conn: socket.socket) -> None:
    raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))


@pytest.mark.parametrize("layer", ["async", "blocking"])
async def test_accept_setup_failure_is_a_transport_error(layer: str) -> None:
    # Fault injection: the kernel rarely refuses a socket option on a fresh
    # peer, but when it does, accept raises the transport's error (not a bare
    # OSError) and the peer's socket is closed (the fd check sees to that).
    server = socket.create_server(("127.0.0.1", 0))
    address = TcpAddress("127.0.0.1", str(server.getsockname()[1]))
    with socket.create_connection(server.getsockname()[:2], TIMEOUT):
        if layer == "async":
            listener = SocketListener(server, address, on_accept=_failing_setup)
            with anyio.fail_after(TIMEOUT), pytest.raises(TransportError, match="setting up"):
                await listener.accept()
            await listener.aclose()
        else:
            refused = pytest.raises(TransportError, match="setting up")
            with blocking_SocketListener(server, address, on_accept=_failing_setup) as lst, refused:
                lst.accept(timeout=TIMEOUT)
