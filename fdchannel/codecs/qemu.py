"""QEMU 10's cpr channel, byte for byte (migration/cpr.c's vmstate).

Layout: big-endian u32 magic ``QCPR``, u32 version 1, then per descriptor
a byte 0x01, u32 name length counting the terminating NUL, the name and
its NUL, i32 id, and one byte 0x20 that carries the descriptor; a byte
0x00 ends the list.  The sender then half-closes.  Each 0x20 is sent in
the same sendmsg as its descriptor, and QEMU flushes the bytes before it
first, so a reader sees one descriptor per message.
"""

from __future__ import annotations

import struct
from collections.abc import Generator

from ..errors import ProtocolError
from ..state import DEFAULT_LIMITS, FdState, Limits, NamedFd
from ._parse import ByteSource, FdQueue

__all__ = ["MAGIC", "VERSION", "encode", "parse"]

MAGIC = 0x51435052  # "QCPR"
VERSION = 1
_MORE = 0x01
_END = 0x00
_FD_MARKER = 0x20  # qemu_file_put_fd sends one space byte with the descriptor

Message = tuple[bytes, list[int]]


def _entry_bytes(entry: NamedFd) -> bytes:
    name = entry.name.encode("utf-8", "surrogateescape") + b"\0"
    return struct.pack(">BI", _MORE, len(name)) + name + struct.pack(">i", entry.id)


def encode(state: FdState) -> list[Message]:
    """The messages to send, each (bytes, descriptors), as QEMU sends them."""
    if state.metadata:
        raise ProtocolError("the qemu codec cannot carry metadata; use the native codec")
    messages: list[Message] = []
    pending = struct.pack(">II", MAGIC, VERSION)
    for entry in state.fds:  # the state checked that every id fits QEMU's int32
        messages.append((pending + _entry_bytes(entry) + bytes([_FD_MARKER]), [entry.fd]))
        pending = b""
    messages.append((pending + bytes([_END]), []))
    return messages


def parse(
    src: ByteSource, fds: FdQueue, limits: Limits = DEFAULT_LIMITS
) -> Generator[int, None, FdState]:
    """Parser (see _parse): the state after the magic; descriptors come from ``fds``."""
    (version,) = yield from src.unpack(">I")
    if version != VERSION:
        raise ProtocolError(f"qemu cpr stream has version {version}; only {VERSION} is known")
    entries: list[NamedFd] = []
    seen: set[tuple[str, int]] = set()
    try:
        while True:
            (tag,) = yield from src.unpack(">B")
            if tag == _END:
                return FdState(entries)
            if tag != _MORE:
                raise ProtocolError(
                    f"qemu cpr stream: byte {tag:#04x} at offset {src.offset - 1} is neither "
                    "0x01 (another descriptor) nor 0x00 (end of list)"
                )
            if len(entries) >= limits.max_entries:
                raise ProtocolError(f"qemu cpr stream has more than {limits.max_entries} entries")
            (length,) = yield from src.unpack(">I")
            if not 1 <= length <= limits.max_name + 1:
                raise ProtocolError(
                    f"qemu cpr stream: name length {length} at offset {src.offset - 4} is not "
                    f"from 1 to {limits.max_name + 1} (the NUL included)"
                )
            raw = yield from src.read(length)
            if raw[-1] != 0 or 0 in raw[:-1]:
                raise ProtocolError(f"qemu cpr stream: name {raw!r} is not one NUL-ended string")
            name = raw[:-1].decode("utf-8", "surrogateescape")
            (ident, marker) = yield from src.unpack(">iB")
            if marker != _FD_MARKER:
                raise ProtocolError(
                    f"qemu cpr stream: descriptor marker for {name!r} is {marker:#04x}, not 0x20"
                )
            if (name, ident) in seen:
                raise ProtocolError(f"qemu cpr stream names {name!r} id {ident} twice")
            seen.add((name, ident))
            entries.append(NamedFd(name, ident, fds.pop(f"qemu cpr entry {name!r}")))
    except BaseException:
        FdState(entries).close()
        raise
