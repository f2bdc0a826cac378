"""fdchannel's own state format: versioned, bounded, checksummed, windowed.

The byte layout is documented in docs/native-codec.md.  In short: a 16-byte
header (magic ``FDCN``, major, minor, flags, window, entry count), then
frames of ``u8 type, u32 length, payload``: FDS frames each sent in one
sendmsg with up to 253 descriptors, one TABLE (the entries' names and ids
as runs), META chunks, and END with a CRC-32 of every byte before it.
The descriptors go first: the receiver installs them (the slow part, in
the kernel) while the sender builds the table.  The receiver peeks at the
header to make room for the descriptors before any can arrive, and answers
on the same socket with an ACK frame per window of descriptors, so that
an unprivileged sender never has more descriptors in flight than the
kernel allows (ETOOMANYREFS), and with a STATUS frame when it accepts or
rejects the state.
"""

from __future__ import annotations

import array
import resource
import struct
import sys
import zlib
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from ..errors import ProtocolError, StateError
from ..fds import SCM_MAX_FD, Fds, close_all
from ..parsing import ByteSource, FdQueue
from ..runs import INT32_MAX, Runs, check, expand
from ..state import DEFAULT_LIMITS, FdState, Limits

__all__ = [
    "MAGIC",
    "MAJOR",
    "MINOR",
    "AwaitAck",
    "Send",
    "Status",
    "ack_frame",
    "default_window",
    "encode",
    "parse",
    "parse_reply",
    "parse_whole",
    "status_frame",
    "whole_to_come",
]

MAGIC = 0x4644434E  # "FDCN"
MAJOR = 1
MINOR = 0
_HEADER = struct.Struct(">IBBHII")  # magic, major, minor, flags, window, count
#: Bytes a receiver peeks at to learn the descriptor count before any arrives.
HEADER_SIZE = _HEADER.size
_FRAME = struct.Struct(">BI")  # type, payload length
_FDS_FRAME = struct.Struct(">BIH")  # FDS, 2, descriptors attached

TABLE, FDS, META, END = 0x01, 0x02, 0x03, 0x04
ACK, STATUS = 0x81, 0x82
_NAMES = {TABLE: "TABLE", FDS: "FDS", META: "META", END: "END", ACK: "ACK", STATUS: "STATUS"}
#: An FDS frame for a whole message of descriptors, the encoder's usual one.
_FULL_FDS_FRAME = _FDS_FRAME.pack(FDS, 2, SCM_MAX_FD)

#: Metadata travels in chunks of this size.
META_CHUNK = 1 << 20
#: Status codes of a STATUS frame.
STATUS_ACCEPTED = 0
STATUS_REJECTED = 1


class Send(NamedTuple):
    """Encoder step: send these bytes with these descriptors in one sendmsg.

    A named tuple, so it is itself the (bytes, descriptors) message that
    ``Stream.send_fds_many`` takes.
    """

    data: bytes
    #: A slice of the state's descriptor column (a list, tuple or ``array('i')``).
    fds: Sequence[int]


@dataclass(frozen=True)
class AwaitAck:
    """Encoder step: wait until the receiver acknowledged ``count`` descriptors."""

    count: int


@dataclass(frozen=True)
class Status:
    """The receiver's verdict on a state."""

    accepted: bool
    reason: str


def default_window() -> int:
    """Descriptors per acknowledged window for this process.

    The kernel refuses a sender whose user has more than RLIMIT_NOFILE
    descriptors in flight; about half the soft limit (rounded up to whole
    messages of SCM_MAX_FD) leaves room for the rest of the process.
    """
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    messages = max(1, -(-(soft // 2) // SCM_MAX_FD))  # half the limit, in whole messages
    return messages * SCM_MAX_FD


def _frame(kind: int, payload: bytes) -> bytes:
    return _FRAME.pack(kind, len(payload)) + payload


def ack_frame(count: int) -> bytes:
    """Receiver to sender: ``count`` descriptors have arrived."""
    return _frame(ACK, struct.pack(">I", count))


def status_frame(accepted: bool, reason: str = "") -> bytes:
    """Receiver to sender: the state was accepted, or rejected with a reason."""
    code = STATUS_ACCEPTED if accepted else STATUS_REJECTED
    return _frame(STATUS, bytes([code]) + reason.encode("utf-8", "replace")[:4096])


def encode(state: FdState, window: int | None = None) -> Iterator[Send | AwaitAck]:
    """The steps that send ``state``; ``window`` descriptors between acknowledgements.

    The table goes after the descriptors, so that the receiver installs
    them while it comes; the state found and checked its runs (distinct
    pairs, int32 ids, names without NUL) when it was built.
    """
    window = default_window() if window is None else window
    if not 0 <= window <= 0xFFFFFFFF:
        raise StateError(f"window {window} must be from 0 (none) to 2**32 - 1 descriptors")
    if window and window % SCM_MAX_FD and window < len(state):
        raise StateError(f"window {window} must be a multiple of {SCM_MAX_FD}")
    crc = 0

    def emit(data: bytes) -> Send:
        nonlocal crc
        crc = zlib.crc32(data, crc)
        return Send(data, [])

    names, _, descriptors = state.columns()
    # The header rides with the first descriptors: one sendmsg fewer.
    lead = _HEADER.pack(MAGIC, MAJOR, MINOR, 0, window, len(names))
    # Slices only, as they are: copying the whole column first would delay the
    # first send, and the sendmsg packs a slice of any kind (an array's as it is).
    for start in range(0, len(descriptors), SCM_MAX_FD):
        if window and start and start % window == 0:
            yield AwaitAck(start)
        batch = descriptors[start : start + SCM_MAX_FD]
        data = _FULL_FDS_FRAME if len(batch) == SCM_MAX_FD else _FDS_FRAME.pack(FDS, 2, len(batch))
        if lead:
            data, lead = lead + data, b""
        crc = zlib.crc32(data, crc)
        yield Send(data, batch)
    yield emit(lead + _frame(TABLE, _table(state.runs(), len(names), len(state.metadata))))
    for start in range(0, len(state.metadata), META_CHUNK):
        yield emit(_frame(META, state.metadata[start : start + META_CHUNK]))
    yield Send(_frame(END, struct.pack(">I", crc)), [])


def _table(runs: Runs, count: int, metadata_len: int) -> bytes:
    return b"".join(
        [
            struct.pack(">IQI", count, metadata_len, len(runs.names)),
            _int32s("i", runs.firsts),
            _int32s("I", runs.lengths),
            _names_bytes(runs.names),
        ]
    )


def _int32s(typecode: str, column: Sequence[int]) -> bytes:
    """A column of 32-bit integers (the state checked they fit), big-endian, in one C pass."""
    packed = array.array(typecode, column)
    if sys.byteorder == "little":
        packed.byteswap()
    return packed.tobytes()


def _read_int32s(typecode: str, data: bytes | memoryview) -> array.array[int]:
    column = array.array(typecode)
    column.frombytes(data)
    if sys.byteorder == "little":
        column.byteswap()
    return column


def _names_bytes(names: Sequence[str]) -> bytes:
    """Every name in UTF-8 followed by a NUL (C strings, as in QEMU; the state checked
    that none holds a NUL)."""
    if not names:
        return b""
    return ("\0".join(names) + "\0").encode("utf-8", "surrogateescape")


def _split_names(blob: bytes, count: int, limits: Limits) -> list[str]:
    """The ``count`` NUL-ended names of a TABLE frame, checked against the limits."""
    if not count:
        if blob:
            raise ProtocolError(f"native stream: {len(blob)} bytes of names for no entries")
        return []
    # One decode for the whole table, then a split: no Python step per name.
    names = blob.decode("utf-8", "surrogateescape").split("\0")
    if len(names) != count + 1 or names.pop():
        raise ProtocolError(
            f"native stream: TABLE names hold {len(names) - 1} NUL-ended names, not {count}"
        )
    # A character is at most 4 bytes in UTF-8: measure bytes only when it matters.
    if len(blob) > limits.max_name and max(map(len, names)) * 4 > limits.max_name:
        longest = max(len(name.encode("utf-8", "surrogateescape")) for name in names)
        if longest > limits.max_name:
            raise ProtocolError(
                f"native stream: a name of {longest} bytes exceeds the limit of {limits.max_name}"
            )
    return names


def _frame_header(
    src: ByteSource, limits: Limits, expected: str
) -> Generator[int, None, tuple[int, int]]:
    kind, length = yield from src.unpack(">BI")
    _check_frame(kind, length, limits, expected)
    return kind, length


def _check_frame(kind: int, length: int, limits: Limits, expected: str) -> None:
    if kind not in _NAMES:
        raise ProtocolError(f"native stream: unknown frame type {kind:#04x} (expected {expected})")
    if length > limits.max_frame:
        raise ProtocolError(
            f"native stream: {_NAMES[kind]} frame claims {length} bytes, more than the "
            f"limit of {limits.max_frame}"
        )


def _expect(kind: int, wanted: int, where: str) -> None:
    if kind != wanted:
        raise ProtocolError(
            f"native stream: {_NAMES[kind]} frame where {_NAMES[wanted]} was expected ({where})"
        )


class Progress:
    """What the parser owes the sender, for the driver to send."""

    def __init__(self) -> None:
        #: Acknowledgements to send back, in order.
        self.outgoing: list[bytes] = []


def parse(
    src: ByteSource, fds: FdQueue, limits: Limits = DEFAULT_LIMITS, progress: Progress | None = None
) -> Generator[int, None, FdState]:
    """Parser (see fdchannel.parsing): the state after the magic."""
    progress = progress or Progress()
    major, minor, _flags, window, count = yield from src.unpack(">BBHII")
    if major != MAJOR:
        raise ProtocolError(
            f"native stream has major version {major}.{minor}; this fdchannel reads {MAJOR}.x"
        )
    if count > limits.max_entries:
        raise ProtocolError(
            f"native stream announces {count} entries; the limit is {limits.max_entries}"
        )
    received: Fds = []
    try:
        while len(received) < count:
            # Every FDS frame that is already here, in one read: at least
            # ceil(left / 253) more must come, so that many never reaches
            # past them.
            left = count - len(received)
            batch = max(1, min(src.available() // _FDS_FRAME.size, -(-left // SCM_MAX_FD)))
            data = yield from src.read(_FDS_FRAME.size * batch)
            total = _plain_fds_frames(data, batch)
            done = len(received)
            if (
                total is not None
                and total <= left
                and (not window or done // window == (done + total) // window)
            ):
                taken = fds.pop_many(total, "native FDS frames")
                if received:
                    received.extend(taken)
                else:
                    received = taken
                continue
            for kind, length, n in _FDS_FRAME.iter_unpack(data):
                _check_frame(kind, length, limits, "FDS")
                _expect(kind, FDS, f"{len(received)} of {count} descriptors received")
                if length != 2:
                    raise ProtocolError(f"native stream: FDS frame of {length} bytes, not 2")
                if not 1 <= n <= min(SCM_MAX_FD, count - len(received)):
                    raise ProtocolError(f"native stream: FDS frame announces {n} descriptors")
                received.extend(fds.pop_many(n, "native FDS frame"))
                if window and len(received) % window == 0 and len(received) < count:
                    progress.outgoing.append(ack_frame(len(received)))
        runs, metadata_len = yield from _parse_table(src, count, limits)
        metadata = bytearray()
        while len(metadata) < metadata_len:
            kind, length = yield from _frame_header(src, limits, "META")
            _expect(kind, META, f"{len(metadata)} of {metadata_len} metadata bytes received")
            if length == 0 or length > metadata_len - len(metadata):
                raise ProtocolError(f"native stream: META frame of {length} bytes does not fit")
            metadata += yield from src.read(length)
        crc = src.crc
        kind, length = yield from _frame_header(src, limits, "END")
        _expect(kind, END, "after the metadata")
        if length != 4:
            raise ProtocolError(f"native stream: END frame of {length} bytes, not 4")
        (claimed,) = yield from src.unpack(">I")
        if claimed != crc:
            raise ProtocolError(
                f"native stream: checksum mismatch (sent {claimed:#010x}, computed {crc:#010x})"
            )
    except BaseException:
        close_all(received)
        raise
    names, ids = expand(runs, count)
    return FdState.from_columns(names, ids, received, bytes(metadata), runs=runs)


def parse_whole(data: bytes, fds: Fds, limits: Limits = DEFAULT_LIMITS) -> FdState | None:
    """The state in ``data``, a whole stream from its magic to END, with every descriptor.

    That is how a state usually arrives on a unix socket: one drain reads
    it all.  Parsed in a few C passes, for the shape the encoder gives and
    only when no acknowledgement is due; anything else returns None, for
    ``parse`` to read step by step and to report exactly.  The table's
    checks are shared and raise here as they would there.  The state takes
    the list ``fds``; on None or an error the caller still owns it.
    """
    if len(data) < HEADER_SIZE:
        return None
    magic, major, _minor, _flags, window, count = _HEADER.unpack_from(data)
    if (
        magic != MAGIC
        or major != MAJOR
        or count != len(fds)
        or count > limits.max_entries
        or (window and count > window)
    ):
        return None
    # The encoder's frames: 253 descriptors each, the rest in the last.
    full, rest = divmod(count, SCM_MAX_FD)
    frames = _FULL_FDS_FRAME * full + (_FDS_FRAME.pack(FDS, 2, rest) if rest else b"")
    at = HEADER_SIZE + len(frames)
    if data[HEADER_SIZE:at] != frames:
        return None
    view = memoryview(data)
    table = _whole_frame(view, at, TABLE, limits)
    if table is None or len(table) < _TABLE_HEAD.size:
        return None
    runs, metadata_len = _read_table(table, count, limits)
    at += _FRAME.size + len(table)
    metadata = bytearray()
    while len(metadata) < metadata_len:
        chunk = _whole_frame(view, at, META, limits)
        if chunk is None or not 0 < len(chunk) <= metadata_len - len(metadata):
            return None
        metadata += chunk
        at += _FRAME.size + len(chunk)
    if data[at:] != _FRAME.pack(END, 4) + struct.pack(">I", zlib.crc32(view[:at])):
        return None
    names, ids = expand(runs, count)
    return FdState.from_columns(names, ids, fds, bytes(metadata), runs=runs)


def whole_to_come(data: bytes, fds: int, limits: Limits = DEFAULT_LIMITS) -> bool:
    """Whether ``data``, a stream's first bytes, and the ``fds`` descriptors that
    came with them may still become a state that ``parse_whole`` reads: the
    encoder's header and descriptor frames so far, each whole frame's
    descriptors there (they come with its first byte), no acknowledgement due
    before the end, and nothing past the frames yet.

    Such reads can wait for the rest (none is owed an answer, and nothing
    there can be wrong yet), and the state is then read in a few C passes,
    not frame by frame: a receiver that caught up with its sender, and read
    the state in pieces, pays nothing for it.  Once bytes past the frames are
    there, the state is whole or ``parse`` reads it (and says what is wrong).
    """
    if len(data) < HEADER_SIZE:
        return False
    magic, major, _minor, _flags, window, count = _HEADER.unpack_from(data)
    if magic != MAGIC or major != MAJOR or count > limits.max_entries:
        return False
    if window and count > window:
        return False  # an acknowledgement is due on the way: parse reads on
    whole_frames = (len(data) - HEADER_SIZE) // _FDS_FRAME.size
    if not min(count, whole_frames * SCM_MAX_FD) <= fds <= count:
        return False  # descriptors missing, or too many: parse says so now
    full, rest = divmod(count, SCM_MAX_FD)
    frames = _FULL_FDS_FRAME * full + (_FDS_FRAME.pack(FDS, 2, rest) if rest else b"")
    return len(data) <= HEADER_SIZE + len(frames) and frames.startswith(data[HEADER_SIZE:])


def _whole_frame(view: memoryview, at: int, kind: int, limits: Limits) -> memoryview | None:
    """The payload of the ``kind`` frame at ``at``, if it is that and all there."""
    if len(view) < at + _FRAME.size:
        return None
    found, length = _FRAME.unpack_from(view, at)
    end = at + _FRAME.size + length
    if found != kind or length > limits.max_frame or len(view) < end:
        return None
    return view[at + _FRAME.size : end]


_FDS_HEAD = _FRAME.pack(FDS, 2)


def _plain_fds_frames(data: bytes, frames: int) -> int | None:
    """The descriptors ``frames`` valid FDS frames announce, in C passes; None if any is not.

    The caller then goes frame by frame, for the exact error (or for the
    acknowledgements due inside the batch).
    """
    step = _FDS_FRAME.size
    for offset, byte in enumerate(_FDS_HEAD):
        if data[offset::step].count(byte) != frames:
            return None
    high, low = data[5::step], data[6::step]
    if high.count(0) != frames or low.count(0) or max(low) > SCM_MAX_FD:
        return None
    return sum(low)


_TABLE_HEAD = struct.Struct(">IQI")  # entries, metadata length, runs


def _parse_table(
    src: ByteSource, count: int, limits: Limits
) -> Generator[int, None, tuple[Runs, int]]:
    """The TABLE frame: the entries' runs (checked), and the metadata length."""
    kind, length = yield from _frame_header(src, limits, "TABLE")
    _expect(kind, TABLE, f"after {count} descriptors")
    if length < _TABLE_HEAD.size:
        raise ProtocolError(f"native stream: TABLE frame of {length} bytes is too short")
    # One read for the whole frame (max_frame bounds it): a state's table
    # usually arrives with its last descriptors, and is parsed in one go.
    return _read_table(memoryview((yield from src.read(length))), count, limits)


def _read_table(payload: memoryview, count: int, limits: Limits) -> tuple[Runs, int]:
    """A whole TABLE payload: its runs (checked against ``count``) and the metadata length."""
    entries, metadata_len, runs = _TABLE_HEAD.unpack_from(payload)
    if entries != count:
        raise ProtocolError(f"native stream: header announces {count} entries, TABLE {entries}")
    if metadata_len > limits.max_metadata:
        raise ProtocolError(
            f"native stream announces {metadata_len} bytes of metadata; the "
            f"limit is {limits.max_metadata}"
        )
    at = _TABLE_HEAD.size
    if runs > count or 8 * runs > len(payload) - at:
        raise ProtocolError(
            f"native stream: TABLE frame of {len(payload)} bytes cannot hold {runs} runs"
        )
    if runs == 1 and (table := _one_run(payload, at, count, limits)) is not None:
        return table, metadata_len
    firsts = _read_int32s("i", payload[at : at + 4 * runs])
    lengths = _read_int32s("I", payload[at + 4 * runs : at + 8 * runs])
    names = _split_names(bytes(payload[at + 8 * runs :]), runs, limits)
    table = Runs(names, firsts, lengths)
    try:
        check(table, count)
    except ValueError as exc:
        raise ProtocolError(f"native stream: TABLE: {exc}") from None
    return table, metadata_len


_ONE_RUN = struct.Struct(">iI")  # a run's first id and length


def _one_run(payload: memoryview, at: int, count: int, limits: Limits) -> Runs | None:
    """A table of one run (every entry one name, ids counting up: 10,000 ``conn``),
    read in a struct and a decode; None unless it is a valid one, for the general
    path to read (and to name what is wrong): the same checks, for one run."""
    first, length = _ONE_RUN.unpack_from(payload, at)
    name = bytes(payload[at + _ONE_RUN.size : -1])
    if (
        length != count
        or first + length - 1 > INT32_MAX
        or len(payload) == at + _ONE_RUN.size
        or payload[-1]
        or len(name) > limits.max_name
        or b"\0" in name
    ):
        return None
    return Runs([name.decode("utf-8", "surrogateescape")], [first], [length])


def announced_count(header: bytes) -> int | None:
    """The descriptor count a native header announces, or None for anything else.

    A receiver peeks at the header (a peek installs no descriptor) to make
    room for the descriptors before the first read that could bring them.
    """
    if len(header) < HEADER_SIZE:
        return None
    magic, major, _minor, _flags, _window, count = _HEADER.unpack_from(header)
    return int(count) if magic == MAGIC and major == MAJOR else None


def parse_reply(src: ByteSource) -> Generator[int, None, int | Status]:
    """Parser for one receiver-to-sender frame: an ACK count or a Status."""
    kind, length = yield from _frame_header(src, DEFAULT_LIMITS, "ACK or STATUS")
    if kind == ACK and length == 4:
        (count,) = yield from src.unpack(">I")
        return int(count)
    if kind == STATUS and 1 <= length <= 4097:
        payload = yield from src.read(length)
        return Status(payload[0] == STATUS_ACCEPTED, payload[1:].decode("utf-8", "replace"))
    raise ProtocolError(
        f"native stream: unexpected {_NAMES[kind]} frame of {length} bytes from the receiver"
    )
