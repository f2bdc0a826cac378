"""Typed addresses and the QEMU-compatible URI grammar.

Every string is parsed once, here, into a frozen dataclass; nothing after the
parser handles URI text.  ``str(address)`` gives the canonical URI, and parsing
it again gives an equal address.

The grammar is QEMU 10.0's, decision for decision: ``migrate_uri_parse``
(migration/migration.c), ``socket_parse``, ``inet_parse`` and ``vsock_parse``
(util/qemu-sockets.c), ``file_parse_offset`` (migration/file.c) and
``qemu_strtosz`` (util/cutils.c).  QEMU reads the URI as a C string with
``sscanf`` and ``strstr``; the helpers below redo those calls on the UTF-8
bytes of the text, because the field widths QEMU uses count bytes.  QEMU 10.1
replaced ``inet_parse`` with a QemuOpts parser that decides differently (it
rejects unknown options, for one); 10.0 is the reference here.

Addresses the URI grammar cannot express (an abstract unix socket, exec with
explicit arguments, inet options that exist only in QAPI form, a port longer
than QEMU reads, ...) print as QEMU's keyval spelling of their QAPI
``MigrationAddress``, e.g. ``transport=socket,type=unix,path=x,abstract=on``.
``parse_address`` rejects that text rather than misreading it as a URI;
``fdchannel.parse_channel`` takes it after ``addr.``, and ``address_from_qapi``
takes the QAPI mapping.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn, TypeAlias, TypeVar

from .errors import AddressError

__all__ = [
    "Address",
    "ExecAddress",
    "FdAddress",
    "FileAddress",
    "InetAddress",
    "RdmaAddress",
    "TcpAddress",
    "UnixAddress",
    "VsockAddress",
    "address_from_qapi",
    "address_to_qapi",
    "family_for",
    "parse_address",
]

#: sun_path is 108 bytes; a path needs its terminating NUL, an abstract name does not
#: but its leading NUL takes one byte: 107 usable bytes either way.
SUN_PATH_MAX = 108

_U16 = (1 << 16) - 1
_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1
#: Significant digits past which a number exceeds every C integer QEMU reads
#: (2**64 has 20 decimal digits, 16 hex, 22 octal).
_MAX_DIGITS = 24


def shown(value: object, limit: int = 200) -> str:
    """``repr(value)`` for an error message, cut at ``limit`` characters.

    Never raises: repr() of an integer over 4300 digits does (ValueError).
    """
    try:
        text = repr(value)
    except ValueError:
        return f"<{type(value).__name__} holding a number too long to print>"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def bounded_int(digits: str | bytes, base: int = 10, ceiling: int = 1 << 64) -> int:
    """``int(digits, base)`` (ASCII digits only), or ``ceiling`` if the value is larger.

    Python refuses to convert more than 4300 digits (a ValueError); a value
    that long is past every C integer QEMU reads, which is all callers need
    to know, so it is never converted.
    """
    significant = digits.lstrip(b"0") if isinstance(digits, bytes) else digits.lstrip("0")
    if len(significant) > _MAX_DIGITS:
        return ceiling
    return min(int(digits, base), ceiling)


def _check_str(value: object, what: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if "\0" in value:
        raise AddressError(f"{what} {value!r} contains a NUL character", value)


def _check_uint(value: object, what: str, limit: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not 0 <= value <= limit:
        raise AddressError(f"{what} {value} is out of range: expected 0 to {limit}", value)


@dataclass(frozen=True)
class UnixAddress:
    """``unix:PATH``; ``abstract``/``tight`` exist only in the JSON/keyval form."""

    path: str
    abstract: bool = False
    tight: bool = True
    scheme: ClassVar[str] = "unix"

    def __post_init__(self) -> None:
        _check_str(self.path, "unix socket path")

    def __str__(self) -> str:
        return _address_text(self)


@dataclass(frozen=True)
class InetAddress:
    """Host and port as QEMU's InetSocketAddress holds them (port is a string)."""

    host: str
    port: str
    to: int | None = None
    ipv4: bool | None = None
    ipv6: bool | None = None
    keep_alive: bool | None = None
    # Only in the JSON/keyval form (QEMU 10's InetSocketAddress).
    numeric: bool | None = None
    keep_alive_count: int | None = None
    keep_alive_idle: int | None = None
    keep_alive_interval: int | None = None
    mptcp: bool | None = None
    scheme: ClassVar[str] = "inet"

    def __post_init__(self) -> None:
        if isinstance(self.port, int):
            object.__setattr__(self, "port", str(self.port))
        _check_str(self.host, "host")
        _check_str(self.port, "port")
        if self.to is not None:
            _check_uint(self.to, "to", _U16)
        for name in ("keep_alive_count", "keep_alive_idle", "keep_alive_interval"):
            value = getattr(self, name)
            if value is not None:
                _check_uint(value, name.replace("_", "-"), _U32)


def family_for(address: InetAddress) -> socket.AddressFamily:
    """The address family the ipv4/ipv6 flags allow (AF_UNSPEC: either)."""
    if address.ipv4 is False and address.ipv6 is False:
        raise AddressError(
            f"{address}: ipv4=off and ipv6=off leave no address family to use", str(address)
        )
    if address.ipv4 and address.ipv6:
        return socket.AF_UNSPEC
    if address.ipv6 or address.ipv4 is False:
        return socket.AF_INET6
    if address.ipv4 or address.ipv6 is False:
        return socket.AF_INET
    return socket.AF_UNSPEC


@dataclass(frozen=True)
class TcpAddress(InetAddress):
    """``tcp:HOST:PORT[,opts]``."""

    scheme: ClassVar[str] = "tcp"

    def __str__(self) -> str:
        return _address_text(self)


@dataclass(frozen=True)
class RdmaAddress(InetAddress):
    """``rdma:HOST:PORT``: parsed like tcp, not supported when opened."""

    scheme: ClassVar[str] = "rdma"

    def __str__(self) -> str:
        return _address_text(self)


@dataclass(frozen=True)
class VsockAddress:
    """``vsock:CID:PORT``; both kept as text, checked as numbers at use."""

    cid: str
    port: str
    scheme: ClassVar[str] = "vsock"

    def __post_init__(self) -> None:
        for name in ("cid", "port"):
            if isinstance(getattr(self, name), int):
                object.__setattr__(self, name, str(getattr(self, name)))
        _check_str(self.cid, "vsock cid")
        _check_str(self.port, "vsock port")

    def __str__(self) -> str:
        return _address_text(self)


@dataclass(frozen=True)
class FdAddress:
    """``fd:NAME``: a descriptor number, or a name inherited or registered."""

    name: str
    scheme: ClassVar[str] = "fd"

    def __post_init__(self) -> None:
        if isinstance(self.name, int):
            object.__setattr__(self, "name", str(self.name))
        _check_str(self.name, "descriptor name")

    def __str__(self) -> str:
        return _address_text(self)


@dataclass(frozen=True)
class FileAddress:
    """``file:PATH[,offset=N]``."""

    path: str
    offset: int = 0
    scheme: ClassVar[str] = "file"

    def __post_init__(self) -> None:
        _check_str(self.path, "file path")
        _check_uint(self.offset, "file offset", _U64)

    def __str__(self) -> str:
        return _address_text(self)


@dataclass(frozen=True)
class ExecAddress:
    """``exec:CMD`` is ``/bin/sh -c CMD``; the JSON form gives ``args`` directly."""

    args: tuple[str, ...]
    scheme: ClassVar[str] = "exec"

    def __post_init__(self) -> None:
        if isinstance(self.args, str) or not isinstance(self.args, Sequence):
            raise TypeError(f"exec args must be a sequence of str, not {self.args!r}")
        object.__setattr__(self, "args", tuple(self.args))
        for arg in self.args:
            _check_str(arg, "exec argument")

    def __str__(self) -> str:
        return _address_text(self)


Address: TypeAlias = (
    UnixAddress | TcpAddress | RdmaAddress | VsockAddress | FdAddress | FileAddress | ExecAddress
)

#: The concrete address classes, for isinstance checks.
ADDRESS_TYPES = (
    UnixAddress,
    TcpAddress,
    RdmaAddress,
    VsockAddress,
    FdAddress,
    FileAddress,
    ExecAddress,
)

_I = TypeVar("_I", TcpAddress, RdmaAddress)

# --------------------------------------------------------------------------
# C string functions, as QEMU's parsers use them.

_C_SPACE = b" \t\n\v\f\r"  # isspace() in the C locale
_DIGITS = b"0123456789"
_HEX = b"0123456789abcdefABCDEF"


def _c_string(text: str, source: object) -> bytes:
    """The bytes QEMU would see; a NUL or an unencodable character is an error."""
    if "\0" in text:
        raise AddressError(
            f"{source!r} contains a NUL character, which a C string cannot hold", source
        )
    try:
        # surrogateescape carries bytes that are not UTF-8 (os.fsdecode's convention).
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise AddressError(
            f"{source!r} contains a lone surrogate: not encodable text", source
        ) from None


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _scanset(buf: bytes, start: int, width: int, stop: bytes) -> int | None:
    """sscanf's ``%<width>[^<stop>]``: where the match ends, None if it is empty.

    The conversion needs at least one byte and stops silently at its width: the
    rest of a longer field is left for the next directive (a QEMU quirk we keep).
    """
    end, limit = start, min(len(buf), start + width)
    while end < limit and buf[end] not in stop:
        end += 1
    return end if end > start else None


def _scan_int(buf: bytes, start: int) -> tuple[int, int] | None:
    """sscanf's ``%d``: the value glibc stores in the int, and where it stopped."""
    i = start
    while i < len(buf) and buf[i] in _C_SPACE:
        i += 1
    j = i + 1 if i < len(buf) and buf[i] in b"+-" else i
    k = j
    while k < len(buf) and buf[k] in _DIGITS:
        k += 1
    if k == j:
        return None
    # glibc converts with strtol (saturating at the long range), then stores an int.
    magnitude = bounded_int(buf[j:k], 10, 1 << 63)
    value = max(-(1 << 63), min((1 << 63) - 1, -magnitude if buf[i:j] == b"-" else magnitude))
    return (value + (1 << 31)) % (1 << 32) - (1 << 31), k


def _strtoull(buf: bytes, base: int) -> tuple[int, int] | None:
    """glibc strtoull in base 10 or 16: (value, end); end 0 when nothing converts.

    None means ERANGE.  Like strtoull, a leading minus negates modulo 2**64.
    """
    i = 0
    while i < len(buf) and buf[i] in _C_SPACE:
        i += 1
    negative = i < len(buf) and buf[i] == ord("-")
    if i < len(buf) and buf[i] in b"+-":
        i += 1
    digits = _HEX if base == 16 else _DIGITS
    if base == 16 and buf[i : i + 2] in (b"0x", b"0X") and i + 2 < len(buf) and buf[i + 2] in _HEX:
        i += 2  # without a hex digit after it, "0x" converts as "0" and stops at the x
    j = i
    while j < len(buf) and buf[j] in digits:
        j += 1
    if j == i:
        return 0, 0
    value = bounded_int(buf[i:j], base)
    if value > _U64:
        return None
    return (-value if negative else value) & _U64, j


def _suffix_mul(char: int) -> int:
    """suffix_mul() with unit 1024: B K M G T P E, case-insensitive; 0 if none."""
    index = b"BKMGTPE".find(bytes([char]).upper())
    return 1024**index if index >= 0 else 0


def _strtosz(buf: bytes) -> int | None:
    """qemu_strtosz(buf, NULL, ...): the size in bytes, or None where QEMU fails.

    Decimal with an optional B/K/M/G/T/P/E suffix (binary multiples) and an
    optional fraction when a suffix above B scales it; hex only without suffix
    or fraction; no octal, no exponent, nothing negative (not even -0), nothing
    of 2**64 or more, nothing after the number.  Leading white space is fine.
    """
    n = len(buf)

    def at(k: int) -> int:
        return buf[k] if k < n else 0  # the C string's terminating NUL

    # parse_uint(): strtoull in base 10, then negatives refused.
    scanned = _strtoull(buf, 10)
    if scanned is None:
        return None
    val, end = scanned
    converted = end > 0
    if converted and buf.lstrip(_C_SPACE)[:1] == b"-":
        return None
    valf = 0  # the fraction as 0.64 fixed point
    if converted and val == 0 and at(end) in b"xX":
        hexed = _strtoull(buf, 16)
        if hexed is None:
            return None
        val, end = hexed
        if at(end) == ord(".") or _suffix_mul(at(end)) > 0:
            return None  # hex takes neither a fraction nor a suffix
    elif at(end) == ord(".") or (not converted and b"." in buf):
        if converted and at(end + 1) not in _DIGITS:
            end += 1  # "1." and "1.k" need no fraction digits
        else:
            # strtod on a copy cut at the first 'e'/'E' (a suffix, not an exponent):
            # only [space][sign].digits can convert here; inf and nan are refused.
            copy = re.split(rb"[eE]", buf[end:], maxsplit=1)[0]
            match = re.match(rb"[ \t\n\v\f\r]*([+-]?)\.([0-9]+)", copy)
            if match is None:
                return None
            if match.group(1) == b"-":
                return None  # a negative fraction, -0.0 included
            digits = match.group(2)
            end += match.end()
            fraction = float(b"0." + digits)
            if fraction == 1.0:
                if val == _U64:
                    return None
                val += 1
            else:
                valf = int(fraction * 2.0**64)
                if valf == 0 and digits.strip(b"0"):
                    valf = 1  # an underflowing fraction still counts as one
    elif not converted:
        return None
    mul = _suffix_mul(at(end))
    if mul:
        end += 1
    else:
        mul = 1
    if mul == 1:
        if valf:
            return None  # a fraction needs a suffix larger than a byte
    else:
        product = valf * mul
        val = val * mul + (product >> 64) + ((product >> 63) & 1)  # rounds half up
        if val > _U64:
            return None
    if end < n:
        return None
    return val


# --------------------------------------------------------------------------
# The URI grammar.


def _fail(text: str, detail: str) -> NoReturn:
    raise AddressError(f"invalid address {text!r}: {detail}", text)


def _parse_flag(text: str, opts: bytes, start: int, name: str) -> bool:
    """inet_parse_flag(): nothing, ``=on`` or ``=off`` up to the next comma."""
    rest = opts[start:]
    comma = rest.find(b",")
    segment = rest if comma < 0 else rest[:comma]
    expected = f"expected ',{name}', ',{name}=on' or ',{name}=off'"
    if comma >= 0 and rest[comma + 1 : comma + 2] == b",":
        _fail(text, f"bad flag ',{name}{_text(segment)},,': {expected} without a doubled comma")
    if segment in (b"", b"=on"):
        return True
    if segment == b"=off":
        return False
    _fail(text, f"bad flag ',{name}{_text(segment)}': {expected}")


def _parse_inet(cls: type[_I], text: str, buf: bytes) -> _I:
    """inet_parse(): HOST:PORT, [HOST]:PORT or :PORT, then options found by strstr."""
    usage = f"expected {cls.scheme}:HOST:PORT, {cls.scheme}:[HOST]:PORT or {cls.scheme}::PORT"
    if buf[:1] == b":":
        host, port_start = b"", 1
    elif buf[:1] == b"[":
        end = _scanset(buf, 1, 64, b"]")
        if end is None or buf[end : end + 2] != b"]:":
            _fail(text, f"{usage}, with an IPv6 host of 1 to 64 bytes in brackets")
        host, port_start = buf[1:end], end + 2
    else:
        end = _scanset(buf, 0, 64, b":")
        if end is None or buf[end : end + 1] != b":":
            _fail(text, f"{usage}, with a host of 1 to 64 bytes")
        host, port_start = buf[:end], end + 1
    port_end = _scanset(buf, port_start, 32, b",")
    if port_end is None:
        _fail(text, f"{usage}: the port is missing")
    # QEMU reads at most 32 bytes of port and searches the options from there on,
    # so a longer port is cut short without an error.  Options are found with
    # strstr: anywhere, in any order, the first of each wins, others are ignored.
    opts = buf[port_end:]
    to = None
    found = opts.find(b",to=")
    if found >= 0:
        scanned = _scan_int(opts, found + 4)
        if scanned is None or (scanned[1] < len(opts) and opts[scanned[1]] != ord(",")):
            _fail(text, "to= expects a number")
        to = scanned[0] % (1 << 16)  # QEMU stores the int into the uint16_t 'to'
    flags: dict[str, bool] = {}
    for name in ("ipv4", "ipv6", "keep-alive", "mptcp"):
        found = opts.find(b"," + name.encode())
        if found >= 0:
            flags[name] = _parse_flag(text, opts, found + 1 + len(name), name)
    return cls(
        host=_text(host),
        port=_text(buf[port_start:port_end]),
        to=to,
        ipv4=flags.get("ipv4"),
        ipv6=flags.get("ipv6"),
        keep_alive=flags.get("keep-alive"),
        mptcp=flags.get("mptcp"),
    )


def _parse_vsock(text: str, buf: bytes) -> VsockAddress:
    """vsock_parse(): CID:PORT, each 1 to 32 bytes, nothing after."""
    end = _scanset(buf, 0, 32, b":")
    if end is None or buf[end : end + 1] != b":":
        _fail(text, "expected vsock:CID:PORT, with a CID of 1 to 32 bytes")
    port_end = _scanset(buf, end + 1, 32, b",")
    if port_end is None:
        _fail(text, "expected vsock:CID:PORT: the port is missing")
    if port_end != len(buf):
        _fail(text, "trailing characters after vsock:CID:PORT (a port has at most 32 bytes)")
    return VsockAddress(_text(buf[:end]), _text(buf[end + 1 : port_end]))


def _parse_file(text: str, buf: bytes) -> FileAddress:
    """file_parse_offset(): split at the first ',offset=', the rest is a size."""
    found = buf.find(b",offset=")
    if found < 0:
        return FileAddress(_text(buf))
    offset = _strtosz(buf[found + 8 :])
    if offset is None:
        _fail(
            text,
            f"bad offset {_text(buf[found + 8 :])!r}: expected a size below 2**64, decimal "
            "with an optional B/K/M/G/T/P/E suffix, or hex without suffix",
        )
    return FileAddress(_text(buf[:found]), offset)


_PROTOCOLS = ("exec:", "rdma:", "tcp:", "unix:", "vsock:", "fd:", "file:")


def parse_address(text: str) -> Address:
    """Parse a migration URI exactly as QEMU 10.0's ``migrate_uri_parse`` does.

    Raises AddressError (a ValueError) naming the input and what was expected.
    """
    if not isinstance(text, str):
        raise AddressError(f"{text!r} is not a URI: expected text such as 'unix:/path'", text)
    buf = _c_string(text, text)
    if buf.startswith(b"exec:"):
        return ExecAddress(("/bin/sh", "-c", _text(buf[5:])))
    if buf.startswith(b"rdma:"):
        return _parse_inet(RdmaAddress, text, buf[5:])
    if buf.startswith(b"tcp:"):
        return _parse_inet(TcpAddress, text, buf[4:])
    if buf.startswith(b"unix:"):
        if len(buf) == 5:
            _fail(text, "expected unix:PATH: the path is empty")
        return UnixAddress(_text(buf[5:]))
    if buf.startswith(b"vsock:"):
        return _parse_vsock(text, buf[6:])
    if buf.startswith(b"fd:"):
        if len(buf) == 3:
            _fail(text, "expected fd:NUMBER or fd:NAME: the name is empty")
        return FdAddress(_text(buf[3:]))
    if buf.startswith(b"file:"):
        return _parse_file(text, buf[5:])
    raise AddressError(
        f"unknown migration protocol in {text!r}: expected a URI starting with "
        + ", ".join(_PROTOCOLS)
        + " (case-sensitive)",
        text,
    )


# --------------------------------------------------------------------------
# Printing: the URI when the grammar can say it, else QEMU's keyval form.


def _flag(value: bool) -> str:
    return "on" if value else "off"


def _candidate_uri(addr: Address) -> str | None:
    if isinstance(addr, UnixAddress):
        return f"unix:{addr.path}"
    if isinstance(addr, VsockAddress):
        return f"vsock:{addr.cid}:{addr.port}"
    if isinstance(addr, FdAddress):
        return f"fd:{addr.name}"
    if isinstance(addr, FileAddress):
        return f"file:{addr.path},offset={addr.offset}" if addr.offset else f"file:{addr.path}"
    if isinstance(addr, ExecAddress):
        if len(addr.args) == 3 and addr.args[:2] == ("/bin/sh", "-c"):
            return f"exec:{addr.args[2]}"
        return None
    host = addr.host
    if not host:
        where = f":{addr.port}"
    elif ":" in host or host.startswith("["):
        where = f"[{host}]:{addr.port}"
    else:
        where = f"{host}:{addr.port}"
    opts = "" if addr.to is None else f",to={addr.to}"
    for name, value in (
        ("ipv4", addr.ipv4),
        ("ipv6", addr.ipv6),
        ("keep-alive", addr.keep_alive),
        ("mptcp", addr.mptcp),
    ):
        if value is not None:
            opts += f",{name}={_flag(value)}"
    return f"{addr.scheme}:{where}{opts}"


def address_uri(addr: Address) -> str | None:
    """The URI that parses back to ``addr``, or None where the grammar cannot say it."""
    uri = _candidate_uri(addr)
    if uri is None:
        return None
    try:
        same = parse_address(uri) == addr
    except AddressError:
        same = False
    return uri if same else None


def keyval_members(members: Mapping[str, Any], prefix: str = "") -> list[str]:
    """QAPI members as keyval ``key=value`` items (commas in values doubled)."""
    items: list[str] = []
    for key, value in members.items():
        name = prefix + key
        if isinstance(value, Mapping):
            items += keyval_members(value, name + ".")
        elif isinstance(value, list | tuple):
            items += keyval_members({str(i): item for i, item in enumerate(value)}, name + ".")
        elif isinstance(value, bool):
            items.append(f"{name}={_flag(value)}")
        else:
            items.append(f"{name}={str(value).replace(',', ',,')}")
    return items


def _address_text(addr: Address) -> str:
    """str(): the URI, or the keyval form of the QAPI MigrationAddress."""
    return address_uri(addr) or ",".join(keyval_members(address_to_qapi(addr)))


# --------------------------------------------------------------------------
# QAPI: MigrationAddress (qapi/migration.json) and SocketAddress (qapi/sockets.json).


def _inet_members(addr: InetAddress) -> dict[str, Any]:
    members: dict[str, Any] = {"host": addr.host, "port": addr.port}
    for key, value in (
        ("numeric", addr.numeric),
        ("to", addr.to),
        ("ipv4", addr.ipv4),
        ("ipv6", addr.ipv6),
        ("keep-alive", addr.keep_alive),
        ("keep-alive-count", addr.keep_alive_count),
        ("keep-alive-idle", addr.keep_alive_idle),
        ("keep-alive-interval", addr.keep_alive_interval),
        ("mptcp", addr.mptcp),
    ):
        if value is not None:
            members[key] = value
    return members


def address_to_qapi(addr: Address) -> dict[str, Any]:
    """The QAPI ``MigrationAddress`` for addr, spelled as QEMU spells it."""
    if isinstance(addr, UnixAddress):
        unix: dict[str, Any] = {"transport": "socket", "type": "unix", "path": addr.path}
        if addr.abstract:
            unix["abstract"] = True
        if not addr.tight:
            unix["tight"] = False
        return unix
    if isinstance(addr, TcpAddress):
        return {"transport": "socket", "type": "inet", **_inet_members(addr)}
    if isinstance(addr, RdmaAddress):
        return {"transport": "rdma", **_inet_members(addr)}
    if isinstance(addr, VsockAddress):
        return {"transport": "socket", "type": "vsock", "cid": addr.cid, "port": addr.port}
    if isinstance(addr, FdAddress):
        return {"transport": "socket", "type": "fd", "str": addr.name}
    if isinstance(addr, FileAddress):
        return {"transport": "file", "filename": addr.path, "offset": addr.offset}
    if isinstance(addr, ExecAddress):
        return {"transport": "exec", "args": list(addr.args)}
    raise TypeError(f"not an address: {addr!r}")


_MISSING = object()
_TRUE_WORDS = ("on", "yes", "true", "y")  # qapi_bool_parse()
_FALSE_WORDS = ("off", "no", "false", "n")
_KEYVAL_UINT = re.compile(r"[ \t\n\v\f\r]*([+-]?)(?:0[xX]([0-9a-fA-F]+)|(0[0-7]*)|([1-9][0-9]*))\Z")


def _keyval_uint(text: str) -> int | None:
    """qemu_strtou64(text, NULL, 0): base 0 (0x hex, 0 octal), negatives wrap."""
    match = _KEYVAL_UINT.match(text)
    if match is None:
        return None
    sign, hexa, octal, decimal = match.groups()
    if hexa is not None:
        value = bounded_int(hexa, 16)
    elif octal is not None:
        value = bounded_int(octal, 8)
    else:
        value = bounded_int(decimal)
    if value > _U64:
        return None
    return (-value if sign == "-" else value) & _U64


class QapiReader:
    """Reads one QAPI struct as QEMU's QObject input visitor does.

    ``keyval`` selects the keyval visitor (every scalar is a string, converted
    on demand: integers in base 0, booleans on/off/yes/no/true/false/y/n);
    otherwise the JSON visitor, where types must match exactly.  Errors are
    AddressError naming the whole input (``source``) and the parameter.
    """

    def __init__(
        self, data: object, *, keyval: bool, source: object, what: str, path: str = ""
    ) -> None:
        self.keyval, self.source, self.what, self.path = keyval, source, what, path
        if not isinstance(data, Mapping):
            where = f"'{path}'" if path else "the input"
            self.fail(f"{where} must be an object, not {_kind(data)}")
        self.data: Mapping[Any, Any] = data
        self.unvisited: dict[Any, None] = dict.fromkeys(data)

    def fail(self, detail: str) -> NoReturn:
        raise AddressError(f"invalid {self.what} {shown(self.source)}: {detail}", self.source)

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, *, optional: bool = False) -> Any:
        if key not in self.data:
            if optional:
                return _MISSING
            self.fail(f"parameter '{self.name(key)}' is missing")
        self.unvisited.pop(key, None)
        return self.data[key]

    def _scalar(self, key: str, value: object, expected: str) -> None:
        if self.keyval and isinstance(value, Mapping | list):
            self.fail(f"parameters '{self.name(key)}.*' are unexpected")
        if not self.keyval and not _is_json_kind(value, expected):
            self.fail(
                f"invalid type for '{self.name(key)}': expected {expected}, got {_kind(value)}"
            )

    def _text_value(self, name: str, value: object) -> str:
        if not isinstance(value, str):
            self.fail(f"invalid type for '{name}': expected string, got {_kind(value)}")
        if "\0" in value:
            self.fail(f"'{name}' contains a NUL character, which a C string cannot hold")
        try:
            value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            self.fail(f"'{name}' contains a lone surrogate")
        return value

    def string(self, key: str) -> str:
        value = self.get(key)
        self._scalar(key, value, "string")
        return self._text_value(self.name(key), value)

    def enum(self, key: str, choices: tuple[str, ...]) -> str:
        value = self.string(key)
        if value not in choices:
            self.fail(
                f"parameter '{self.name(key)}' does not accept value {shown(value)}: expected "
                + " or ".join(repr(choice) for choice in choices)
            )
        return value

    def boolean(self, key: str) -> bool | None:
        value = self.get(key, optional=True)
        if value is _MISSING:
            return None
        self._scalar(key, value, "boolean")
        if not self.keyval:
            return bool(value)
        if value in _TRUE_WORDS:
            return True
        if value in _FALSE_WORDS:
            return False
        self.fail(f"parameter '{self.name(key)}' expects 'on' or 'off', got {shown(value)}")

    def uint(self, key: str, bits: int, *, optional: bool = False) -> int | None:
        value = self.get(key, optional=optional)
        if value is _MISSING:
            return None
        self._scalar(key, value, "integer")
        limit = (1 << bits) - 1
        expects = f"parameter '{self.name(key)}' expects an integer from 0 to {limit}"
        number: int | None
        if self.keyval:
            number = _keyval_uint(value)
        elif -(1 << 63) <= value < 0:
            # QEMU's JSON visitor takes negative integers for unsigned members
            # ("backward compatibility") and wraps them modulo 2**64.
            number = value & _U64
        else:
            # Beyond 64 bits QEMU's JSON parser holds a double, never an integer.
            number = value if 0 <= value <= _U64 else None
        if number is None or number > limit:
            self.fail(f"{expects}, got {shown(value)}")
        return number

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.get(key)
        if not isinstance(value, list | tuple):
            self.fail(f"invalid type for '{self.name(key)}': expected array, got {_kind(value)}")
        items = []
        for index, item in enumerate(value):
            name = f"{self.name(key)}.{index}" if self.keyval else f"{self.name(key)}[{index}]"
            if self.keyval and isinstance(item, Mapping | list):
                self.fail(f"parameters '{name}.*' are unexpected")
            items.append(self._text_value(name, item))
        return tuple(items)

    def struct(self, key: str) -> QapiReader:
        return QapiReader(
            self.get(key),
            keyval=self.keyval,
            source=self.source,
            what=self.what,
            path=self.name(key),
        )

    def finish(self) -> None:
        """visit_check_struct(): every member must have been visited."""
        for key in self.unvisited:
            self.fail(f"parameter '{self.name(str(key))}' is unexpected")


def _is_json_kind(value: object, expected: str) -> bool:
    if expected == "boolean":
        return isinstance(value, bool)
    if expected == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, str)


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return "null" if value is None else type(value).__name__


def _read_inet(reader: QapiReader, cls: type[_I]) -> _I:
    return cls(
        host=reader.string("host"),
        port=reader.string("port"),
        numeric=reader.boolean("numeric"),
        to=reader.uint("to", 16, optional=True),
        ipv4=reader.boolean("ipv4"),
        ipv6=reader.boolean("ipv6"),
        keep_alive=reader.boolean("keep-alive"),
        # QEMU 10.1 added these three (uint32); 10.0 calls them unexpected.
        keep_alive_count=reader.uint("keep-alive-count", 32, optional=True),
        keep_alive_idle=reader.uint("keep-alive-idle", 32, optional=True),
        keep_alive_interval=reader.uint("keep-alive-interval", 32, optional=True),
        mptcp=reader.boolean("mptcp"),
    )


def read_address(reader: QapiReader) -> Address:
    """Visit a MigrationAddress union in QAPI member order, then check for extras."""
    addr: Address
    transport = reader.enum("transport", ("socket", "exec", "rdma", "file"))
    if transport == "socket":
        kind = reader.enum("type", ("inet", "unix", "vsock", "fd"))
        if kind == "inet":
            addr = _read_inet(reader, TcpAddress)
        elif kind == "unix":
            path = reader.string("path")
            abstract = reader.boolean("abstract")
            tight = reader.boolean("tight")
            addr = UnixAddress(path, bool(abstract), tight is None or tight)
        elif kind == "vsock":
            addr = VsockAddress(reader.string("cid"), reader.string("port"))
        else:
            addr = FdAddress(reader.string("str"))
    elif transport == "exec":
        addr = ExecAddress(reader.strings("args"))
    elif transport == "rdma":
        addr = _read_inet(reader, RdmaAddress)
    else:
        path = reader.string("filename")
        offset = reader.uint("offset", 64)  # required in QAPI, even when 0
        assert offset is not None
        addr = FileAddress(path, offset)
    reader.finish()
    return addr


def address_from_qapi(data: Mapping[str, Any]) -> Address:
    """The address a QAPI ``MigrationAddress`` mapping names (JSON typing).

    Unknown or missing members, wrong types and out-of-range integers raise
    AddressError naming the input.
    """
    return read_address(QapiReader(data, keyval=False, source=data, what="QAPI address"))
