"""``NAME[:ID]=SOURCE`` items of ``fdchannel send``: where each descriptor comes from.

SOURCE is one of:

* a descriptor number this process inherited (``http=3``, as
  ``systemd-socket-activate`` or a shell redirection ``3<file`` gives it);
* ``fd:NAME``: an inherited descriptor by its ``LISTEN_FDNAMES`` name, or
  ``fd:N`` by number;
* ``tcp:HOST:PORT`` or ``unix:PATH``: a new listening socket made here
  (port 0 lets the kernel choose; the socket file of ``unix:`` is left in
  place for the receiver's server);
* anything else is a file path, opened read-write if allowed, else
  read-only (``./tcp:x`` names a file whose name looks like a URI).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import socket
import stat
from dataclasses import dataclass

from ..address import FdAddress, TcpAddress, UnixAddress, parse_address
from ..descriptors import sockaddr_text
from ..fd_names import inherited_fds
from ..qemu.cstring import bounded_int, shown
from ._output import CliError, UsageError

__all__ = ["Source", "close_sources", "open_sources", "parse_item"]

_ITEM = re.compile(r"(?P<name>[^=:]+)(?::(?P<id>-?[0-9]+))?=(?P<source>.+)", re.DOTALL)
_URI_PREFIXES = ("tcp:", "unix:", "fd:")
_INT32 = 1 << 31
#: Why opening for writing fails where opening for reading may still work.
_READ_ONLY_WILL_DO = frozenset(
    {errno.EACCES, errno.EPERM, errno.EISDIR, errno.EROFS, errno.ETXTBSY}
)


@dataclass
class Source:
    """One descriptor to send, and whether it was opened here (then it is closed after)."""

    name: str
    id: int
    spec: str
    fd: int
    owned: bool
    origin: str


def parse_item(text: str) -> tuple[str, int | None, str]:
    """``NAME[:ID]=SOURCE`` as (name, id or None, source); UsageError if malformed."""
    match = _ITEM.fullmatch(text)
    if match is None:
        raise UsageError(
            f"{text!r} is not NAME=SOURCE or NAME:ID=SOURCE (a name holds no ':' or '=', "
            "an id is a number)"
        )
    name, ident, source = match["name"], match["id"], match["source"]
    if "\0" in name or "\0" in source:
        raise UsageError(f"{text!r} contains a NUL character")
    number = None if ident is None else _bounded_signed(ident)
    if number is not None and not -_INT32 <= number < _INT32:
        raise UsageError(f"{shown(text, 60)}: the id must fit a signed 32-bit integer")
    return name, number, source


def _inherited(spec: str) -> tuple[int, str]:
    address = parse_address(spec)
    assert isinstance(address, FdAddress)
    if _is_number(address.name):
        return _descriptor_number(address.name, spec), f"inherited descriptor {address.name}"
    found = inherited_fds()
    if address.name not in found:
        known = ", ".join(sorted(found)) or "none"
        raise CliError(f"no inherited descriptor is named {address.name!r} (known: {known})")
    return found[address.name], f"inherited descriptor {found[address.name]} ({address.name})"


def _is_number(text: str) -> bool:
    """ASCII digits only: str.isdigit() admits other scripts' digits."""
    return text.isascii() and text.isdigit()


def _bounded_signed(text: str) -> int:
    """An optionally signed decimal, never converted past what an int64 holds."""
    magnitude = bounded_int(text.lstrip("+-"), 10, 1 << 63)
    return -magnitude if text.startswith("-") else magnitude


def _descriptor_number(text: str, spec: str) -> int:
    number = bounded_int(text, 10, _INT32)
    if number >= _INT32:
        raise CliError(f"{shown(spec, 40)}: no descriptor number is that large")
    return number


def _check_open(fd: int, spec: str) -> None:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError as exc:
        if exc.errno == errno.EBADF:
            raise CliError(f"descriptor {fd} ({spec}) is not open in this process") from None
        raise


def _tcp_listener(address: TcpAddress) -> socket.socket:
    if not _is_number(address.port) or bounded_int(address.port) > 65535:
        raise UsageError(f"{address}: the port must be a number from 0 to 65535")
    family = socket.AF_UNSPEC
    if address.ipv4 is False or (address.ipv6 and not address.ipv4):
        family = socket.AF_INET6
    elif address.ipv6 is False or address.ipv4:
        family = socket.AF_INET
    infos = socket.getaddrinfo(
        address.host or None, address.port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
    )
    errors = []
    for fam, kind, proto, _, sockaddr in infos:
        sock = socket.socket(fam, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if fam == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(address.ipv4 is False))
            sock.bind(sockaddr)
            sock.listen(socket.SOMAXCONN)
        except OSError as exc:
            sock.close()
            errors.append(f"{sockaddr_text(fam, sockaddr)}: {exc.strerror}")
            continue
        return sock
    raise CliError(f"cannot listen on {address}: {'; '.join(errors)}")


def _unix_listener(address: UnixAddress) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(address.path)
        sock.listen(socket.SOMAXCONN)
    except OSError as exc:
        sock.close()
        raise CliError(f"cannot listen on {address}: {exc.strerror}") from exc
    return sock


def _listener(spec: str) -> tuple[int, str]:
    address = parse_address(spec)
    if isinstance(address, TcpAddress):
        sock = _tcp_listener(address)
    elif isinstance(address, UnixAddress):
        sock = _unix_listener(address)
    else:  # pragma: no cover (only tcp: and unix: reach here)
        raise UsageError(f"{spec}: only tcp: and unix: make a new listening socket")
    # The receiver gets the same open file description: hand it over blocking,
    # as socket activation does, whatever our own use of it would want.
    sock.setblocking(True)
    return sock.detach(), f"new listening socket {address}"


def _open_file(path: str) -> tuple[int, str]:
    # O_NONBLOCK so that opening a FIFO does not wait for its other end; it is
    # cleared again below for everything else.
    flags = os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
    access = "read-write"
    try:
        try:
            fd = os.open(path, os.O_RDWR | flags)
        except OSError as exc:
            if exc.errno not in _READ_ONLY_WILL_DO:
                raise
            fd = os.open(path, os.O_RDONLY | flags)
            access = "read-only"
    except OSError as exc:
        raise CliError(f"cannot open {path}: {exc.strerror}") from exc
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.set_blocking(fd, True)
    return fd, f"file {path} ({access})"


def _open_one(spec: str) -> tuple[int, bool, str]:
    if _is_number(spec):
        fd = _descriptor_number(spec, spec)
        _check_open(fd, spec)
        return fd, False, f"inherited descriptor {fd}"
    if spec.startswith("fd:"):
        fd, origin = _inherited(spec)
        _check_open(fd, spec)
        return fd, False, origin
    if spec.startswith(_URI_PREFIXES):
        fd, origin = _listener(spec)
        return fd, True, origin
    fd, origin = _open_file(spec)
    return fd, True, origin


def open_sources(items: list[str]) -> list[Source]:
    """Open every item's source; on failure whatever was opened is closed again."""
    parsed = [parse_item(item) for item in items]
    sources: list[Source] = []
    next_id: dict[str, int] = {}
    seen: set[tuple[str, int]] = set()
    try:
        for name, ident, spec in parsed:
            number = next_id.get(name, 0) if ident is None else ident
            if (name, number) in seen:
                raise UsageError(f"{name}:{number} is given twice")
            seen.add((name, number))
            next_id[name] = number + 1
            fd, owned, origin = _open_one(spec)
            sources.append(Source(name, number, spec, fd, owned, origin))
    except BaseException:
        close_sources(sources)
        raise
    return sources


def close_sources(sources: list[Source]) -> None:
    """Close the descriptors opened here; inherited ones stay open."""
    for source in sources:
        if source.owned and source.fd >= 0:
            os.close(source.fd)
            source.fd = -1
