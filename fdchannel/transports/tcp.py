"""TCP over IPv4 and IPv6, with QEMU's ``to=``, ``ipv4``/``ipv6`` and keep-alive options."""

from __future__ import annotations

import dataclasses
import socket

import anyio

from ..address import InetAddress, TcpAddress, family_for
from ..errors import AddressError, ConnectError, TransportError
from ..qemu.cstring import bounded_int
from ..sockets import tune_buffers
from ._socket import SocketListener, SocketStream, async_connect

__all__ = ["connect", "listen"]

BACKLOG = 4096


def port_number(address: InetAddress, text: str) -> int:
    # ASCII digits only: str.isdigit() admits other scripts' digits, which
    # getaddrinfo (and so QEMU) does not take as a port.
    if not (text.isascii() and text.isdigit()) or bounded_int(text) > 65535:
        raise AddressError(
            f"{address}: port {text!r} is not a number from 0 to 65535", str(address)
        )
    return int(text)


def _apply_keepalive(sock: socket.socket, address: InetAddress) -> None:
    if address.keep_alive:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for value, option in (
        (address.keep_alive_count, socket.TCP_KEEPCNT),
        (address.keep_alive_idle, socket.TCP_KEEPIDLE),
        (address.keep_alive_interval, socket.TCP_KEEPINTVL),
    ):
        if value is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def configure(sock: socket.socket, address: InetAddress) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _apply_keepalive(sock, address)
    tune_buffers(sock)


async def _resolve(
    address: InetAddress, port: str, passive: bool
) -> list[tuple[socket.AddressFamily, object]]:
    flags = socket.AI_PASSIVE if passive else 0
    if address.numeric:
        flags |= socket.AI_NUMERICHOST
    try:
        infos = await anyio.getaddrinfo(
            address.host or None,
            port,
            family=family_for(address),
            type=socket.SOCK_STREAM,
            flags=flags,
        )
    except socket.gaierror as exc:
        error = ConnectError if not passive else TransportError
        raise error(f"cannot resolve {address}: {exc.strerror}", address) from exc
    except UnicodeError as exc:
        # The host name is encoded with IDNA first, which refuses some text.
        raise AddressError(
            f"{address}: host {address.host!r} is not a valid name: {exc}", str(address)
        ) from exc
    return [(info[0], info[4]) for info in infos]


async def connect(address: TcpAddress) -> SocketStream:
    """Connect to the first of the host's addresses that answers."""
    errors: list[str] = []
    for family, sockaddr in await _resolve(address, address.port, passive=False):
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            configure(sock, address)
            await async_connect(sock, sockaddr, address)
            return SocketStream(sock, address)
        except ConnectError as exc:
            sock.close()
            errors.append(str(exc.__cause__ or exc))
        except BaseException:
            sock.close()
            raise
    raise ConnectError(f"cannot connect to {address}: {'; '.join(errors)}", address)


class TcpListener(SocketListener):
    """A TCP listener; accepted sockets get the address's keep-alive options."""

    def __init__(self, sock: socket.socket, address: TcpAddress) -> None:
        super().__init__(sock, address, on_accept=lambda conn: configure(conn, address))


def bind_socket(
    family: socket.AddressFamily, sockaddr: object, address: InetAddress
) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # Dual-stack unless IPv4 was turned off (QEMU does the same).
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(address.ipv4 is False))
        sock.bind(sockaddr)  # type: ignore[arg-type]
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


async def listen(address: TcpAddress) -> TcpListener:
    """Listen on the first free port of PORT..TO (one port without ``to=``).

    Port 0 lets the kernel choose; ``listener.address`` reports the real port.
    """
    first = port_number(address, address.port)
    last = first if address.to is None or first == 0 else address.to
    if last < first or last > 65535:
        raise AddressError(
            f"{address}: to={address.to} must be from {first} to 65535", str(address)
        )
    errors: list[str] = []
    for port in range(first, last + 1):
        for family, sockaddr in await _resolve(address, str(port), passive=True):
            try:
                sock = bind_socket(family, sockaddr, address)
            except OSError as exc:
                errors.append(f"{sockaddr}: {exc.strerror}")
                continue
            host, bound_port = sock.getsockname()[:2]
            actual = dataclasses.replace(address, host=host, port=str(bound_port), to=None)
            return TcpListener(sock, actual)
    raise TransportError(f"cannot listen on {address}: {'; '.join(errors)}", address)
