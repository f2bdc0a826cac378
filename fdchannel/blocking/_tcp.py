"""``tcp:`` without an event loop (main channels): the async transport's options and binding."""

from __future__ import annotations

import dataclasses
import os
import socket

from ..address import InetAddress, TcpAddress, family_for
from ..errors import AddressError, ConnectError, TransportError
from ..transports.tcp import bind_socket, configure, port_number
from ._deadline import WRITABLE, Deadline, wait_ready
from ._listener import SocketListener
from ._stream import Stream

__all__ = ["connect", "listen"]

Resolved = list[tuple[socket.AddressFamily, object]]


def _resolve(address: InetAddress, port: str, passive: bool) -> Resolved:
    """getaddrinfo, as the async transport asks it (name lookups have no timeout)."""
    flags = socket.AI_PASSIVE if passive else 0
    if address.numeric:
        flags |= socket.AI_NUMERICHOST
    try:
        infos = socket.getaddrinfo(
            address.host or None,
            port,
            family=family_for(address),
            type=socket.SOCK_STREAM,
            flags=flags,
        )
    except socket.gaierror as exc:
        error = TransportError if passive else ConnectError
        raise error(f"cannot resolve {address}: {exc.strerror}", address) from exc
    except UnicodeError as exc:
        # The host name is encoded with IDNA first, which refuses some text.
        raise AddressError(
            f"{address}: host {address.host!r} is not a valid name: {exc}", str(address)
        ) from exc
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
    errors: list[str] = []
    for family, sockaddr in _resolve(address, address.port, passive=False):
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            configure(sock, address)
            _connect_one(sock, sockaddr, address, deadline)
            return Stream(sock, address)
        except ConnectError as exc:
            sock.close()
            errors.append(str(exc.__cause__ or exc))
        except BaseException:
            sock.close()
            raise
    raise ConnectError(f"cannot connect to {address}: {'; '.join(errors)}", address)


def listen(address: TcpAddress) -> SocketListener:
    """Listen on the first free port of PORT..TO; port 0 lets the kernel choose."""
    first = port_number(address, address.port)
    last = first if address.to is None or first == 0 else address.to
    if last < first or last > 65535:
        raise AddressError(
            f"{address}: to={address.to} must be from {first} to 65535", str(address)
        )
    errors: list[str] = []
    for port in range(first, last + 1):
        for family, sockaddr in _resolve(address, str(port), passive=True):
            try:
                sock = bind_socket(family, sockaddr, address)
            except OSError as exc:
                errors.append(f"{sockaddr}: {exc.strerror}")
                continue
            host, bound_port = sock.getsockname()[:2]
            actual = dataclasses.replace(address, host=host, port=str(bound_port), to=None)
            return SocketListener(sock, actual, on_accept=lambda conn: configure(conn, address))
    raise TransportError(f"cannot listen on {address}: {'; '.join(errors)}", address)
