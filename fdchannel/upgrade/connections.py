"""The connections a generation still serves: those accepted on its listeners.

Counted from ``/proc/self/fd``: every descriptor that is a connected stream
socket (``SO_TYPE`` ``SOCK_STREAM``, ``SO_ACCEPTCONN`` 0) whose local address
is one of the listeners' (an accepted socket carries its listener's address:
the same unix path, the same port).  So listeners are not counted, nor the
upgrader's own sockets (the control socket's clients, the socketpairs to the
next generation, the event loop's wake-up pairs: unnamed, or on another
address), nor connections the server opened itself (to a database: another
local port).  A connection held under several descriptors counts once (by
its socket inode).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from typing import Any

__all__ = ["accepted", "accepted_peers"]

#: No connection of ours.
_NOT = object()
#: Local addresses that stand for any address of the host.
_WILDCARDS = ("0.0.0.0", "::", "")


def accepted(listeners: Iterable[int]) -> int:
    """How many connections accepted on ``listeners`` (descriptors) this process holds."""
    return len(accepted_peers(listeners))


def accepted_peers(listeners: Iterable[int]) -> list[Any]:
    """The peer address of each connection accepted on ``listeners`` that this
    process holds (``""`` for an unnamed unix peer), once each."""
    local = [found for fd in listeners if (found := _listening_address(fd)) is not None]
    if not local:
        return []
    peers: dict[str, Any] = {}
    for name in _descriptors():
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # closed meanwhile, or the descriptor listdir used
            continue
        if not target.startswith("socket:[") or target in peers:
            continue
        peer = _accepted_on(int(name), local)
        if peer is not _NOT:
            peers[target] = peer
    return list(peers.values())


def _descriptors() -> list[str]:
    try:
        return os.listdir("/proc/self/fd")
    except OSError:
        return []


def _socket(fd: int) -> socket.socket | None:
    """A socket object over a duplicate of ``fd`` (ours to close); None if it is none."""
    try:
        copy = os.dup(fd)
    except OSError:
        return None
    try:
        return socket.socket(fileno=copy)
    except OSError:
        os.close(copy)
        return None


def _listening_address(fd: int) -> tuple[int, Any] | None:
    sock = _socket(fd)
    if sock is None:
        return None
    with sock:
        if sock.type != socket.SOCK_STREAM:
            return None
        try:
            return sock.family, sock.getsockname()
        except OSError:
            return None


def _accepted_on(fd: int, listeners: list[tuple[int, Any]]) -> Any:
    """The peer of ``fd`` if it is a connection accepted on one of ``listeners``; else _NOT."""
    sock = _socket(fd)
    if sock is None:
        return _NOT
    with sock:
        try:
            if sock.type != socket.SOCK_STREAM or sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_ACCEPTCONN
            ):
                return _NOT  # a datagram socket, or a listener
            here = sock.getsockname()
            peer = sock.getpeername()  # ENOTCONN: not connected, nobody to cut
        except OSError:
            return _NOT
        if any(_same(sock.family, here, *listener) for listener in listeners):
            return peer
        return _NOT


def _same(family: int, here: Any, listening_family: int, listening: Any) -> bool:
    """Whether a socket at ``here`` was accepted on a listener at ``listening``."""
    if family != listening_family:
        return False
    if family == socket.AF_UNIX:
        return bool(here) and here == listening  # unnamed: a socketpair's, or a client's end
    if family in (socket.AF_INET, socket.AF_INET6):
        same_port = here[1] == listening[1]
        return same_port and (listening[0] in _WILDCARDS or here[0] == listening[0])
    return bool(here == listening)
