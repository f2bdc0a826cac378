"""What a descriptor is: memfd, socket, pipe or FIFO, regular file, eventfd, device.

Everything comes from the descriptor itself (fstat, fcntl, getsockopt) and
from what the kernel shows of it in ``/proc/self/fd`` and
``/proc/self/fdinfo``; nothing is read from or written to it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
from typing import Any

from .text import format_size, printable

__all__ = ["describe", "sockaddr_text", "summary"]

# fcntl.F_GET_SEALS and the F_SEAL_* bits (linux/fcntl.h) exist in Python 3.11
# only on some builds; the numbers are the kernel's.
_F_GET_SEALS = 1034
_F_GETPIPE_SZ = 1032
_SEALS = (
    (0x01, "seal"),
    (0x02, "shrink"),
    (0x04, "grow"),
    (0x08, "write"),
    (0x10, "future-write"),
    (0x20, "exec"),
)
_STATUS_FLAGS = (
    (os.O_APPEND, "append"),
    (os.O_NONBLOCK, "nonblock"),
    (os.O_SYNC, "sync"),
    (os.O_DSYNC, "dsync"),
    (getattr(os, "O_DIRECT", 0), "direct"),
    (getattr(os, "O_NOATIME", 0), "noatime"),
    (getattr(os, "O_PATH", 0), "path"),
)
_ACCESS = {os.O_RDONLY: "read-only", os.O_WRONLY: "write-only", os.O_RDWR: "read-write"}


def _link(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def _fdinfo(fd: int) -> dict[str, str]:
    """``/proc/self/fdinfo/FD`` as key: value pairs (pos, flags, eventfd-count, ...)."""
    info: dict[str, str] = {}
    try:
        with open(f"/proc/self/fdinfo/{fd}") as file:
            for line in file:
                key, sep, value = line.partition(":")
                if sep:
                    info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def _flags(fd: int) -> dict[str, Any]:
    # File status flags belong to the open file description, which travels
    # with the descriptor; close-on-exec is this process's own (and always on
    # for what was received), so it is left out.
    status = fcntl.fcntl(fd, fcntl.F_GETFL)
    names = [name for bit, name in _STATUS_FLAGS if bit and status & bit == bit]
    return {"access": _ACCESS.get(status & os.O_ACCMODE, "unknown"), "flags": names}


def _without_deleted(path: str) -> tuple[str, bool]:
    if path.endswith(" (deleted)"):
        return path[: -len(" (deleted)")], True
    return path, False


def sockaddr_text(family: int, addr: Any) -> str | None:
    """A socket address as text: ``127.0.0.1:80``, ``[::1]:80``, ``/path``, ``@abstract``."""
    if family == socket.AF_UNIX:
        if isinstance(addr, bytes):
            if not addr:
                return None
            # Linux hands back an abstract name with its leading NUL.
            return "@" + os.fsdecode(addr[1:]) if addr[:1] == b"\0" else os.fsdecode(addr)
        if not addr:
            return None
        return "@" + addr[1:] if addr.startswith("\0") else str(addr)
    if family == socket.AF_INET and isinstance(addr, tuple):
        return f"{addr[0]}:{addr[1]}"
    if family == socket.AF_INET6 and isinstance(addr, tuple):
        return f"[{addr[0]}]:{addr[1]}"
    return str(addr) if addr else None


def _enum_name(kind: type[Any], value: int) -> str:
    try:
        return str(kind(value).name)
    except ValueError:
        return str(value)


def _socket(fd: int) -> dict[str, Any]:
    # A socket object over a duplicate: the caller's descriptor stays untouched
    # and stays open whatever happens here.
    dup = os.dup(fd)
    try:
        sock = socket.socket(fileno=dup)
    except BaseException:
        os.close(dup)
        raise
    with sock:
        family = sock.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
        kind = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        listening = bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
        try:
            local = sockaddr_text(family, sock.getsockname())
        except OSError:
            local = None
        try:
            peer = sockaddr_text(family, sock.getpeername())
        except OSError:
            peer = None
    return {
        "kind": "socket",
        "family": _enum_name(socket.AddressFamily, family),
        "type": _enum_name(socket.SocketKind, kind),
        "listening": listening,
        "local": local,
        "peer": peer,
    }


def _seals(fd: int) -> list[str] | None:
    try:
        bits = fcntl.fcntl(fd, _F_GET_SEALS)
    except OSError:
        return None  # a memfd made without MFD_ALLOW_SEALING reports EINVAL on old kernels
    return [name for bit, name in _SEALS if bits & bit]


def _pipe(fd: int, link: str) -> dict[str, Any]:
    is_pipe = link.startswith("pipe:")
    found: dict[str, Any] = {"kind": "pipe" if is_pipe else "fifo"}
    if not is_pipe:
        found["path"], found["deleted"] = _without_deleted(link)
    found.update(_flags(fd))
    found["end"] = {"read-only": "read", "write-only": "write"}.get(found["access"], "both")
    with contextlib.suppress(OSError):
        found["capacity"] = fcntl.fcntl(fd, _F_GETPIPE_SZ)
    return found


def _regular(fd: int, st: os.stat_result, link: str) -> dict[str, Any]:
    if link.startswith("/memfd:"):
        name, _ = _without_deleted(link[len("/memfd:") :])
        return {"kind": "memfd", "name": name, "size": st.st_size, "seals": _seals(fd)}
    path, deleted = _without_deleted(link)
    try:
        offset: int | None = os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:
        pos = _fdinfo(fd).get("pos")
        offset = int(pos) if pos is not None and pos.isdigit() else None
    found: dict[str, Any] = {
        "kind": "file",
        "path": path,
        "deleted": deleted,
        "size": st.st_size,
        "offset": offset,
    }
    found.update(_flags(fd))
    return found


def _anon(fd: int, link: str) -> dict[str, Any]:
    name = link[len("anon_inode:") :].strip("[]")
    if name == "eventfd":
        info = _fdinfo(fd)
        found: dict[str, Any] = {"kind": "eventfd"}
        if "eventfd-count" in info:
            # The kernel prints the counter in hex ("%16llx").
            found["count"] = int(info["eventfd-count"], 16)
        if "eventfd-semaphore" in info:
            found["semaphore"] = info["eventfd-semaphore"] == "1"
        return found
    return {"kind": "anon_inode", "name": name}


def describe(fd: int) -> dict[str, Any]:
    """What ``fd`` is, as plain data; ``kind`` says which fields follow.

    A descriptor that is not open gives ``{"fd": fd, "kind": "closed"}``.
    """
    try:
        st = os.fstat(fd)
    except OSError as exc:
        if exc.errno == errno.EBADF:
            return {"fd": fd, "kind": "closed"}
        raise
    link = _link(fd)
    mode = st.st_mode
    found: dict[str, Any]
    if stat.S_ISSOCK(mode):
        found = _socket(fd)
    elif stat.S_ISFIFO(mode):
        found = _pipe(fd, link)
    elif stat.S_ISREG(mode):
        found = _regular(fd, st, link)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        found = {
            "kind": "character device" if stat.S_ISCHR(mode) else "block device",
            "device": f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}",
            "path": link,
        }
        found.update(_flags(fd))
    elif stat.S_ISDIR(mode):
        found = {"kind": "directory", "path": link}
    elif link.startswith("anon_inode:"):
        found = _anon(fd, link)
    else:
        found = {"kind": "other", "mode": stat.filemode(mode)}
    return {"fd": fd, **found, "link": link}


def _file_flags(found: dict[str, Any]) -> str:
    flags = [found["access"], *found["flags"]]
    return ",".join(flags)


def summary(found: dict[str, Any]) -> str:
    """One line for a person; whatever a peer named is escaped."""
    return printable(_summary(found))


def _summary(found: dict[str, Any]) -> str:
    """One line of text for what ``describe`` found."""
    kind = found["kind"]
    if kind == "memfd":
        seals = found["seals"]
        sealed = "none" if not seals else ",".join(seals)
        if seals is None:
            sealed = "not sealable"
        return f"memfd name={found['name']!r} size={format_size(found['size'])} seals={sealed}"
    if kind == "socket":
        parts = [f"socket {found['family']} {found['type']}"]
        if found["listening"]:
            parts.append("listening")
        parts.append(f"local={found['local'] or '(unnamed)'}")
        if not found["listening"]:
            parts.append(f"peer={found['peer'] or '(none)'}")
        return " ".join(parts)
    if kind in ("pipe", "fifo"):
        where = "" if kind == "pipe" else f" {found['path']}"
        capacity = f" capacity={format_size(found['capacity'])}" if "capacity" in found else ""
        return f"{kind}{where} {found['end']} end{capacity} flags={_file_flags(found)}"
    if kind == "file":
        deleted = " (deleted)" if found["deleted"] else ""
        return (
            f"file {found['path']}{deleted} size={format_size(found['size'])} "
            f"offset={found['offset']} flags={_file_flags(found)}"
        )
    if kind == "eventfd":
        count = f" count={found['count']}" if "count" in found else ""
        return f"eventfd{count}" + (" semaphore" if found.get("semaphore") else "")
    if kind in ("character device", "block device"):
        return f"{kind} {found['device']} {found['path']} flags={_file_flags(found)}"
    if kind == "directory":
        return f"directory {found['path']}"
    if kind == "anon_inode":
        return f"anon_inode [{found['name']}]"
    if kind == "closed":
        return "not open"
    return f"{kind} {found.get('mode', '')} {found.get('link', '')}".rstrip()
