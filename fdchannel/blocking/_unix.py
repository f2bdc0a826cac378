"""``unix:`` without an event loop: the async transport's addresses and listener security.

The socket path, the stale-file rule (replaced only when the kernel says
no socket is bound to it) and the credential policy are the async
transport's own functions; only the waiting differs.
"""

from __future__ import annotations

import errno
import time

from ..address import UnixAddress
from ..credentials import CredentialPolicy, same_user_or_root
from ..errors import ConnectError
from ..sockets import tune_buffers
from ..transports.unix import BACKLOG, BACKLOG_RETRY_DELAYS, bind_listening, new_socket, sockaddr
from ._deadline import Deadline
from ._listener import SocketListener
from ._stream import Stream

__all__ = ["connect", "listen"]


def connect(address: UnixAddress, deadline: Deadline) -> Stream:
    """Connect to a listening unix socket."""
    target = sockaddr(address)
    delays = iter(BACKLOG_RETRY_DELAYS)
    while True:
        sock = new_socket()
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
    sock, unlink = bind_listening(address, mode=mode, backlog=backlog)
    try:
        return SocketListener(sock, address, policy=policy, on_close=unlink)
    except BaseException:
        sock.close()
        if unlink is not None:
            unlink()
        raise
