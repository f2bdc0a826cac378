"""Who a unix peer is (SO_PEERCRED), and the policy every AF_UNIX listener applies.

The policy is the listener's, whatever made the listening socket: a
``unix:`` path or abstract name, or an ``fd:`` handed over by socket
activation (systemd creates those 0666 unless told otherwise, so the file
mode protects nothing and the credential check is all there is).
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable
from typing import NamedTuple

from .errors import PeerCredentialsError

__all__ = ["CredentialPolicy", "Credentials", "check_peer", "peer_credentials", "same_user_or_root"]

_UCRED = struct.Struct("3i")


class Credentials(NamedTuple):
    """A peer process as the kernel saw it at connect time."""

    pid: int
    uid: int
    gid: int


CredentialPolicy = Callable[[Credentials], bool]


def same_user_or_root(creds: Credentials) -> bool:
    """The default policy: a peer running as our own uid, or as root."""
    return creds.uid in (os.geteuid(), 0)


def peer_credentials(sock: socket.socket) -> Credentials:
    """SO_PEERCRED of a connected AF_UNIX socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return Credentials(*_UCRED.unpack(raw))


def check_peer(conn: socket.socket, policy: CredentialPolicy | None, where: object) -> None:
    """Raise PeerCredentialsError unless ``policy`` admits the peer of ``conn``.

    Called right after accept, before a byte is read: a refused peer is
    closed unread by the caller.
    """
    if policy is None:
        return
    creds = peer_credentials(conn)
    if not policy(creds):
        raise PeerCredentialsError(
            f"refused peer pid {creds.pid} uid {creds.uid} gid {creds.gid} on "
            f"{where}: the policy accepts uid {os.geteuid()} or root"
        )
