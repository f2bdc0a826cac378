"""Socket facts both stream layers share, the async one and the blocking one.

How big a buffer to ask for, how much to read by default, what a wait for
the peer's close may keep, and which errno values mean "the peer is gone"
rather than "we did something wrong".
"""

from __future__ import annotations

import contextlib
import errno
import socket

__all__ = ["BROKEN_ERRNOS", "BUFFER_SIZE", "DEFAULT_RECEIVE", "MAX_PENDING", "tune_buffers"]

#: Socket buffer size we ask for: a few MiB let one wake-up move a megabyte,
#: which is what brings an event-loop stream to raw socket speed.
BUFFER_SIZE = 4 * 1024 * 1024
DEFAULT_RECEIVE = 65536
#: What wait_peer_closed keeps of data that arrives before the hang-up.
MAX_PENDING = 16 * 1024 * 1024
#: errno values that mean "the peer is gone" rather than "we did something wrong".
BROKEN_ERRNOS = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN})


def tune_buffers(sock: socket.socket) -> None:
    """Ask for large send and receive buffers (the kernel caps them at wmem_max/rmem_max)."""
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):  # the kernel's cap is not a failure
            sock.setsockopt(socket.SOL_SOCKET, option, BUFFER_SIZE)
