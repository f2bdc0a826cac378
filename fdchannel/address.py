"""Typed addresses and the QEMU-compatible URI grammar.

Every string is parsed once, here, into a frozen dataclass; nothing after the
parser handles URI text.  ``str(address)`` gives the canonical URI, and parsing
it again gives an equal address.

The grammar is QEMU 10.0's, decision for decision: ``migrate_uri_parse``
(migration/migration.c), ``socket_parse``, ``inet_parse`` and ``vsock_parse``
(util/qemu-sockets.c), ``file_parse_offset`` (migration/file.c) and
``qemu_strtosz`` (util/cutils.c).  QEMU reads the URI as a C string with
``sscanf`` and ``strstr``; ``fdchannel.qemu.cstring`` redoes those calls on
the UTF-8 bytes of the text, because the field widths QEMU uses count bytes.  QEMU 10.1
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

import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn, TypeAlias, TypeVar

from .errors import AddressError
from .qemu.cstring import (
    U64,
    c_string,
    c_text,
    scan_int,
    scanset,
    strtosz,
)
from .qemu.keyval import keyval_members
from .qemu.qapi import QapiReader

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
        _check_uint(self.offset, "file offset", U64)

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

_I = TypeVar("_I", bound=InetAddress)

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
        _fail(text, f"bad flag ',{name}{c_text(segment)},,': {expected} without a doubled comma")
    if segment in (b"", b"=on"):
        return True
    if segment == b"=off":
        return False
    _fail(text, f"bad flag ',{name}{c_text(segment)}': {expected}")


def _parse_inet(cls: type[_I], text: str, buf: bytes) -> _I:
    """inet_parse(): HOST:PORT, [HOST]:PORT or :PORT, then options found by strstr."""
    usage = f"expected {cls.scheme}:HOST:PORT, {cls.scheme}:[HOST]:PORT or {cls.scheme}::PORT"
    if buf[:1] == b":":
        host, port_start = b"", 1
    elif buf[:1] == b"[":
        end = scanset(buf, 1, 64, b"]")
        if end is None or buf[end : end + 2] != b"]:":
            _fail(text, f"{usage}, with an IPv6 host of 1 to 64 bytes in brackets")
        host, port_start = buf[1:end], end + 2
    else:
        end = scanset(buf, 0, 64, b":")
        if end is None or buf[end : end + 1] != b":":
            _fail(text, f"{usage}, with a host of 1 to 64 bytes")
        host, port_start = buf[:end], end + 1
    port_end = scanset(buf, port_start, 32, b",")
    if port_end is None:
        _fail(text, f"{usage}: the port is missing")
    # QEMU reads at most 32 bytes of port and searches the options from there on,
    # so a longer port is cut short without an error.  Options are found with
    # strstr: anywhere, in any order, the first of each wins, others are ignored.
    opts = buf[port_end:]
    to = None
    found = opts.find(b",to=")
    if found >= 0:
        scanned = scan_int(opts, found + 4)
        if scanned is None or (scanned[1] < len(opts) and opts[scanned[1]] != ord(",")):
            _fail(text, "to= expects a number")
        to = scanned[0] % (1 << 16)  # QEMU stores the int into the uint16_t 'to'
    flags: dict[str, bool] = {}
    for name in ("ipv4", "ipv6", "keep-alive", "mptcp"):
        found = opts.find(b"," + name.encode())
        if found >= 0:
            flags[name] = _parse_flag(text, opts, found + 1 + len(name), name)
    return cls(
        host=c_text(host),
        port=c_text(buf[port_start:port_end]),
        to=to,
        ipv4=flags.get("ipv4"),
        ipv6=flags.get("ipv6"),
        keep_alive=flags.get("keep-alive"),
        mptcp=flags.get("mptcp"),
    )


def _parse_vsock(text: str, buf: bytes) -> VsockAddress:
    """vsock_parse(): CID:PORT, each 1 to 32 bytes, nothing after."""
    end = scanset(buf, 0, 32, b":")
    if end is None or buf[end : end + 1] != b":":
        _fail(text, "expected vsock:CID:PORT, with a CID of 1 to 32 bytes")
    port_end = scanset(buf, end + 1, 32, b",")
    if port_end is None:
        _fail(text, "expected vsock:CID:PORT: the port is missing")
    if port_end != len(buf):
        _fail(text, "trailing characters after vsock:CID:PORT (a port has at most 32 bytes)")
    return VsockAddress(c_text(buf[:end]), c_text(buf[end + 1 : port_end]))


def _parse_file(text: str, buf: bytes) -> FileAddress:
    """file_parse_offset(): split at the first ',offset=', the rest is a size."""
    found = buf.find(b",offset=")
    if found < 0:
        return FileAddress(c_text(buf))
    offset = strtosz(buf[found + 8 :])
    if offset is None:
        _fail(
            text,
            f"bad offset {c_text(buf[found + 8 :])!r}: expected a size below 2**64, decimal "
            "with an optional B/K/M/G/T/P/E suffix, or hex without suffix",
        )
    return FileAddress(c_text(buf[:found]), offset)


_PROTOCOLS = ("exec:", "rdma:", "tcp:", "unix:", "vsock:", "fd:", "file:")


def parse_address(text: str) -> Address:
    """Parse a migration URI exactly as QEMU 10.0's ``migrate_uri_parse`` does.

    Raises AddressError (a ValueError) naming the input and what was expected.
    """
    if not isinstance(text, str):
        raise AddressError(f"{text!r} is not a URI: expected text such as 'unix:/path'", text)
    buf = c_string(text, text)
    if buf.startswith(b"exec:"):
        return ExecAddress(("/bin/sh", "-c", c_text(buf[5:])))
    if buf.startswith(b"rdma:"):
        return _parse_inet(RdmaAddress, text, buf[5:])
    if buf.startswith(b"tcp:"):
        return _parse_inet(TcpAddress, text, buf[4:])
    if buf.startswith(b"unix:"):
        if len(buf) == 5:
            _fail(text, "expected unix:PATH: the path is empty")
        return UnixAddress(c_text(buf[5:]))
    if buf.startswith(b"vsock:"):
        return _parse_vsock(text, buf[6:])
    if buf.startswith(b"fd:"):
        if len(buf) == 3:
            _fail(text, "expected fd:NUMBER or fd:NAME: the name is empty")
        return FdAddress(c_text(buf[3:]))
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
