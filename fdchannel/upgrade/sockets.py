"""Where a generation's listeners come from and go: systemd's socket activation,
a new bind, and the socket file the last generation removes.  Each is found
by what the socket is bound to, never by its name alone."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from typing import Any

from ..address import Address, TcpAddress, UnixAddress
from ..errors import UpgradeError
from ..fd_names import inherited_fds
from ..sockdiag import bound_to_file
from ..transports import FdAttribute, listen
from ..unix_sockets import bind_listening

__all__ = ["bind", "from_socket_activation", "moved", "unlink_if_ours"]


def from_socket_activation(name: str, address: Address) -> int | None:
    """A duplicate of the descriptor systemd passed under ``name`` or bound to ``address``."""
    passed = inherited_fds()
    fd = passed.get(name)
    if fd is None:
        fd = next((f for f in passed.values() if _bound_to(f, address)), None)
    return None if fd is None else os.dup(fd)


def _local(fd: int) -> tuple[int, Any] | None:
    """A socket's family and the address it is bound to; None for no socket."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    with sock:
        try:
            return sock.family, sock.getsockname()
        except OSError:
            return None


def _bound_to(fd: int, address: Address) -> bool:
    found = _local(fd)
    if found is None:
        return False
    family, local = found
    if isinstance(address, UnixAddress) and family == socket.AF_UNIX:
        want = ("\0" + address.path) if address.abstract else address.path
        return isinstance(local, str | bytes) and os.fsdecode(local) == want
    if isinstance(address, TcpAddress) and family in (socket.AF_INET, socket.AF_INET6):
        return str(local[1]) == address.port and _same_host(local[0], address.host)
    return False


def moved(fd: int, address: Address) -> str | None:
    """Where the inherited listener ``fd`` is bound, if that is surely not ``address``
    (the new version listens elsewhere under the same name); None when it is, or
    when it cannot be told without a lookup (a host name, port 0, ``fd:``)."""
    found = _local(fd)
    if found is None:
        return None
    family, local = found
    if family == socket.AF_UNIX:
        where = os.fsdecode(local) if isinstance(local, str | bytes) else ""
        shown = f"unix:{where}" if not where.startswith("\0") else f"unix:@{where[1:]}"
        if isinstance(address, TcpAddress):
            return shown
        return None if not isinstance(address, UnixAddress) or _bound_to(fd, address) else shown
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None
    host, port = local[0], local[1]
    shown = f"tcp:[{host}]:{port}" if ":" in host else f"tcp:{host}:{port}"
    if isinstance(address, UnixAddress):
        return shown
    if not isinstance(address, TcpAddress) or address.port == "0":
        return None
    if not address.port.isdigit() or int(address.port) != port:
        return shown if address.port.isdigit() else None
    try:
        asked = ipaddress.ip_address(address.host.strip("[]"))
    except ValueError:
        return None  # a name: it may well resolve to where the socket is bound
    return None if asked == ipaddress.ip_address(host) else shown


def _same_host(bound: str, asked: str) -> bool:
    try:
        return ipaddress.ip_address(bound) == ipaddress.ip_address(asked.strip("[]"))
    except ValueError:
        return False


async def bind(address: Address, *, mode: int, backlog: int) -> int:
    """A new listening socket for ``address``; its descriptor is ours."""
    if isinstance(address, UnixAddress):
        sock, _ = bind_listening(address, mode=mode, backlog=backlog)
        return sock.detach()  # the socket file is removed by the last generation
    async with await listen(address) as listener:
        fd = listener.extra(FdAttribute.fileno, None)
        if fd is None:  # e.g. fd: naming a file or a connected stream
            raise UpgradeError(f"{address} is not a listening socket: it cannot be handed on")
        return os.dup(fd)


def unlink_if_ours(fd: int) -> None:
    """Remove a unix listener's socket file if this very socket is bound to it."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    with sock:
        if sock.family != socket.AF_UNIX:
            return
        path = sock.getsockname()
        if not path or (isinstance(path, str) and path.startswith("\0")):
            return  # abstract or unnamed
        name = os.fsencode(path)
        with contextlib.suppress(OSError):
            found = bound_to_file(name, os.lstat(name))
            if found is not None and os.fstat(fd).st_ino in found.listening:
                os.unlink(name)
