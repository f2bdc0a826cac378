"""TCP over IPv4 and IPv6, with QEMU's ``to=``, ``ipv4``/``ipv6`` and keep-alive options.

The steps that never wait (the options, the lookup's arguments, the port
search) are ``fdchannel.tcp_sockets``'s, shared with the blocking layer.
"""

from __future__ import annotations

import socket

import anyio

from ..address import InetAddress, TcpAddress
from ..sockets import ConnectAttempts
from ..tcp_sockets import PortSearch, Resolved, configure, lookup, resolving
from ._socket import SocketListener, SocketStream, async_connect

__all__ = ["connect", "listen"]


async def _resolve(address: InetAddress, port: str, passive: bool) -> Resolved:
    host, options = lookup(address, passive)
    with resolving(address, passive):
        infos = await anyio.getaddrinfo(host, port, **options)
    return [(info[0], info[4]) for info in infos]


async def connect(address: TcpAddress) -> SocketStream:
    """Connect to the first of the host's addresses that answers."""
    attempts = ConnectAttempts(address)
    for family, sockaddr in await _resolve(address, address.port, passive=False):
        with attempts.socket(family) as sock:
            configure(sock, address)
            await async_connect(sock, sockaddr, address)
            return SocketStream(sock, address)
    raise attempts.failure()


class TcpListener(SocketListener):
    """A TCP listener; accepted sockets get the address's keep-alive options."""

    def __init__(self, sock: socket.socket, address: TcpAddress) -> None:
        super().__init__(sock, address, on_accept=lambda conn: configure(conn, address))


async def listen(address: TcpAddress) -> TcpListener:
    """Listen on the first free port of PORT..TO (one port without ``to=``).

    Port 0 lets the kernel choose; ``listener.address`` reports the real port.
    """
    search = PortSearch(address)
    for port in search.ports:
        for family, sockaddr in await _resolve(address, port, passive=True):
            bound = search.bind(family, sockaddr)
            if bound is not None:
                return TcpListener(*bound)
    raise search.failure()
