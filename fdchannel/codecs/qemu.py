"""QEMU's cpr channel, byte for byte, from QEMU 10.0 to 11.1 (migration/cpr.c).

The stream is the ``CprState`` VMState after a header: big-endian u32 magic
``QCPR``, u32 version 1.  Then the descriptor list: per descriptor a byte
0x01, u32 name length counting the terminating NUL, the name and its NUL,
i32 id, and one byte 0x20 that carries the descriptor; a byte 0x00 ends
the list.  Each 0x20 is sent in the same sendmsg as its descriptor, and
QEMU flushes the bytes before it first, so a reader sees one descriptor
per message.  QEMU promises no order of the entries (10.0 sends the newest
first, 11.1 another order), so none is assumed.

Since 10.1 the list may be followed by VMState *subsections*
(migration/vmstate.c): a byte 0x05, a u8 name length, the name without a
NUL (always ``CprState/...``), a u32 version_id, then the body.  QEMU
10.1 to 11.1 send ``CprState/vfio devices`` version 1 on every
cpr-transfer.  Its body has two shapes: none at all in a QEMU built
without IOMMUFD, and in one built with it (Debian's) a list like the
descriptor list: per device 0x01, u32 name length with the NUL, the name
and its NUL, i32 devid, u32 ioas_id, u32 hwpt_id; 0x00 ends it.  The
sender then half-closes the socket.

A subsection body carries no length, so only a parser that knows its
fields can tell where it ends.  The rules this decoder keeps (it knows
where the stream ends: the sender half-closes it):

* After the descriptor list and after each subsection comes a byte 0x05
  or the end of the stream; any other byte is a ProtocolError.  (QEMU's
  own loader stops at such a byte and ignores the rest; we do not.)
* ``CprState/vfio devices`` version 1 is parsed exactly.  The byte after
  its header decides the shape: the end of the stream or 0x05 (the next
  subsection) means the empty body; 0x01 or 0x00 a device list.
* Any other (name, version) is unknown: its body runs to the end of the
  stream.  So an unknown subsection is always the last one; should a
  known one follow it, that one's bytes are in the unknown body, kept raw
  and re-encoded byte for byte but not parsed.  Unknown subsections are
  logged by name and version and kept (``Subsection.known`` is False),
  unless ``Limits.qemu_strict`` asks for a ProtocolError instead.
* Bounded by ``Limits``: ``max_subsections`` subsections, each body at
  most ``max_subsection`` bytes, names at most ``max_name`` bytes, devices
  at most ``max_entries``; a name twice is a ProtocolError.  Only the
  entries carry descriptors: a descriptor left over is a ProtocolError.

Every subsection lands in ``FdState.qemu_subsections``; ``encode`` writes
a state's own subsections back unchanged, or those of a ``target`` QEMU.

The parser tells the decoder where the stream may end: it yields
``MAY_END`` (0: no byte needed) there, and gets True back once the stream
has ended.

cpr-exec (QEMU 10.2 and later) writes the same stream into a memfd rather
than a socket, and the new QEMU inherits the descriptors across exec: each
entry's 0x20 is replaced by the descriptor's number, an i32 (VMSTATE_FD's
``put_fd`` in exec mode).  ``parse(..., exec_mode=True)`` reads that form
and ``decode_exec`` a whole memfd's bytes; the descriptors named belong to
the process, so no error path closes them.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Generator

from ..codec_choice import qemu_version
from ..errors import ProtocolError, StateError
from ..parsing import MAY_END, ByteSource, FdQueue, byte_or_end
from ..qemu.vmstate import (
    END,
    KNOWN_BODIES,
    MAX_NAME,
    MORE,
    PREFIX,
    SUBSECTION,
    VFIO_DEVICES,
    Subsection,
    VfioDevice,
    c_string,
)
from ..state import DEFAULT_LIMITS, FdState, Limits, NamedFd

# The subsections' values and their known bodies are fdchannel.qemu.vmstate's
# (FdState holds them), the parser steps fdchannel.parsing's; both are
# re-exported here.
__all__ = [
    "MAGIC",
    "MAY_END",
    "PREFIX",
    "VERSION",
    "VFIO_DEVICES",
    "Subsection",
    "VfioDevice",
    "decode_exec",
    "encode",
    "parse",
    "subsections_for",
]

MAGIC = 0x51435052  # "QCPR"
VERSION = 1
_FD_MARKER = 0x20  # qemu_file_put_fd sends one space byte with the descriptor

Message = tuple[bytes, list[int]]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------
# Encoding


def _entry_bytes(entry: NamedFd) -> bytes:
    name = entry.name.encode("utf-8", "surrogateescape") + b"\0"
    return struct.pack(">BI", MORE, len(name)) + name + struct.pack(">i", entry.id)


def _exec_fd(entry: NamedFd) -> bytes:
    """cpr-exec: the descriptor's number, where the socket form has its 0x20."""
    if not 0 <= entry.fd < 1 << 31:
        raise StateError(f"descriptor {entry.fd} of {entry.name!r} is not a descriptor number")
    return struct.pack(">i", entry.fd)


def _carries_nothing(sub: Subsection) -> bool:
    return sub.name == VFIO_DEVICES and sub.devices == ()


def subsections_for(state: FdState, target: str | None = None) -> tuple[Subsection, ...]:
    """The subsections ``encode`` writes for ``state`` to a ``target`` QEMU.

    None: the state's own.  ``"10.0"``: none (QEMU 10.0 fails on any); a
    subsection that carries something is a ProtocolError rather than
    dropped.  ``"10.1"`` and later: the state's own, with an empty
    ``CprState/vfio devices`` first if it has none, as QEMU 11.1 sends.
    """
    own = state.qemu_subsections
    if target is None:
        return own
    if qemu_version(target) < (10, 1):
        lost = [
            f"{sub.name} (version {sub.version_id})" for sub in own if not _carries_nothing(sub)
        ]
        if lost:
            raise ProtocolError(f"QEMU {target} takes no subsections; the state has {lost}")
        return ()
    if any(sub.name == VFIO_DEVICES for sub in own):
        return own
    return (Subsection.vfio_devices(), *own)


def encode(state: FdState, target: str | None = None, *, exec_mode: bool = False) -> list[Message]:
    """The messages to send, each (bytes, descriptors), as QEMU sends them.

    ``target``: see ``subsections_for``; the default writes the state's own
    subsections, so a state built here (none) gives QEMU 10.0's bytes.
    ``exec_mode``: cpr-exec's form, one message and no descriptors: each
    entry carries its descriptor's number, which the new program inherits.
    """
    if state.metadata:
        raise ProtocolError("the qemu codec cannot carry metadata; use the native codec")
    tail = b"".join(sub.to_bytes() for sub in subsections_for(state, target))
    messages: list[Message] = []
    pending = struct.pack(">II", MAGIC, VERSION)
    if exec_mode:
        body = b"".join(_entry_bytes(entry) + _exec_fd(entry) for entry in state.fds)
        return [(pending + body + bytes([END]) + tail, [])]
    for entry in state.fds:  # the state checked that every id fits QEMU's int32
        messages.append((pending + _entry_bytes(entry) + bytes([_FD_MARKER]), [entry.fd]))
        pending = b""
    # QEMU 11.1 sends the list's end and its subsections in one message.
    messages.append((pending + bytes([END]) + tail, []))
    return messages


# --------------------------------------------------------------------------
# Parsing


def parse(
    src: ByteSource, fds: FdQueue, limits: Limits = DEFAULT_LIMITS, *, exec_mode: bool = False
) -> Generator[int, bool | None, FdState]:
    """Parser (see fdchannel.parsing): the state after the magic; descriptors come from ``fds``.

    ``exec_mode``: cpr-exec's form, each descriptor a number in the stream;
    those are the process's own, never closed here (``fds`` stays unused).
    """
    (version,) = yield from src.unpack(">I")
    if version != VERSION:
        raise ProtocolError(f"qemu cpr stream has version {version}; only {VERSION} is known")
    entries: list[NamedFd] = []
    try:
        yield from _entries(src, fds, limits, entries, exec_mode)
        subsections = yield from _subsections(src, limits)
    except BaseException:
        if not exec_mode:
            FdState(entries).close()
        raise
    state = FdState(entries)
    state.qemu_subsections = subsections
    return state


def decode_exec(data: bytes, limits: Limits = DEFAULT_LIMITS) -> FdState:
    """A whole cpr-exec state (a memfd's bytes): magic, version, entries, subsections.

    The descriptors are numbers the caller inherited; nothing here checks
    that they are open, and the state returned must not be closed by
    whoever does not own them.  ProtocolError for anything malformed.
    """
    src = ByteSource()
    src.append(data)
    parser = _exec_stream(src, limits)
    try:
        need = next(parser)
        while need == MAY_END:
            need = parser.send(True)  # the memfd holds nothing after the state
        raise ProtocolError(
            f"qemu cpr-exec state ends after {len(data)} byte(s), in the middle of a field"
        )
    except StopIteration as stop:
        state: FdState = stop.value
    finally:
        parser.close()
    return state


def _exec_stream(src: ByteSource, limits: Limits) -> Generator[int, bool | None, FdState]:
    (magic,) = yield from src.unpack(">I")
    if magic != MAGIC:
        raise ProtocolError(
            f"qemu cpr-exec state has magic {magic:#010x}, not {MAGIC:#010x} ('QCPR')"
        )
    return (yield from parse(src, FdQueue(), limits, exec_mode=True))


def _entries(
    src: ByteSource, fds: FdQueue, limits: Limits, entries: list[NamedFd], exec_mode: bool
) -> Generator[int, None, None]:
    """The descriptor list, into ``entries`` (the caller closes them on error)."""
    seen: set[tuple[str, int]] = set()
    while True:
        (tag,) = yield from src.unpack(">B")
        if tag == END:
            return
        if tag != MORE:
            raise ProtocolError(
                f"qemu cpr stream: byte {tag:#04x} at offset {src.offset - 1} is neither "
                "0x01 (another descriptor) nor 0x00 (end of list)"
            )
        if len(entries) >= limits.max_entries:
            raise ProtocolError(f"qemu cpr stream has more than {limits.max_entries} entries")
        name = yield from c_string(src, limits, "name")
        (ident,) = yield from src.unpack(">i")
        if (name, ident) in seen:
            raise ProtocolError(f"qemu cpr stream names {name!r} id {ident} twice")
        seen.add((name, ident))
        if exec_mode:
            fd = yield from _inherited_fd(src, name)
        else:
            (marker,) = yield from src.unpack(">B")
            if marker != _FD_MARKER:
                raise ProtocolError(
                    f"qemu cpr stream: descriptor marker for {name!r} is {marker:#04x}, not 0x20"
                )
            fd = fds.pop(f"qemu cpr entry {name!r}")
        entries.append(NamedFd(name, ident, fd))


def _inherited_fd(src: ByteSource, name: str) -> Generator[int, None, int]:
    """cpr-exec: the i32 descriptor number QEMU writes where 0x20 would be."""
    (fd,) = yield from src.unpack(">i")
    if fd < 0:
        raise ProtocolError(f"qemu cpr-exec state: descriptor {fd} for {name!r} is negative")
    return fd


def _subsections(
    src: ByteSource, limits: Limits
) -> Generator[int, bool | None, tuple[Subsection, ...]]:
    """Zero or more subsections up to the end of the stream."""
    found: list[Subsection] = []
    tag = yield from byte_or_end(src)
    while tag is not None:
        if tag != SUBSECTION:
            raise ProtocolError(
                f"qemu cpr stream: byte {tag:#04x} at offset {src.offset - 1} after the "
                "descriptor list is not 0x05 (a subsection), and the stream did not end there"
            )
        if len(found) >= limits.max_subsections:
            raise ProtocolError(
                f"qemu cpr stream has more than {limits.max_subsections} subsections"
            )
        name, version = yield from _header(src, limits)
        if any(sub.name == name for sub in found):
            raise ProtocolError(f"qemu cpr stream has subsection {name!r} twice")
        body, tag = yield from _body(src, name, version, limits)
        found.append(Subsection(name, version, body))
    return tuple(found)


def _header(src: ByteSource, limits: Limits) -> Generator[int, None, tuple[str, int]]:
    """A subsection's name and version, after its 0x05."""
    (length,) = yield from src.unpack(">B")
    if not len(PREFIX) < length <= limits.max_name:
        raise ProtocolError(
            f"qemu cpr stream: subsection name length {length} at offset {src.offset - 1} "
            f"is not from {len(PREFIX) + 1} to {min(limits.max_name, MAX_NAME)}"
        )
    raw = yield from src.read(length)
    name = raw.decode("utf-8", "surrogateescape")
    if not name.startswith(PREFIX) or "\0" in name:
        raise ProtocolError(
            f"qemu cpr stream: subsection {name!r} is not one of CprState's ({PREFIX}NAME)"
        )
    (version,) = yield from src.unpack(">I")
    return name, version


def _body(
    src: ByteSource, name: str, version: int, limits: Limits
) -> Generator[int, bool | None, tuple[bytes, int | None]]:
    """A subsection's body and the byte after it (None: the stream ended)."""
    parser = KNOWN_BODIES.get((name, version))
    if parser is not None:
        body, _devices, after = yield from parser(src, limits)
        return body, after
    if limits.qemu_strict:
        raise ProtocolError(
            f"qemu cpr stream: unknown subsection {name!r} version {version} "
            f"(strict decoding; known: {VFIO_DEVICES!r} version 1)"
        )
    log.warning("qemu cpr stream: unknown subsection %r version %d kept raw", name, version)
    body = yield from _rest(src, limits.max_subsection, name)
    return body, None


def _rest(src: ByteSource, limit: int, name: str) -> Generator[int, bool | None, bytes]:
    """Everything up to the end of the stream: an unknown subsection's body."""
    while src.available() <= limit:
        if (yield MAY_END):
            return (yield from src.read(src.available()))
    raise ProtocolError(
        f"qemu cpr stream: unknown subsection {name!r} is longer than {limit} bytes"
    )
