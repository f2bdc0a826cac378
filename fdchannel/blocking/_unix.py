"""``unix:`` without an event loop: the async transport's addresses and listener security.

The socket path, the stale-file rule (replaced only when the kernel says
no socket is bound to it) and the credential policy are the async
transport's own functions; only the waiting differs.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Callable

from ..address import UnixAddress
from ..credentials import CredentialPolicy, same_user_or_root
from ..errors import ConnectError, TransportError
from ..sockets import tune_buffers
from ..transports.unix import BACKLOG, BACKLOG_RETRY_DELAYS, clear_stale, sockaddr
from ._deadline import Deadline
from ._listener import SocketListener
from ._stream import Stream

__all__ = ["connect", "listen"]


def _new_socket() -> socket.socket:
    return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)


def connect(address: UnixAddress, deadline: Deadline) -> Stream:
    """Connect to a listening unix socket."""
    target = sockaddr(address)
    delays = iter(BACKLOG_RETRY_DELAYS)
    while True:
        sock = _new_socket()
        try:
            tune_buffers(sock)
            sock.setblocking(False)
            # A unix connect never waits for the peer: it succeeds or fails at
            # once, EAGAIN when the listener's backlog is full.
            sock.connect(target)
            return Stream(sock, address)
        except OSError as exc:
            sock.close()
            delay = next(delays, None) if exc.errno == errno.EAGAIN else None
            left = deadline.left()
            if delay is None or left == 0:
                raise ConnectError(f"cannot connect to {address}: {exc.strerror}", address) from exc
            # Back off while the listener drains its backlog (the async side does too).
            time.sleep(delay if left is None else min(delay, left))
        except BaseException:
            sock.close()
            raise


def _unlinker(path: bytes) -> Callable[[], None]:
    """What removes the socket file at close: only if it is still the one we bound."""
    st = os.lstat(path)
    inode = (st.st_dev, st.st_ino)

    def unlink() -> None:
        try:
            now = os.lstat(path)
            if (now.st_dev, now.st_ino) == inode:
                os.unlink(path)
        except OSError:
            pass

    return unlink


def listen(
    address: UnixAddress,
    *,
    mode: int = 0o600,
    policy: CredentialPolicy | None = same_user_or_root,
    backlog: int = BACKLOG,
) -> SocketListener:
    """Listen on a unix socket (path or abstract name).

    ``mode`` is the socket file's permission; ``policy`` decides which peers
    ``accept`` returns (None accepts everyone); a refused peer is closed
    unread and ``accept`` raises PeerCredentialsError.
    """
    target = sockaddr(address)
    sock = _new_socket()
    bound = False
    try:
        if not address.abstract:
            clear_stale(address, target)
            # Linux creates the file with the socket inode's mode minus the
            # umask: set before bind, the file is never more open than ``mode``.
            os.fchmod(sock.fileno(), mode)
        try:
            sock.bind(target)
        except OSError as exc:
            raise TransportError(f"cannot listen on {address}: {exc.strerror}", address) from exc
        bound = not address.abstract
        on_close = None
        if bound:
            on_close = _unlinker(target)
            os.chmod(target, mode)  # the umask may have removed bits asked for
        sock.listen(backlog)
        return SocketListener(sock, address, policy=policy, on_close=on_close)
    except BaseException:
        sock.close()
        if bound:
            os.unlink(target)
        raise
