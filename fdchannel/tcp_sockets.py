"""TCP socket steps both layers share: each never waits.

QEMU's options applied to a socket (``configure``: no Nagle, the
keep-alive settings, large buffers), what ``getaddrinfo`` is asked for an
address (``lookup``) and its failures typed (``resolving``), and binding
the first free port of PORT..TO (``PortSearch``).  The async transport
(``fdchannel.transports.tcp``) and the blocking one add their way of
resolving and waiting.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
from collections.abc import Iterator

from .address import InetAddress, TcpAddress, family_for
from .errors import AddressError, ConnectError, TransportError
from .qemu.cstring import bounded_int
from .sockets import tune_buffers

__all__ = [
    "BACKLOG",
    "PortSearch",
    "Resolved",
    "bind_socket",
    "configure",
    "lookup",
    "port_number",
    "resolving",
]

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


Resolved = list[tuple[socket.AddressFamily, object]]


def lookup(address: InetAddress, passive: bool) -> tuple[str | None, dict[str, int]]:
    """The host and the getaddrinfo options both layers resolve ``address`` with."""
    flags = socket.AI_PASSIVE if passive else 0
    if address.numeric:
        flags |= socket.AI_NUMERICHOST
    return address.host or None, {
        "family": family_for(address),
        "type": socket.SOCK_STREAM,
        "flags": flags,
    }


@contextlib.contextmanager
def resolving(address: InetAddress, passive: bool) -> Iterator[None]:
    """Turn a failed name lookup into the transport's errors."""
    try:
        yield
    except socket.gaierror as exc:
        error = ConnectError if not passive else TransportError
        raise error(f"cannot resolve {address}: {exc.strerror}", address) from exc
    except UnicodeError as exc:
        # The host name is encoded with IDNA first, which refuses some text.
        raise AddressError(
            f"{address}: host {address.host!r} is not a valid name: {exc}", str(address)
        ) from exc


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


class PortSearch:
    """Binding the first free port of PORT..TO (one port without ``to=``), for both layers::

    search = PortSearch(address)
    for port in search.ports:
        for family, sockaddr in resolve(port):
            bound = search.bind(family, sockaddr)
            if bound is not None:
                return Listener(*bound)
    raise search.failure()
    """

    def __init__(self, address: TcpAddress) -> None:
        self.address = address
        first = port_number(address, address.port)
        last = first if address.to is None or first == 0 else address.to
        if last < first or last > 65535:
            raise AddressError(
                f"{address}: to={address.to} must be from {first} to 65535", str(address)
            )
        self.ports = [str(port) for port in range(first, last + 1)]
        self.errors: list[str] = []

    def bind(
        self, family: socket.AddressFamily, sockaddr: object
    ) -> tuple[socket.socket, TcpAddress] | None:
        """A listening socket and the address it is bound to; None (kept) if it is taken."""
        try:
            sock = bind_socket(family, sockaddr, self.address)
        except OSError as exc:
            self.errors.append(f"{sockaddr}: {exc.strerror}")
            return None
        host, bound_port = sock.getsockname()[:2]
        return sock, dataclasses.replace(self.address, host=host, port=str(bound_port), to=None)

    def failure(self) -> TransportError:
        return TransportError(
            f"cannot listen on {self.address}: {'; '.join(self.errors)}", self.address
        )
