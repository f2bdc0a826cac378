"""``unix:`` without an event loop: the async transport's addresses and listener security.

The socket path, the stale-file rule (replaced only when the kernel says
no socket is bound to it) and the credential policy are the async
transport's own functions; only the waiting differs.
"""

from __future__ import annotations

import time

from ..address import UnixAddress
from ..credentials import CredentialPolicy, same_user_or_root
from ..unix_sockets import BACKLOG, Connecting, listening
from ._deadline import Deadline
from ._listener import SocketListener
from ._stream import Stream

__all__ = ["connect", "listen"]


def connect(address: UnixAddress, deadline: Deadline) -> Stream:
    """Connect to a listening unix socket."""
    connecting = Connecting(address)
    while True:
        left = deadline.left()
        connected = connecting.attempt(lambda sock: Stream(sock, address), retry=left != 0)
        if isinstance(connected, Stream):
            return connected
        # Back off while the listener drains its backlog (the async side does too).
        time.sleep(connected if left is None else min(connected, left))


def listen(
    address: UnixAddress,
    *,
    mode: int = 0o600,
    policy: CredentialPolicy | None = same_user_or_root,
    backlog: int = BACKLOG,
) -> SocketListener:
    """As ``fdchannel``'s: ``mode`` is the socket file's, ``policy`` admits each peer
    (a refused one is closed unread: PeerCredentialsError)."""
    return listening(
        address,
        lambda sock, unlink: SocketListener(sock, address, policy=policy, on_close=unlink),
        mode=mode,
        backlog=backlog,
    )
