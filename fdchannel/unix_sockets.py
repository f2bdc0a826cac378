"""AF_UNIX socket steps both layers share: each never waits.

The sun_path bytes of an address (paths and abstract names, checked
against the kernel's limit), one connect attempt at a time (``Connecting``:
a unix connect succeeds or fails at once, or asks to be retried while the
listener's backlog is full), and a listening socket set up safely
(``bind_listening``): the socket file is created with its mode already
set, a stale file is replaced only when the kernel says no socket is bound
to it, and only the file we bound is removed at close.  The async
transport (``fdchannel.transports.unix``) and the blocking one add their
way of waiting, and the credential policy their listeners apply.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import Callable
from typing import TypeVar

from .address import SUN_PATH_MAX, UnixAddress
from .errors import AddressError, ConnectError, TransportError
from .sockdiag import Binding, binding
from .sockets import tune_buffers

__all__ = [
    "BACKLOG",
    "BACKLOG_RETRY_DELAYS",
    "Connecting",
    "bind_listening",
    "listening",
    "clear_stale",
    "new_socket",
    "sockaddr",
]

#: How long connect retries while a full backlog makes the kernel answer EAGAIN.
BACKLOG_RETRY_DELAYS = (0.001, 0.005, 0.02, 0.05)
BACKLOG = 4096  # the kernel caps it at net.core.somaxconn
T = TypeVar("T")


def sockaddr(address: UnixAddress) -> bytes:
    """The sun_path bytes for ``address``, checked against the kernel's limit."""
    raw = os.fsencode(address.path)
    if address.abstract:
        # An abstract name starts with a NUL byte; not "tight" means the
        # whole of sun_path is the name, padded with NULs (QEMU's default).
        name = b"\0" + raw
        if len(name) > SUN_PATH_MAX:
            raise AddressError(
                f"abstract socket name {address.path!r} is {len(raw)} bytes; "
                f"at most {SUN_PATH_MAX - 1} fit in sun_path",
                str(address),
            )
        return name if address.tight else name.ljust(SUN_PATH_MAX, b"\0")
    if not raw:
        raise AddressError("a unix socket path must not be empty", str(address))
    if len(raw) >= SUN_PATH_MAX:
        raise AddressError(
            f"unix socket path {address.path!r} is {len(raw)} bytes; sun_path holds "
            f"{SUN_PATH_MAX} including the terminating NUL, so at most {SUN_PATH_MAX - 1}",
            str(address),
        )
    return raw


def new_socket() -> socket.socket:
    """A close-on-exec AF_UNIX stream socket."""
    return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)


class Connecting:
    """Connect attempts to a unix socket, for both layers: each succeeds or fails at
    once (a unix connect never waits for the peer), or asks to be retried after a
    delay while the listener's full backlog makes the kernel answer EAGAIN."""

    def __init__(self, address: UnixAddress) -> None:
        self.address = address
        self.target = sockaddr(address)
        self._delays = iter(BACKLOG_RETRY_DELAYS)

    def attempt(self, wrap: Callable[[socket.socket], T], *, retry: bool = True) -> T | float:
        """The stream ``wrap`` makes of a connected socket, or how long to back off
        before the next attempt; ConnectError once there is nothing left to try."""
        sock = new_socket()
        try:
            tune_buffers(sock)
            sock.setblocking(False)
            sock.connect(self.target)
            return wrap(sock)
        except OSError as exc:
            sock.close()
            delay = next(self._delays, None) if exc.errno == errno.EAGAIN and retry else None
            if delay is None:
                raise ConnectError(
                    f"cannot connect to {self.address}: {exc.strerror}", self.address
                ) from exc
            return delay
        except BaseException:
            sock.close()
            raise


def clear_stale(address: UnixAddress, path: bytes) -> None:
    """Remove a socket file no socket is bound to; refuse to touch a live one.

    The kernel is asked (see fdchannel.sockdiag): connecting to find out would hand
    a live one-shot listener a peer it takes for the real one.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise TransportError(f"cannot listen on {address}: {exc.strerror}", address) from exc
    if not stat.S_ISSOCK(st.st_mode):
        raise TransportError(
            f"cannot listen on {address}: {address.path!r} exists and is not a socket",
            address,
        )
    found = binding(path, st)
    if found is Binding.LISTENING:
        raise TransportError(
            f"cannot listen on {address}: another process is listening on it "
            "(a live socket is never replaced)",
            address,
        )
    if found is not Binding.NONE:
        raise TransportError(
            f"cannot listen on {address}: the socket file exists and {found.value}, so it "
            "may be live (a live socket is never replaced; remove the file if it is stale)",
            address,
        )
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass  # someone else cleared it first
    except OSError as exc:
        raise TransportError(
            f"cannot listen on {address}: the stale socket file cannot be removed: {exc.strerror}",
            address,
        ) from exc


def _unlinker(path: bytes) -> Callable[[], None]:
    """What removes the socket file at close: only if it is still the one we bound."""
    st = os.lstat(path)
    inode = (st.st_dev, st.st_ino)

    def unlink() -> None:
        with contextlib.suppress(OSError):
            now = os.lstat(path)
            if (now.st_dev, now.st_ino) == inode:
                os.unlink(path)

    return unlink


def bind_listening(
    address: UnixAddress, *, mode: int, backlog: int
) -> tuple[socket.socket, Callable[[], None] | None]:
    """A listening socket on ``address``, and what removes its file at close
    (None for an abstract name): the setup both the async and the blocking
    listeners share.  A stale file is replaced; a live one never is."""
    target = sockaddr(address)
    sock = new_socket()
    unlink: Callable[[], None] | None = None
    try:
        if not address.abstract:
            clear_stale(address, target)
            # Linux creates the file with the socket inode's mode minus the
            # umask, so setting it before bind leaves no moment in which the
            # file is more open than ``mode``.
            os.fchmod(sock.fileno(), mode)
        try:
            sock.bind(target)
        except OSError as exc:
            raise TransportError(f"cannot listen on {address}: {exc.strerror}", address) from exc
        if not address.abstract:
            unlink = _unlinker(target)
            os.chmod(target, mode)  # the umask may have removed bits asked for
        sock.listen(backlog)
        return sock, unlink
    except BaseException:
        sock.close()
        if unlink is not None:
            unlink()
        raise


L = TypeVar("L")


def listening(
    address: UnixAddress,
    make: Callable[[socket.socket, Callable[[], None] | None], L],
    *,
    mode: int,
    backlog: int,
) -> L:
    """A listener of either layer on ``address``: ``make(sock, unlink)`` given the
    listening socket and what removes its file at close (``bind_listening``);
    if ``make`` fails, both are undone."""
    sock, unlink = bind_listening(address, mode=mode, backlog=backlog)
    try:
        return make(sock, unlink)
    except BaseException:
        sock.close()
        if unlink is not None:
            unlink()
        raise
