"""The vsock transport: number checks, listening, and connecting within a deadline."""

from __future__ import annotations

import errno
import functools
import os
import socket

import anyio
import pytest

from fdchannel.address import VsockAddress
from fdchannel.capabilities import Capability
from fdchannel.errors import AddressError, ConnectError, TransportError
from fdchannel.transports import vsock
from fdchannel.transports._socket import SocketListener, SocketStream

pytestmark = pytest.mark.anyio

ANY = str(vsock.VMADDR_CID_ANY)
VMADDR_CID_LOCAL = 1
HAVE_VSOCK = hasattr(socket, "AF_VSOCK")
needs_vsock = pytest.mark.skipif(not HAVE_VSOCK, reason="no AF_VSOCK in this Python")


def _vsock_usable() -> str | None:
    """Why vsock sockets cannot be made here, or None when they can."""
    if not HAVE_VSOCK:
        return "no AF_VSOCK in this Python"
    try:
        socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close()
    except OSError as exc:
        return f"vsock sockets are not available here: {exc.strerror}"
    return None


def port_of(listener: SocketListener) -> str:
    assert isinstance(listener.address, VsockAddress)
    return listener.address.port


@functools.cache
def _loopback_unavailable() -> str | None:
    """Probe once whether a vsock connection to ourselves (CID 1) completes."""
    if reason := _vsock_usable():
        return reason
    with socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM) as server:
        server.bind((vsock.VMADDR_CID_ANY, vsock.VMADDR_PORT_ANY))
        server.listen()
        with socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM) as client:
            client.settimeout(1.0)
            try:
                client.connect((VMADDR_CID_LOCAL, server.getsockname()[1]))
            except OSError as exc:
                return f"vsock loopback (CID 1) does not connect here: {exc}"
    return None


@pytest.mark.parametrize(
    ("cid", "port", "expected"),
    [
        ("3", "1024", (3, 1024)),
        ("0", "0", (0, 0)),
        (ANY, "4294967295", (vsock.VMADDR_CID_ANY, 4294967295)),
        (" +2", "007", (2, 7)),  # what strtoull, and so QEMU, takes
    ],
)
def test_numbers_accepted(cid: str, port: str, expected: tuple[int, int]) -> None:
    assert vsock.sockaddr(VsockAddress(cid, port)) == expected


@pytest.mark.parametrize(
    ("cid", "port", "message"),
    [
        ("-1", "1", "cid '-1' .*4294967295 \\(VMADDR_CID_ANY\\)"),
        ("4294967296", "1", "cid '4294967296' is not an unsigned 32-bit"),
        ("3", "4294967296", "port '4294967296'"),
        ("0x10", "1", "cid '0x10'"),
        ("3", "", "port ''"),
        ("3 ", "1", "cid '3 '"),
        ("3", "1.5", "port '1.5'"),
        ("3", "-0", "port '-0'"),
        ("\u0663", "1", "cid"),  # a digit, but not an ASCII one
    ],
)
async def test_numbers_refused_at_use(cid: str, port: str, message: str) -> None:
    address = VsockAddress(cid, port)
    with pytest.raises(AddressError, match=message) as caught:
        await vsock.listen(address)
    assert caught.value.uri == str(address)
    with pytest.raises(AddressError, match=message):
        await vsock.connect(address)


@needs_vsock
async def test_listen_reports_the_chosen_port() -> None:
    if reason := _vsock_usable():
        pytest.skip(reason)
    async with await vsock.listen(VsockAddress(ANY, "0")) as listener:
        assert isinstance(listener, SocketListener)
        assert listener.capabilities == Capability.MULTI_ACCEPT
        assert listener.stream_capabilities == Capability.HALF_CLOSE
        assert isinstance(listener.address, VsockAddress)
        assert listener.address.cid == ANY
        port = int(listener.address.port)
        assert port not in (0, vsock.VMADDR_PORT_ANY)
        assert listener.socket.getsockname() == (vsock.VMADDR_CID_ANY, port)
        with pytest.raises(TransportError, match="Address already in use"):
            await vsock.listen(VsockAddress(ANY, str(port)))
    with pytest.raises(anyio.ClosedResourceError):
        await listener.accept()


@needs_vsock
async def test_connect_ends_within_a_deadline() -> None:
    if reason := _vsock_usable():
        pytest.skip(reason)
    async with await vsock.listen(VsockAddress(ANY, "0")) as listener:
        target = VsockAddress(str(VMADDR_CID_LOCAL), port_of(listener))
        # Either loopback works and this connects, or the wait is cancelled
        # cleanly (the half-made socket is closed: the fd check sees to it).
        with anyio.move_on_after(0.3):
            stream = await vsock.connect(target)
            await stream.aclose()
    # A port nobody listens on: refused, or at worst not answered in time.
    with anyio.move_on_after(3) as scope:
        with pytest.raises(ConnectError, match="cannot connect to"):
            await vsock.connect(VsockAddress("2", "4294967294"))
    if scope.cancelled_caught:
        pytest.skip("the host CID does not answer here; refusal not observable")


@needs_vsock
async def test_pair_over_loopback() -> None:
    if reason := _loopback_unavailable():
        pytest.skip(reason)
    with anyio.fail_after(10):
        async with await vsock.listen(VsockAddress(ANY, "0")) as listener:
            incoming: list[object] = []

            async def accept() -> None:
                incoming.append(await listener.accept())

            async with anyio.create_task_group() as tg:
                tg.start_soon(accept)
                out = await vsock.connect(VsockAddress("1", port_of(listener)))
            inc = incoming[0]
            assert isinstance(inc, SocketStream)
            async with out, inc:
                assert out.capabilities == Capability.HALF_CLOSE
                await out.send(b"over vsock")
                await out.send_eof()
                assert await inc.receive() == b"over vsock"
                with pytest.raises(anyio.EndOfStream):
                    await inc.receive()
                await inc.aclose()
                await out.wait_peer_closed()


async def test_unsupported_host(monkeypatch: pytest.MonkeyPatch) -> None:
    address = VsockAddress("3", "1024")
    if HAVE_VSOCK:
        real = socket.socket

        def no_vsock(family: int = -1, *args: object, **kwargs: object) -> socket.socket:
            if family == socket.AF_VSOCK:
                raise OSError(errno.EAFNOSUPPORT, os.strerror(errno.EAFNOSUPPORT))
            return real(family, *args, **kwargs)  # type: ignore[arg-type]

        with monkeypatch.context() as patch:
            patch.setattr(socket, "socket", no_vsock)
            with pytest.raises(TransportError, match="vsock is not supported on this host"):
                await vsock.listen(address)
            with pytest.raises(ConnectError, match="vsock is not supported on this host"):
                await vsock.connect(address)
        monkeypatch.delattr(socket, "AF_VSOCK")
    with pytest.raises(TransportError, match="vsock is not supported on this host"):
        await vsock.listen(address)
    with pytest.raises(ConnectError, match="vsock is not supported on this host"):
        await vsock.connect(address)
