"""``fd:NAME`` without an event loop: sockets the process already holds.

Names are looked up exactly as the async transport does it (numbers,
names registered with ``register_fd``, descriptors inherited by socket
activation), and the stream or listener works on a close-on-exec
duplicate: the caller's descriptor stays theirs.  ``wrap`` takes a
descriptor itself over instead (``Stream.from_fd``).  Pipes and files are
not available here yet.
"""

from __future__ import annotations

import os
import socket
import stat

from ..address import FdAddress
from ..credentials import CredentialPolicy, same_user_or_root
from ..errors import CapabilityError, ConnectError, TransportError
from ..fd_names import duplicate, file_mode, is_listening
from ._listener import Listener, OneStreamListener, SocketListener
from ._stream import Stream, register_fd_wrapper

__all__ = ["connect", "listen", "wrap"]


def _socket_of(fd: int, address: FdAddress, error: type[TransportError]) -> socket.socket:
    """The socket object over ``fd``; CapabilityError for what is no socket."""
    mode = file_mode(fd, address, error)
    if not stat.S_ISSOCK(mode):
        raise CapabilityError(
            f"fd:{address.name} is not a socket (type {stat.filemode(mode)[0]!r}): pipes and "
            "files are not available in fdchannel.blocking yet; use the async API"
        )
    # With fileno= the family, type and protocol are read from the descriptor.
    return socket.socket(fileno=fd)


def _wrap(
    fd: int,
    address: FdAddress,
    error: type[TransportError],
    *,
    incoming: bool,
    policy: CredentialPolicy | None,
) -> Stream | Listener:
    """The stream or listener over the socket ``fd``; on success it owns ``fd``,
    on failure ``fd`` is left open."""
    sock = _socket_of(fd, address, error)
    try:
        if is_listening(sock, address, error, incoming=incoming):
            return SocketListener(sock, address, policy=policy)
        stream = Stream(sock, address)
        return OneStreamListener(stream, address) if incoming else stream
    except BaseException:
        sock.detach()  # the descriptor stays open
        raise


def _open(
    address: FdAddress,
    error: type[TransportError],
    *,
    incoming: bool,
    policy: CredentialPolicy | None,
) -> Stream | Listener:
    dup = duplicate(address, error)
    try:
        return _wrap(dup, address, error, incoming=incoming, policy=policy)
    except BaseException:
        os.close(dup)  # the duplicate; the caller's descriptor stays open
        raise


def wrap(fd: int, *, buffered: bytes = b"") -> Stream:
    """Take over the connected socket ``fd`` itself (no duplicate), serving ``buffered``
    first: ``Stream.from_fd``.  On failure ``fd`` stays open and the caller's."""
    opened = _wrap(fd, FdAddress(str(fd)), ConnectError, incoming=False, policy=None)
    assert isinstance(opened, Stream)
    opened._serve_first(buffered)
    return opened


register_fd_wrapper(wrap)


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
