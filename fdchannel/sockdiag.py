"""Is a socket bound to this file?  Asked of the kernel, never by connecting.

A unix listener replaces a stale socket file, one no socket is bound to
any more.  Connecting to find out would hand a live one-shot listener (an
``Incoming``, ``recv``, ``probe --listen``, QEMU's own cpr listener) a
peer it takes for the real one, and fail the real handoff.  So the kernel
is asked instead: sock_diag (NETLINK_SOCK_DIAG, the interface behind
``ss -x``) lists every unix socket with the device and inode of the file
it is bound to; ``/proc/net/unix``, which lists the path each socket was
bound with, is the fallback.  Both see the sockets of this network
namespace only.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass
from enum import Enum

__all__ = ["Binding", "Bound", "binding", "bound_to_file", "bound_to_name", "peer_inode"]

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_UDIAG_SHOW_VFS = 0x2
_UDIAG_SHOW_PEER = 0x4
_UNIX_DIAG_VFS = 1
_UNIX_DIAG_PEER = 2
_TCP_LISTEN = 10
_ALL = 0xFFFFFFFF  # every state bit; a cookie of ~0 matches any socket
_SO_ACCEPTCON = 0x10000  # /proc/net/unix's Flags bit for a listening socket

_NLMSG = struct.Struct("=IHHII")  # struct nlmsghdr
_REQUEST = struct.Struct("=BBHIII2I")  # struct unix_diag_req
_REPLY = struct.Struct("=BBBBI2I")  # struct unix_diag_msg
_ATTR = struct.Struct("=HH")  # struct rtattr
_VFS = struct.Struct("=II")  # struct unix_diag_vfs: inode, device


class Binding(Enum):
    """What the kernel says of a socket file."""

    NONE = "no socket is bound to it"
    BOUND = "a socket is bound to it"
    LISTENING = "a socket is listening on it"
    UNKNOWN = "the kernel could not be asked"


@dataclass(frozen=True)
class Bound:
    """The sockets bound to one file or name, by socket inode (``socket:[N]``)."""

    #: Listening stream sockets: what a connect() would reach.
    listening: tuple[int, ...] = ()
    #: Any other bound socket: datagram, seqpacket, a stream one before listen().
    other: tuple[int, ...] = ()

    @property
    def binding(self) -> Binding:
        if self.listening:
            return Binding.LISTENING
        return Binding.BOUND if self.other else Binding.NONE


def _kernel_dev(st_dev: int) -> int:
    # sock_diag reports the superblock's dev_t in the kernel's own encoding
    # (major << 20 | minor), not the one stat() returns.
    return (os.major(st_dev) << 20) | os.minor(st_dev)


def _netlink() -> socket.socket | None:
    """A sock_diag socket, or None where the kernel has none for us."""
    try:
        nl = socket.socket(
            socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, _NETLINK_SOCK_DIAG
        )
    except OSError:
        return None
    nl.settimeout(2.0)
    return nl


def _request(ino: int, show: int, flags: int) -> bytes:
    """A unix_diag request: every state, socket ``ino`` (0: any), the attributes ``show``."""
    request = _REQUEST.pack(socket.AF_UNIX, 0, 0, _ALL, ino, show, _ALL, _ALL)
    header = _NLMSG.pack(_NLMSG.size + len(request), _SOCK_DIAG_BY_FAMILY, flags, 1, 0)
    return header + request


def _diag(dev: int, ino: int) -> Bound | None:
    """Dump every unix socket of this namespace with its file; None if we cannot."""
    nl = _netlink()
    if nl is None:
        return None
    with nl:
        try:
            nl.send(_request(0, _UDIAG_SHOW_VFS, _NLM_F_REQUEST | _NLM_F_DUMP))
            return _read_dump(nl, _kernel_dev(dev), ino & 0xFFFFFFFF)
        except OSError:
            return None


def _read_dump(nl: socket.socket, dev: int, ino: int) -> Bound | None:
    listening: list[int] = []
    other: list[int] = []
    while True:
        data = nl.recv(1 << 17)
        at = 0
        while at + _NLMSG.size <= len(data):
            length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, at)
            if length < _NLMSG.size:
                return None
            if kind == _NLMSG_DONE:
                return Bound(tuple(listening), tuple(other))
            if kind == _NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", data, at + _NLMSG.size)
                # ENOENT: no unix_diag in this kernel; anything else: we cannot tell.
                return None if code else Bound(tuple(listening), tuple(other))
            found = _bound_socket(data, at + _NLMSG.size, at + length, dev, ino)
            if found is not None:
                (listening if found[1] else other).append(found[0])
            at += (length + 3) & ~3


def _bound_socket(data: bytes, start: int, end: int, dev: int, ino: int) -> tuple[int, bool] | None:
    """(socket inode, listening) if this unix_diag_msg is bound to our file."""
    _family, kind_of, state, _pad, sock_ino, _c0, _c1 = _REPLY.unpack_from(data, start)
    at = start + _REPLY.size
    while at + _ATTR.size <= end:
        length, kind = _ATTR.unpack_from(data, at)
        if length < _ATTR.size:
            break
        if kind == _UNIX_DIAG_VFS and length >= _ATTR.size + _VFS.size:
            if _VFS.unpack_from(data, at + _ATTR.size) == (ino, dev):
                return sock_ino, state == _TCP_LISTEN and kind_of == socket.SOCK_STREAM
            return None
        at += (length + 3) & ~3
    return None


def bound_to_name(*names: bytes) -> Bound | None:
    """The sockets bound under any of ``names`` as /proc/net/unix lists them: the
    path as given to bind(), or ``@name`` for an abstract one.  None if unreadable."""
    listening: list[int] = []
    other: list[int] = []
    try:
        with open("/proc/net/unix", "rb") as table:
            next(table, None)  # Num RefCount Protocol Flags Type St Inode Path
            for line in table:
                fields = line.split(maxsplit=7)
                if len(fields) == 8 and fields[7].rstrip(b"\n") in names:
                    flags, kind_of, inode = int(fields[3], 16), int(fields[4], 16), int(fields[6])
                    stream_listener = flags & _SO_ACCEPTCON and kind_of == socket.SOCK_STREAM
                    (listening if stream_listener else other).append(inode)
    except (OSError, ValueError):
        return None
    return Bound(tuple(listening), tuple(other))


def bound_to_file(path: bytes, st: os.stat_result) -> Bound | None:
    """The sockets of this namespace bound to the socket file ``path`` (``st``).

    By the file's inode (sock_diag), else by the path it was bound with; None
    if neither can be read.
    """
    found = _diag(st.st_dev, st.st_ino)
    if found is None:
        found = bound_to_name(path, os.fsencode(os.path.abspath(path)))
    return found


def binding(path: bytes, st: os.stat_result) -> Binding:
    """Whether a socket of this namespace is bound to the socket file ``path``."""
    found = bound_to_file(path, st)
    return Binding.UNKNOWN if found is None else found.binding


def peer_inode(sock: socket.socket) -> int | None:
    """The socket inode at the other end of a connected unix socket (sock_diag),
    for finding the process that holds it; None if the kernel cannot say."""
    ours = os.fstat(sock.fileno()).st_ino & 0xFFFFFFFF
    nl = _netlink()
    if nl is None:
        return None
    with nl:
        try:
            nl.send(_request(ours, _UDIAG_SHOW_PEER, _NLM_F_REQUEST))
            data = nl.recv(1 << 16)
        except OSError:
            return None
    if len(data) < _NLMSG.size + _REPLY.size:
        return None
    length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, 0)
    if kind != _SOCK_DIAG_BY_FAMILY:
        return None  # an error: no unix_diag, or no such socket
    at, end = _NLMSG.size + _REPLY.size, min(length, len(data))
    while at + _ATTR.size <= end:
        size, attr = _ATTR.unpack_from(data, at)
        if size < _ATTR.size:
            break
        if attr == _UNIX_DIAG_PEER and size >= _ATTR.size + 4:
            (peer,) = struct.unpack_from("=I", data, at + _ATTR.size)
            return int(peer) or None
        at += (size + 3) & ~3
    return None
