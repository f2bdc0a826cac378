"""Descriptors the process already holds: ``fd:NAME``.

A name starting with a digit is a descriptor number.  Any other name is
looked up among the names registered with :func:`register_fd`, then among
the descriptors inherited through systemd's socket-activation protocol
(``LISTEN_PID``, ``LISTEN_FDS``, ``LISTEN_FDNAMES``): the lookup and the
checks of what was found are ``fdchannel.fd_names``'s, which the blocking
layer shares.  ``wrap`` is also what ``Stream.from_fd`` and
``Listener.from_fd`` call: this module registers it with them.

Opening works on a duplicate (``dup``, close-on-exec): the caller's
descriptor stays theirs and stays open when the stream or listener is
closed.  A duplicate shares the open file description, though: the file
offset, and O_NONBLOCK, which the stream sets, are shared with the caller's
descriptor; and a pipe reader sees EOF only once every copy of the write
end, the caller's included, is closed.

What the stream can do follows the descriptor's kind, found with fstat and
getsockopt: an AF_UNIX stream socket passes descriptors, any other
connected stream socket moves bytes, a listening socket accepts many peers
(and is refused by ``connect``), a pipe or FIFO end reads or writes, and a
regular file reads or writes at its current offset.
"""

from __future__ import annotations

import fcntl
import os
import socket
import stat

import anyio.lowlevel

from ..address import FdAddress
from ..credentials import CredentialPolicy, same_user_or_root
from ..errors import CapabilityError, ConnectError, TransportError
from ..fd_names import (
    SD_LISTEN_FDS_START,
    duplicate,
    file_mode,
    inherited_fds,
    is_listening,
    register_fd,
    registered_fds,
    unregister_fd,
)
from ._base import Listener, Stream, register_fd_opener
from ._file_stream import FileStream
from ._one_stream import OneStreamListener
from ._pipe import PipeStream
from ._socket import SocketListener, stream_for_socket

# The names, their lookup and the checks of what was found are
# fdchannel.fd_names's (shared with the blocking layer), re-exported here.
__all__ = [
    "SD_LISTEN_FDS_START",
    "connect",
    "duplicate",
    "file_mode",
    "inherited_fds",
    "is_listening",
    "listen",
    "register_fd",
    "registered_fds",
    "unregister_fd",
    "wrap",
]


def _open_socket(
    fd: int,
    address: FdAddress,
    error: type[TransportError],
    *,
    incoming: bool,
    policy: CredentialPolicy | None,
    buffered: bytes,
) -> Stream | Listener:
    # With fileno= the family, type and protocol are read from the descriptor.
    sock = socket.socket(fileno=fd)
    try:
        if is_listening(sock, address, error, incoming=incoming):
            if buffered:
                raise _cannot_buffer(address, "a listening socket")
            return SocketListener(sock, address, policy=policy)
        stream = stream_for_socket(sock, address)
        stream._serve_first(buffered)
        return stream
    except BaseException:
        sock.detach()  # the descriptor stays the caller's
        raise


def _wrap(
    fd: int,
    address: FdAddress,
    error: type[TransportError],
    *,
    incoming: bool,
    policy: CredentialPolicy | None = None,
    buffered: bytes = b"",
) -> Stream | Listener:
    """The stream or listener ``fd``'s kind calls for, serving ``buffered`` first;
    on success it owns ``fd``, on failure ``fd`` is left open."""
    label = f"fd:{address.name}"
    mode = file_mode(fd, address, error)
    if stat.S_ISSOCK(mode):
        return _open_socket(fd, address, error, incoming=incoming, policy=policy, buffered=buffered)
    if stat.S_ISFIFO(mode):
        pipe = PipeStream(fd, address, name=label)
        pipe._serve_first(buffered)
        return pipe
    if buffered:
        # A file stream reads at the file's offset and keeps no buffer.
        raise _cannot_buffer(address, "no socket or pipe")
    if stat.S_ISREG(mode) or stat.S_ISCHR(mode):
        access = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
        return FileStream(
            fd,
            address,
            name=label,
            readable=access in (os.O_RDONLY, os.O_RDWR),
            writable=access in (os.O_WRONLY, os.O_RDWR),
            seekable=stat.S_ISREG(mode),
        )
    kind = "a directory" if stat.S_ISDIR(mode) else f"of type {stat.filemode(mode)[0]!r}"
    raise error(f"{label} is {kind}; expected a socket, a pipe or a file", address)


def _cannot_buffer(address: FdAddress, kind: str) -> CapabilityError:
    return CapabilityError(
        f"fd:{address.name} is {kind}: no stream over it can serve bytes read before (buffered)"
    )


def _open(
    address: FdAddress,
    error: type[TransportError],
    *,
    incoming: bool,
    policy: CredentialPolicy | None = None,
) -> Stream | Listener:
    """Wrap a duplicate of the descriptor in the stream or listener its kind calls for."""
    dup = duplicate(address, error)
    try:
        return _wrap(dup, address, error, incoming=incoming, policy=policy)
    except BaseException:
        os.close(dup)
        raise


def wrap(
    fd: int,
    *,
    incoming: bool,
    policy: CredentialPolicy | None = same_user_or_root,
    buffered: bytes = b"",
) -> Stream | Listener:
    """Take over ``fd`` itself (no duplicate): ``Stream.from_fd``, ``Listener.from_fd``.

    Incoming, anything but a listening socket is yielded once, as a stream.
    The stream serves ``buffered`` before what it reads from ``fd`` (a
    socket or a pipe: anything else is a CapabilityError then).  On failure
    ``fd`` stays open and the caller's.
    """
    where = FdAddress(str(fd))
    error = TransportError if incoming else ConnectError
    opened = _wrap(fd, where, error, incoming=incoming, policy=policy, buffered=buffered)
    if incoming and isinstance(opened, Stream):
        return OneStreamListener(opened, where)
    return opened


register_fd_opener(wrap)


async def connect(address: FdAddress) -> Stream:
    """The outgoing side: a stream over a duplicate of the descriptor.

    A listening socket is refused: it belongs to the incoming side.
    """
    await anyio.lowlevel.checkpoint_if_cancelled()
    opened = _open(address, ConnectError, incoming=False)
    assert isinstance(opened, Stream)
    await anyio.lowlevel.cancel_shielded_checkpoint()
    return opened


async def listen(
    address: FdAddress, *, policy: CredentialPolicy | None = same_user_or_root
) -> Listener:
    """The incoming side: a listening socket accepts many peers.

    On a listening AF_UNIX socket ``policy`` applies as on ``unix:`` (peers
    of our own uid or root by default; None admits everyone).  Any other
    descriptor is yielded once, as a stream.
    """
    await anyio.lowlevel.checkpoint_if_cancelled()
    opened = _open(address, TransportError, incoming=True, policy=policy)
    await anyio.lowlevel.cancel_shielded_checkpoint()
    if isinstance(opened, Listener):
        return opened
    return OneStreamListener(opened, address)
