"""``fd:NAME`` without an event loop: sockets the process already holds.

Names are looked up exactly as the async transport does it (numbers,
names registered with ``register_fd``, descriptors inherited by socket
activation), and the stream or listener works on a close-on-exec
duplicate: the caller's descriptor stays theirs.  Pipes and files are not
available here yet.
"""

from __future__ import annotations

import errno
import os
import socket
import stat

from ..address import FdAddress
from ..credentials import CredentialPolicy, same_user_or_root
from ..errors import CapabilityError, ConnectError, TransportError
from ..transports.fd import duplicate
from ._listener import Listener, OneStreamListener, SocketListener
from ._stream import Stream

__all__ = ["connect", "listen"]


def _socket_of(fd: int, address: FdAddress, error: type[TransportError]) -> socket.socket:
    """The socket object over ``fd``; CapabilityError for what is no socket."""
    label = f"fd:{address.name}"
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise error(f"{label}: descriptor {fd} is not usable: {exc.strerror}", address) from exc
    if not stat.S_ISSOCK(mode):
        raise CapabilityError(
            f"{label} is not a socket (type {stat.filemode(mode)[0]!r}): pipes and files "
            "are not available in fdchannel.blocking yet; use the async API"
        )
    # With fileno= the family, type and protocol are read from the descriptor.
    sock = socket.socket(fileno=fd)
    if sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise error(f"{label} is a {sock.type.name} socket; a stream socket is needed", address)
    return sock


def _open(
    address: FdAddress,
    error: type[TransportError],
    *,
    incoming: bool,
    policy: CredentialPolicy | None,
) -> Stream | Listener:
    label = f"fd:{address.name}"
    dup = duplicate(address, error)
    try:
        sock = _socket_of(dup, address, error)
    except BaseException:
        os.close(dup)
        raise
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            if not incoming:
                raise error(
                    f"{label} is a listening socket: it serves the incoming side "
                    "(listen), it cannot connect",
                    address,
                )
            return SocketListener(sock, address, policy=policy)
        try:
            sock.getpeername()
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise error(f"{label}: {exc.strerror}", address) from exc
            raise error(
                f"{label} is a socket that is neither connected nor listening", address
            ) from None
        stream = Stream(sock, address)
        return OneStreamListener(stream, address) if incoming else stream
    except BaseException:
        sock.close()  # the duplicate; the caller's descriptor stays open
        raise


def connect(address: FdAddress) -> Stream:
    """The outgoing side: a stream over a duplicate of a connected socket."""
    opened = _open(address, ConnectError, incoming=False, policy=None)
    assert isinstance(opened, Stream)
    return opened


def listen(address: FdAddress, *, policy: CredentialPolicy | None = same_user_or_root) -> Listener:
    """The incoming side: a listening socket accepts many peers (an AF_UNIX one under
    ``policy``, as on ``unix:``); a connected socket is yielded once, as a stream."""
    opened = _open(address, TransportError, incoming=True, policy=policy)
    assert isinstance(opened, Listener)
    return opened
