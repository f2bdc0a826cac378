"""``fd:NAME`` without an event loop: which descriptor a name means, and what it is.

A name starting with a digit is a descriptor number.  Any other name is
looked up among the names registered with :func:`register_fd`, then among
the descriptors inherited through systemd's socket-activation protocol
(``LISTEN_PID``, ``LISTEN_FDS``, ``LISTEN_FDNAMES``).  Opening works on a
close-on-exec duplicate (``duplicate``); ``file_mode`` and
``is_listening`` tell what kind it is.  The async transport
(``fdchannel.transports.fd``) and the blocking one build their streams and
listeners on these; the command line and ``fdchannel probe`` read the
inherited names without loading either.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import logging
import os
import re
import socket

from .address import FdAddress
from .errors import AddressError, TransportError
from .qemu.cstring import bounded_int

__all__ = [
    "SD_LISTEN_FDS_START",
    "duplicate",
    "file_mode",
    "inherited_fds",
    "is_listening",
    "register_fd",
    "registered_fds",
    "unregister_fd",
]

log = logging.getLogger("fdchannel")

#: The first descriptor systemd passes (sd-daemon.h).
SD_LISTEN_FDS_START = 3
_DIGITS = "0123456789"
_NUMBER = re.compile(r"[0-9]+")
_INT_MAX = (1 << 31) - 1

_registry: dict[str, int] = {}


def register_fd(name: str, fd: int) -> None:
    """Make ``fd:NAME`` refer to ``fd``; the caller keeps owning the descriptor."""
    if not name or name[0] in _DIGITS:
        raise AddressError(
            f"descriptor name {name!r} must not be empty or start with a digit "
            "(fd:NUMBER names a descriptor by number)",
            f"fd:{name}",
        )
    if fd < 0:
        raise ValueError(f"descriptor {fd} is not a descriptor number")
    _registry[name] = fd


def unregister_fd(name: str) -> int | None:
    """Forget a registered name; returns its descriptor (left open) or None."""
    return _registry.pop(name, None)


def registered_fds() -> dict[str, int]:
    """A copy of the names registered with :func:`register_fd`."""
    return dict(_registry)


@functools.cache
def _inherited() -> dict[str, int]:
    env = os.environ
    if "LISTEN_FDS" not in env:
        return {}
    try:
        pid = int(env.get("LISTEN_PID", ""))
        count = int(env["LISTEN_FDS"])
    except ValueError:
        log.warning("ignoring malformed LISTEN_PID/LISTEN_FDS in the environment")
        return {}
    if pid != os.getpid():
        return {}  # meant for another process (our parent, or one we were forked from)
    if count < 0:
        log.warning("ignoring negative LISTEN_FDS=%d", count)
        return {}
    names = env["LISTEN_FDNAMES"].split(":") if "LISTEN_FDNAMES" in env else []
    if names and len(names) != count:
        log.warning(
            "LISTEN_FDNAMES has %d name(s) for %d descriptor(s); the rest are 'unknown'",
            len(names),
            count,
        )
    found: dict[str, int] = {}
    for i in range(count):
        fd = SD_LISTEN_FDS_START + i
        # As sd_listen_fds(): the descriptors are ours now, not our children's.
        try:
            fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
        except OSError:
            log.warning("LISTEN_FDS names descriptor %d, which is not open", fd)
            continue
        name = names[i] if i < len(names) and names[i] else "unknown"
        found.setdefault(name, fd)  # a repeated name means its first descriptor
    return found


def inherited_fds() -> dict[str, int]:
    """Descriptors passed by socket activation, by name (read once, on first use).

    Only when ``LISTEN_PID`` is this process; descriptors start at 3, and
    names without ``LISTEN_FDNAMES`` are ``unknown`` (as sd_listen_fds_with_names).
    """
    return dict(_inherited())


def _descriptor(address: FdAddress, error: type[TransportError]) -> int:
    name = address.name
    if not name:
        raise AddressError("fd: needs a descriptor number or name", str(address))
    if name[0] in _DIGITS:
        if not _NUMBER.fullmatch(name):
            raise AddressError(
                f"fd:{name}: a name starting with a digit is a descriptor number "
                "and must be all digits",
                str(address),
            )
        number = bounded_int(name, 10, _INT_MAX + 1)
        if number > _INT_MAX:
            # QEMU's qemu_parse_fd refuses it too: no descriptor is that large.
            shown = name if len(name) <= 24 else f"{name[:20]}... ({len(name)} digits)"
            raise error(f"fd:{shown} is larger than any descriptor number ({_INT_MAX})", address)
        return number
    if name in _registry:
        return _registry[name]
    inherited = _inherited()
    if name in inherited:
        return inherited[name]
    known = sorted({*_registry, *inherited})
    raise error(
        f"fd:{name}: no descriptor has that name "
        f"(known names: {', '.join(known) if known else 'none'}; "
        "register one with register_fd or pass it by socket activation)",
        address,
    )


def duplicate(address: FdAddress, error: type[TransportError]) -> int:
    fd = _descriptor(address, error)
    try:
        # os.dup gives a close-on-exec copy: ours to close, not inherited by children.
        return os.dup(fd)
    except OSError as exc:
        if exc.errno == errno.EBADF:
            raise error(f"fd:{address.name}: descriptor {fd} is not open", address) from exc
        raise error(f"fd:{address.name}: cannot duplicate {fd}: {exc.strerror}", address) from exc


def file_mode(fd: int, address: FdAddress, error: type[TransportError]) -> int:
    """``fd``'s st_mode: what kind of file it is (the transport's error if none)."""
    try:
        return os.fstat(fd).st_mode
    except OSError as exc:
        raise error(
            f"fd:{address.name}: descriptor {fd} is not usable: {exc.strerror}", address
        ) from exc


def is_listening(
    sock: socket.socket, address: FdAddress, error: type[TransportError], *, incoming: bool
) -> bool:
    """Whether a socket handed over as ``fd:`` listens (else it is connected): both
    layers' check.  The transport's error for a socket that is no stream socket,
    neither listens nor is connected, or listens on the outgoing side."""
    label = f"fd:{address.name}"
    if sock.type != socket.SOCK_STREAM:
        raise error(f"{label} is a {sock.type.name} socket; a stream socket is needed", address)
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        if not incoming:
            raise error(
                f"{label} is a listening socket: it serves the incoming side "
                "(listen), it cannot connect",
                address,
            )
        return True
    try:
        sock.getpeername()
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise error(f"{label}: {exc.strerror}", address) from exc
        raise error(
            f"{label} is a socket that is neither connected nor listening", address
        ) from None
    return False
