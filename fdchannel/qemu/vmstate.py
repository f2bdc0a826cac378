"""CprState's VMState subsections: what QEMU 10.1 and later send after the descriptors.

A subsection on the wire is a byte 0x05, a u8 name length, the name
without a NUL (always ``CprState/...``), a u32 version_id, then the body
(migration/vmstate.c).  A body carries no length, so only a parser that
knows its fields can tell where it ends: ``KNOWN_BODIES`` holds those
parsers by (name, version), so far ``CprState/vfio devices`` version 1 (a
device list like the descriptor list, or nothing at all from a QEMU built
without IOMMUFD).  ``Subsection`` keeps a body raw, and parsed when it is
known; ``FdState.qemu_subsections`` holds them, and the qemu codec
(``fdchannel.codecs.qemu``) reads and writes them in the stream.  Strings
are QEMU's VMState strings (``c_string``): a u32 length counting the NUL,
the bytes, the NUL.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from ..errors import ProtocolError, StateError
from ..limits import Limits
from ..parsing import MAY_END, ByteSource, byte_or_end

__all__ = [
    "END",
    "KNOWN_BODIES",
    "MAX_NAME",
    "MORE",
    "PREFIX",
    "SUBSECTION",
    "VFIO_DEVICES",
    "Subsection",
    "VfioDevice",
    "c_string",
]

#: Another entry of a list follows (descriptors, vfio devices).
MORE = 0x01
#: The list ends.
END = 0x00
#: QEMU_VM_SUBSECTION (migration/savevm.h).
SUBSECTION = 0x05
#: The parent's name and a slash: vmstate_subsection_load takes only such names.
PREFIX = "CprState/"
#: The subsection QEMU 10.1 to 11.1 send (hw/vfio/cpr-iommufd.c, iommufd-stubs.c).
VFIO_DEVICES = "CprState/vfio devices"
#: A subsection name's length is one byte on the wire.
MAX_NAME = 255

T = TypeVar("T")


@dataclass(frozen=True)
class VfioDevice:
    """One entry of ``CprState/vfio devices`` (hw/vfio/cpr-iommufd.c)."""

    name: str
    devid: int  # int32
    ioas_id: int  # uint32
    hwpt_id: int  # uint32

    def __post_init__(self) -> None:
        if "\0" in self.name:
            raise StateError(f"vfio device name {self.name!r} contains a NUL")
        if not -(1 << 31) <= self.devid < 1 << 31:
            raise StateError(f"vfio devid {self.devid} is not an int32")
        for what, value in (("ioas_id", self.ioas_id), ("hwpt_id", self.hwpt_id)):
            if not 0 <= value < 1 << 32:
                raise StateError(f"vfio {what} {value} is not a u32")

    def to_bytes(self) -> bytes:
        name = self.name.encode("utf-8", "surrogateescape") + b"\0"
        fixed = struct.pack(">iII", self.devid, self.ioas_id, self.hwpt_id)
        return struct.pack(">BI", MORE, len(name)) + name + fixed


@dataclass(frozen=True)
class Subsection:
    """One VMState subsection after the descriptor list, its body kept raw.

    ``devices`` is the body parsed, for ``CprState/vfio devices`` version 1;
    None for a subsection fdchannel does not know (``known`` False).
    """

    name: str
    version_id: int
    body: bytes = b""
    devices: tuple[VfioDevice, ...] | None = field(init=False, compare=False)

    def __post_init__(self) -> None:
        raw = self.name.encode("utf-8", "surrogateescape")
        if not self.name.startswith(PREFIX) or not len(PREFIX) < len(raw) <= MAX_NAME:
            raise StateError(
                f"subsection name {self.name!r} is not {PREFIX}NAME, 255 bytes at most"
            )
        if not 0 <= self.version_id < 1 << 32:
            raise StateError(f"subsection version {self.version_id} is not a u32")
        object.__setattr__(self, "devices", _parse_known_body(self))

    @property
    def known(self) -> bool:
        """Whether this codec knows the subsection's fields."""
        return self.devices is not None

    @classmethod
    def vfio_devices(
        cls, devices: Sequence[VfioDevice] = (), *, iommufd: bool = True
    ) -> Subsection:
        """``CprState/vfio devices`` as QEMU writes it; ``iommufd`` False: the empty stub."""
        if not iommufd:
            if devices:
                raise StateError("a QEMU without IOMMUFD sends no vfio devices")
            return cls(VFIO_DEVICES, 1)
        body = b"".join(device.to_bytes() for device in devices) + bytes([END])
        return cls(VFIO_DEVICES, 1, body)

    def to_bytes(self) -> bytes:
        """The subsection on the wire: marker, name, version, body."""
        name = self.name.encode("utf-8", "surrogateescape")
        header = struct.pack(">BB", SUBSECTION, len(name)) + name
        return header + struct.pack(">I", self.version_id) + self.body


def c_string(src: ByteSource, limits: Limits, what: str) -> Generator[int, None, str]:
    """A u32 length counting the NUL, then the string and its NUL."""
    (length,) = yield from src.unpack(">I")
    if not 1 <= length <= limits.max_name + 1:
        raise ProtocolError(
            f"qemu cpr stream: {what} length {length} at offset {src.offset - 4} is not "
            f"from 1 to {limits.max_name + 1} (the NUL included)"
        )
    raw = yield from src.read(length)
    if raw[-1] != 0 or 0 in raw[:-1]:
        raise ProtocolError(f"qemu cpr stream: {what} {raw!r} is not one NUL-ended string")
    return raw[:-1].decode("utf-8", "surrogateescape")


#: A known body: its bytes, its devices and the byte after it (None: the stream ended).
Body = tuple[bytes, tuple["VfioDevice", ...], int | None]
BodyParser = Callable[[ByteSource, Limits], Generator[int, bool | None, Body]]


def _vfio_devices(src: ByteSource, limits: Limits) -> Generator[int, bool | None, Body]:
    """``CprState/vfio devices`` v1: no body, or a device list; then the next byte."""
    first = yield from byte_or_end(src)
    if first is None or first == SUBSECTION:
        return b"", (), first  # built without IOMMUFD: the subsection has no fields
    parts = [bytes([first])]
    devices: list[VfioDevice] = []
    size, tag = 1, first
    while tag == MORE:
        if len(devices) >= limits.max_entries:
            raise ProtocolError(f"qemu cpr stream has more than {limits.max_entries} vfio devices")
        device = yield from _vfio_device(src, limits)
        raw = device.to_bytes()[1:]  # without its 0x01, already counted
        size += len(raw) + 1
        if size > limits.max_subsection:
            raise ProtocolError(
                f"qemu cpr stream: {VFIO_DEVICES!r} is longer than {limits.max_subsection} bytes"
            )
        (tag,) = yield from src.unpack(">B")
        parts += [raw, bytes([tag])]
        devices.append(device)
    if tag != END:
        raise ProtocolError(
            f"qemu cpr stream: byte {tag:#04x} at offset {src.offset - 1} in {VFIO_DEVICES!r} "
            "is neither 0x01 (another device) nor 0x00 (end of list)"
        )
    after = yield from byte_or_end(src)
    return b"".join(parts), tuple(devices), after


def _vfio_device(src: ByteSource, limits: Limits) -> Generator[int, None, VfioDevice]:
    """One device after its 0x01: name, devid, ioas_id, hwpt_id."""
    name = yield from c_string(src, limits, "vfio device name")
    devid, ioas_id, hwpt_id = yield from src.unpack(">iII")
    return VfioDevice(name, devid, ioas_id, hwpt_id)


KNOWN_BODIES: dict[tuple[str, int], BodyParser] = {(VFIO_DEVICES, 1): _vfio_devices}


def _parse_known_body(sub: Subsection) -> tuple[VfioDevice, ...] | None:
    """The devices in a known subsection's body; None if the subsection is unknown."""
    parser = KNOWN_BODIES.get((sub.name, sub.version_id))
    if parser is None:
        return None
    src = ByteSource()
    src.append(sub.body)
    body, devices, after = _run_to_end(parser(src, _UNBOUNDED), sub.name)
    if after is not None:
        raise StateError(f"{sub.name!r} has bytes after its body: {sub.body[len(body) :]!r}")
    return devices


def _run_to_end(parser: Generator[int, bool | None, T], what: str) -> T:
    """Run a parser over bytes already all there, the stream ended after them."""
    try:
        need = next(parser)
        while need == MAY_END:
            need = parser.send(True)
        raise StateError(f"{what} body ends in the middle of a field")
    except StopIteration as stop:
        result: T = stop.value
        return result
    except ProtocolError as exc:
        raise StateError(str(exc)) from None
    finally:
        parser.close()


#: Bounds for bodies already in memory: nothing more is allocated for them.
_UNBOUNDED = Limits(max_name=1 << 32, max_entries=1 << 32, max_subsection=1 << 62)
