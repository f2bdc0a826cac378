"""AF_UNIX stream sockets: the only transport that passes descriptors.

Listener security defaults: the socket file is created with mode 0600, a
stale socket file is replaced only when nobody listens on it, and every
peer's credentials (SO_PEERCRED) are checked before a byte of it is read.
The steps that never wait (the address bytes, a connect attempt, binding
the listening socket) are ``fdchannel.unix_sockets``'s, shared with the
blocking layer; this module adds the event loop's waiting.
"""

from __future__ import annotations

import anyio

from ..address import UnixAddress
from ..credentials import CredentialPolicy, Credentials, peer_credentials, same_user_or_root
from ..sockdiag import Binding, Bound, binding, bound_to_file, bound_to_name
from ..unix_sockets import (
    BACKLOG,
    Connecting,
    bind_listening,
    listening,
    new_socket,
    sockaddr,
)
from ._socket import SocketListener, UnixSocketStream

# Binding and the credential helpers are re-exported from their homes
# (fdchannel.sockdiag, fdchannel.credentials), as are the socket steps both
# layers share (fdchannel.unix_sockets).
__all__ = [
    "BACKLOG",
    "Binding",
    "Bound",
    "Connecting",
    "Credentials",
    "CredentialPolicy",
    "bind_listening",
    "binding",
    "bound_to_file",
    "bound_to_name",
    "connect",
    "listen",
    "new_socket",
    "peer_credentials",
    "same_user_or_root",
    "sockaddr",
]


async def connect(address: UnixAddress) -> UnixSocketStream:
    """Connect to a listening unix socket."""
    connecting = Connecting(address)
    while True:
        connected = connecting.attempt(lambda sock: UnixSocketStream(sock, address))
        if isinstance(connected, UnixSocketStream):
            return connected
        await anyio.sleep(connected)  # the listener drains its backlog meanwhile


class UnixListener(SocketListener):
    """A unix listener that checks each peer and removes its socket file on close."""


async def listen(
    address: UnixAddress,
    *,
    mode: int = 0o600,
    policy: CredentialPolicy | None = same_user_or_root,
    backlog: int = BACKLOG,
) -> UnixListener:
    """Listen on a unix socket (path or abstract name).

    ``mode`` is the socket file's permission; ``policy`` decides which peers
    ``accept`` returns (None accepts everyone); a refused peer is closed and
    ``accept`` raises PeerCredentialsError.
    """
    return listening(
        address,
        lambda sock, unlink: UnixListener(sock, address, policy=policy, on_close=unlink),
        mode=mode,
        backlog=backlog,
    )
