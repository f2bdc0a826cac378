"""``tcp:`` without an event loop (main channels): the async transport's options and binding."""

from __future__ import annotations

import os
import socket

from ..address import InetAddress, TcpAddress
from ..errors import ConnectError
from ..sockets import ConnectAttempts
from ..tcp_sockets import PortSearch, Resolved, configure, lookup, resolving
from ._deadline import WRITABLE, Deadline, wait_ready
from ._listener import SocketListener
from ._stream import Stream

__all__ = ["connect", "listen"]


def _resolve(address: InetAddress, port: str, passive: bool) -> Resolved:
    """getaddrinfo, as the async transport asks it (name lookups have no timeout)."""
    host, options = lookup(address, passive)
    with resolving(address, passive):
        infos = socket.getaddrinfo(host, port, **options)
    return [(info[0], info[4]) for info in infos]


def _connect_one(
    sock: socket.socket, sockaddr: object, address: TcpAddress, deadline: Deadline
) -> None:
    sock.setblocking(False)
    try:
        sock.connect(sockaddr)  # type: ignore[arg-type]
        return
    except BlockingIOError:
        pass  # EINPROGRESS: the outcome comes as writability plus SO_ERROR
    except OSError as exc:
        raise ConnectError(f"cannot connect to {address}: {exc.strerror}", address) from exc
    wait_ready(sock.fileno(), WRITABLE, deadline, f"connecting to {address}", address)
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        cause = OSError(err, os.strerror(err))
        raise ConnectError(f"cannot connect to {address}: {cause.strerror}", address) from cause


def connect(address: TcpAddress, deadline: Deadline) -> Stream:
    """Connect to the first of the host's addresses that answers."""
    attempts = ConnectAttempts(address)
    for family, sockaddr in _resolve(address, address.port, passive=False):
        with attempts.socket(family) as sock:
            configure(sock, address)
            _connect_one(sock, sockaddr, address, deadline)
            return Stream(sock, address)
    raise attempts.failure()


def listen(address: TcpAddress) -> SocketListener:
    """Listen on the first free port of PORT..TO; port 0 lets the kernel choose."""
    search = PortSearch(address)
    for port in search.ports:
        for family, sockaddr in _resolve(address, port, passive=True):
            bound = search.bind(family, sockaddr)
            if bound is not None:
                sock, actual = bound
                return SocketListener(sock, actual, on_accept=lambda conn: configure(conn, address))
    raise search.failure()
