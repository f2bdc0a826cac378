"""Connections handed over at a message boundary, with the bytes read from them.

A stream's ``detach()`` lets go of its descriptor without closing it and
returns a ``Detached``: the descriptor, now the caller's, and the bytes the
stream had read from it but not returned.  Whoever wraps the descriptor
next passes those as ``buffered`` (``Stream.from_fd(fd, buffered=...)``, in
either layer) and receives them before anything read from the descriptor.
What the peer sent and nobody read yet is still in the kernel's socket
buffer: that travels with the descriptor by itself.

``pack_connections`` puts detached connections into an ``FdState`` for
another process (``send_state``, ``send_cpr``, an upgrade's handover):
connection *i* is the entry (name, i), and its buffered bytes ride in the
state's metadata ahead of the caller's own.  ``unpack_connections`` reads
them back.  The metadata's framing::

    b"FDCONN\\x00" and a version byte (1)    8 bytes
    for each connection, in id order:
        its buffered bytes' length         4 bytes, big-endian
        its buffered bytes
    the caller's metadata                   the rest

Metadata without that prefix comes from a sender that predates it: its
connections have no buffered bytes and its metadata is the caller's.

Nothing here waits or imports an event loop: both layers use it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from .errors import StateError
from .state import FdState, NamedFd

__all__ = ["MAGIC", "Detached", "Unpacked", "pack_connections", "unpack_connections"]

_PREFIX = b"FDCONN\x00"
_VERSION = 1
#: What the metadata of ``pack_connections``'s states starts with.
MAGIC = _PREFIX + bytes([_VERSION])
_LENGTH = struct.Struct(">I")


class Detached(NamedTuple):
    """A connection a stream let go of (``detach()``)."""

    #: The connection's descriptor, now the caller's (to close, or to wrap again).
    fd: int
    #: What was read from it and not consumed yet: whoever wraps ``fd`` next serves
    #: these bytes first (``Stream.from_fd(fd, buffered=...)``).
    buffered: bytes


class Unpacked(NamedTuple):
    """What ``unpack_connections`` found in a state."""

    #: The connections in id order; their descriptors are still the state's
    #: (closing the state closes them): duplicate those to keep.
    connections: list[Detached]
    #: The metadata the sender gave ``pack_connections``.
    metadata: bytes


def pack_connections(
    connections: Sequence[Detached],
    more: Iterable[NamedFd] = (),
    *,
    name: str = "conn",
    metadata: bytes = b"",
) -> FdState:
    """A state to send: (``name``, i, fd) for connection i, then the entries of ``more``;
    the connections' buffered bytes and then ``metadata`` in the state's metadata.

    Like any state built to be sent, it does not own the descriptors.  An entry
    of ``more`` with ``name`` is a StateError: ``unpack_connections`` would take
    it for a connection.
    """
    entries = [NamedFd(name, i, fd) for i, (fd, _) in enumerate(connections)]
    parts = [MAGIC]
    for i, (_, buffered) in enumerate(connections):
        if len(buffered) > 0xFFFFFFFF:
            raise StateError(f"connection {i} buffered {len(buffered)} bytes, more than 4 GiB")
        parts += (_LENGTH.pack(len(buffered)), bytes(buffered))
    parts.append(bytes(metadata))
    for entry in more:
        if entry[0] == name:
            raise StateError(f"an entry of more is named {name!r}, the connections' name")
        entries.append(entry if type(entry) is NamedFd else NamedFd(*entry))
    return FdState(entries, b"".join(parts))


def unpack_connections(state: FdState, name: str = "conn") -> Unpacked:
    """The connections ``pack_connections`` put in ``state`` under ``name``, and the
    sender's own metadata.

    StateError when the ids under ``name`` are not 0 to n-1, or when the
    framing of the buffered bytes is broken.  A state from a sender that
    predates the framing gives its connections no buffered bytes and its
    metadata unchanged.
    """
    names, ids, fds = state.columns()
    found = sorted((i, fd) for n, i, fd in zip(names, ids, fds, strict=True) if n == name)
    # A state holds each (name, id) once: n distinct ids from 0 to n-1 are all of them.
    if found and (found[0][0] != 0 or found[-1][0] != len(found) - 1):
        got = ", ".join(str(i) for i, _ in found[:8]) + (", …" if len(found) > 8 else "")
        raise StateError(
            f"the connections named {name!r} have ids {got}, not 0 to {len(found) - 1}"
        )
    metadata = bytes(state.metadata)
    if not metadata.startswith(_PREFIX):
        return Unpacked([Detached(fd, b"") for _, fd in found], metadata)
    if len(metadata) < len(MAGIC) or metadata[len(_PREFIX)] != _VERSION:
        version = metadata[len(_PREFIX) : len(MAGIC)].hex() or "none"
        raise StateError(f"connections packed in framing version {version}; this reads {_VERSION}")
    offset = len(MAGIC)
    connections = []
    for i, fd in found:
        if offset + _LENGTH.size > len(metadata):
            raise StateError(f"the metadata ends inside connection {i}'s buffered length")
        (size,) = _LENGTH.unpack_from(metadata, offset)
        offset += _LENGTH.size
        if offset + size > len(metadata):
            raise StateError(
                f"connection {i}'s buffered bytes are cut short: "
                f"{size} announced, {len(metadata) - offset} there"
            )
        connections.append(Detached(fd, metadata[offset : offset + size]))
        offset += size
    return Unpacked(connections, metadata[offset:])
