"""Where a generation's listeners come from and go: systemd's socket activation,
a new bind, and the socket file the last generation removes.  Each is found
by what the socket is bound to (its family, its type: stream or datagram,
and its address), never by its name alone."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from typing import Any

import anyio

from ..address import Address, FdAddress, TcpAddress, UnixAddress
from ..credentials import CredentialPolicy
from ..errors import TransportError, UpgradeError
from ..fd_names import duplicate, inherited_fds
from ..sockdiag import bound_to_file
from ..sockets import tune_buffers
from ..tcp_sockets import lookup, port_number, resolving
from ..transports import FdAttribute, Listener, listen
from ..transports.datagram import DatagramListener
from ..unix_sockets import bind_listening, clear_stale, sockaddr
from .addresses import DatagramAddress, ListenAddress, UdpAddress, UnixDatagramAddress

__all__ = ["bind", "from_socket_activation", "moved", "unlink_if_ours", "wrap"]

#: What an address asks for: (AF_UNIX or not, the socket type).
_Kind = tuple[bool, int]


def from_socket_activation(name: str, address: ListenAddress) -> int | None:
    """A duplicate of the descriptor systemd passed under ``name`` or bound to ``address``."""
    passed = inherited_fds()
    fd = passed.get(name)
    if fd is None:
        fd = next((f for f in passed.values() if _bound_to(f, address)), None)
    return None if fd is None else os.dup(fd)


def _copy(fd: int) -> socket.socket | None:
    """A socket object over a duplicate of ``fd`` (ours to close); None for no socket."""
    try:
        copy = os.dup(fd)
    except OSError:
        return None
    try:
        return socket.socket(fileno=copy)
    except OSError:  # not a socket: the duplicate is still ours
        os.close(copy)
        return None


def _local(fd: int) -> tuple[int, int, Any] | None:
    """A socket's family, type and the address it is bound to; None for no socket."""
    sock = _copy(fd)
    if sock is None:
        return None
    with sock:
        try:
            return sock.family, sock.type, sock.getsockname()
        except OSError:
            return None


def _kind(address: Address | DatagramAddress) -> _Kind | None:
    """What ``address`` asks for; None when only the descriptor can say (``fd:``)."""
    if isinstance(address, UnixAddress):
        return True, socket.SOCK_STREAM
    if isinstance(address, UnixDatagramAddress):
        return True, socket.SOCK_DGRAM
    if isinstance(address, TcpAddress):
        return False, socket.SOCK_STREAM
    if isinstance(address, UdpAddress):
        return False, socket.SOCK_DGRAM
    return None


def _bound_to(fd: int, address: ListenAddress) -> bool:
    found = _local(fd)
    if found is None:
        return False
    family, kind, local = found
    if _kind(address) != (family == socket.AF_UNIX, kind):
        return False
    if isinstance(address, UnixAddress | UnixDatagramAddress):
        want = ("\0" + address.path) if address.abstract else address.path
        return isinstance(local, str | bytes) and os.fsdecode(local) == want
    if isinstance(address, TcpAddress | UdpAddress) and family in (
        socket.AF_INET,
        socket.AF_INET6,
    ):
        return str(local[1]) == address.port and _same_host(local[0], address.host)
    return False


def _shown(family: int, kind: int, local: Any) -> str | None:
    """Where a socket is bound, as an address; None for other families."""
    dgram = kind == socket.SOCK_DGRAM
    if family == socket.AF_UNIX:
        where = os.fsdecode(local) if isinstance(local, str | bytes) else ""
        scheme = "unixgram" if dgram else "unix"
        return f"{scheme}:{where}" if not where.startswith("\0") else f"{scheme}:@{where[1:]}"
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None
    host, port = local[0], local[1]
    scheme = "udp" if dgram else "tcp"
    return f"{scheme}:[{host}]:{port}" if ":" in host else f"{scheme}:{host}:{port}"


def moved(fd: int, address: ListenAddress) -> str | None:
    """Where the inherited socket ``fd`` is bound, if that is surely not ``address``
    (the new version listens elsewhere under the same name, or on a socket of
    another kind: stream or datagram, unix or IP); None when it is, or when it
    cannot be told without a lookup (a host name, port 0, ``fd:``)."""
    found = _local(fd)
    if found is None:
        return None
    family, kind, local = found
    shown = _shown(family, kind, local)
    wanted = _kind(address)
    if shown is None or wanted is None:
        return None
    if wanted != (family == socket.AF_UNIX, kind):
        return shown
    if family == socket.AF_UNIX:
        return None if _bound_to(fd, address) else shown
    assert isinstance(address, TcpAddress | UdpAddress)
    if address.port == "0" or not address.port.isdigit():
        return None
    if int(address.port) != local[1]:
        return shown
    try:
        asked = ipaddress.ip_address(address.host.strip("[]"))
    except ValueError:
        return None  # a name: it may well resolve to where the socket is bound
    return None if asked == ipaddress.ip_address(local[0]) else shown


def _same_host(bound: str, asked: str) -> bool:
    try:
        return ipaddress.ip_address(bound) == ipaddress.ip_address(asked.strip("[]"))
    except ValueError:
        return False


def wrap(fd: int, *, policy: CredentialPolicy | None) -> Listener:
    """The listener for ``fd`` (taken over): a DatagramListener for a datagram socket."""
    found = _local(fd)
    if found is not None and found[1] == socket.SOCK_DGRAM:
        return DatagramListener.from_fd(fd, policy=policy)
    return Listener.from_fd(fd, policy=policy)


async def bind(address: ListenAddress, *, mode: int, backlog: int) -> int:
    """A new socket for ``address``; its descriptor is ours."""
    if isinstance(address, UnixAddress):
        sock, _ = bind_listening(address, mode=mode, backlog=backlog)
        return sock.detach()  # the socket file is removed by the last generation
    if isinstance(address, UdpAddress):
        return await _bind_udp(address)
    if isinstance(address, UnixDatagramAddress):
        return _bind_unixgram(address, mode)
    if isinstance(address, FdAddress):
        copy = duplicate(address, TransportError)
        found = _local(copy)
        if found is not None and found[1] == socket.SOCK_DGRAM:
            return copy  # a datagram socket: nothing listens, nothing to check
        os.close(copy)
    async with await listen(address) as listener:
        fd = listener.extra(FdAttribute.fileno, None)
        if fd is None:  # e.g. fd: naming a file or a connected stream
            raise UpgradeError(f"{address} is not a listening socket: it cannot be handed on")
        return os.dup(fd)


async def _bind_udp(address: UdpAddress) -> int:
    """A UDP socket bound to the first of the host's addresses that can be."""
    port = port_number(address, address.port)
    host, options = lookup(address, passive=True)
    options["type"] = socket.SOCK_DGRAM
    with resolving(address, passive=True):
        found = await anyio.getaddrinfo(host, port, **options)
    errors: list[str] = []
    for family, *_, where in found:
        # No SO_REUSEADDR: on a UDP socket it would let another bind the same port.
        sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            if family == socket.AF_INET6:  # dual-stack unless IPv4 is off, as tcp:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(address.ipv4 is False))
            tune_buffers(sock)  # a large queue: datagrams wait there during an upgrade
            sock.bind(where)
        except OSError as exc:
            sock.close()
            errors.append(f"{where}: {exc.strerror}")
            continue
        return sock.detach()
    raise TransportError(f"cannot listen on {address}: {'; '.join(errors)}", address)


def _bind_unixgram(address: UnixDatagramAddress, mode: int) -> int:
    """A unix datagram socket bound to ``address``, its file made with ``mode``."""
    unix = address.unix
    target = sockaddr(unix)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    bound = False
    try:
        # Set before bind: every datagram queued carries its sender's credentials,
        # which the listeners' policy needs (one queued earlier would carry none).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        tune_buffers(sock)
        if not address.abstract:
            try:
                clear_stale(unix, target)
            except TransportError as exc:  # worded for unix:, the same file
                raise TransportError(str(exc).replace(str(unix), str(address), 1), address) from exc
            # The file gets the socket inode's mode minus the umask (see unix_sockets).
            os.fchmod(sock.fileno(), mode)
        try:
            sock.bind(target)
        except OSError as exc:
            raise TransportError(f"cannot listen on {address}: {exc.strerror}", address) from exc
        bound = not address.abstract
        if bound:
            os.chmod(target, mode)  # the umask may have removed bits asked for
        return sock.detach()  # the socket file is removed by the last generation
    except BaseException:
        sock.close()
        if bound:
            with contextlib.suppress(OSError):
                os.unlink(target)
        raise


def unlink_if_ours(fd: int) -> None:
    """Remove a unix socket's file (stream or datagram) if this very socket is bound to it."""
    sock = _copy(fd)
    if sock is None:
        return
    with sock:
        if sock.family != socket.AF_UNIX:
            return
        # A path comes as str, an abstract name as bytes (a NUL first), unnamed as "".
        name = os.fsencode(sock.getsockname())
        if not name or name.startswith(b"\0"):
            return  # unnamed, or abstract: no file
        with contextlib.suppress(OSError):
            found = bound_to_file(name, os.lstat(name))
            if found is not None and os.fstat(fd).st_ino in (*found.listening, *found.other):
                os.unlink(name)
