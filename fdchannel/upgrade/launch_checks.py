"""``fdchannel serve --ready CHECK``: what a check says (parsed here, no I/O) and one attempt of it.

A check is one of::

    tcp:HOST:PORT   tcp:{NAME}       a connection succeeds
    unix:PATH       unix:{NAME}      a connection succeeds
    http://HOST[:PORT]/PATH          a GET answers 2xx (HTTP/1.1, no TLS)
    http://{NAME}/PATH               the same over the socket NAME (TCP or unix)
    cmd:COMMAND                      COMMAND (split as a shell would, run without one) exits 0
    alive:SECONDS                    the server is still running after SECONDS

``{NAME}`` is a socket the launcher knows: one of its ``--listen`` names, or
``ready``, the generation's private socket.  In ``cmd:`` each word may hold
``{NAME}``, replaced by ``HOST:PORT`` or the socket's path.

A check that reaches a socket the generation shares with the one it
replaces proves nothing: both servers accept on it, and the old one may be
the one that answers.  ``shared_with_old`` says when a check does that.
"""

from __future__ import annotations

import ipaddress
import math
import re
import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import anyio

__all__ = [
    "NAME",
    "READY",
    "Check",
    "CheckError",
    "Endpoint",
    "Target",
    "attempt",
    "names_in",
    "parse_check",
    "shared_with_old",
    "substitute",
]

#: The name of the generation's private socket.
READY = "ready"
#: What a socket's name may be: it is a placeholder, ``{NAME}``, and a LISTEN_FDNAMES entry.
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
_PLACEHOLDER = re.compile(r"\{(" + NAME.pattern + r")\}")
#: The most of a response's head read for its status line.
_STATUS_LINE_BYTES = 4096
#: The most of a command's stderr kept for the reason it failed.
_STDERR_KEPT = 300
_FORMS = (
    "tcp:HOST:PORT, tcp:{NAME}, unix:PATH, unix:{NAME}, http://HOST:PORT/PATH, "
    "http://{NAME}/PATH, cmd:COMMAND or alive:SECONDS"
)

Kind = Literal["tcp", "unix", "http", "cmd", "alive"]


class CheckError(ValueError):
    """A check that does not parse; the message shows the forms that do."""


@dataclass(frozen=True)
class Target:
    """Where a check connects: a socket by name, a TCP address, or a unix path."""

    name: str = ""
    host: str = ""
    port: int = 0
    path: str = ""


@dataclass(frozen=True)
class Check:
    """One parsed check; ``text`` is as the user wrote it."""

    kind: Kind
    text: str
    target: Target | None = None
    #: http: the request target (path and query).
    path: str = "/"
    #: http: the Host header for a literal address.
    authority: str = ""
    #: cmd: the words, ``{NAME}`` not replaced yet.
    argv: tuple[str, ...] = field(default=())
    #: alive: how long the server must have run.
    seconds: float = 0.0


@dataclass(frozen=True)
class Endpoint:
    """A socket the launcher knows, as a client reaches it: TCP (host, port) or a unix path."""

    host: str = ""
    port: int = 0
    path: str = ""

    def text(self) -> str:
        """``HOST:PORT`` (an IPv6 host in brackets) or the path."""
        if self.path:
            return self.path
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_check(text: str) -> Check:
    """The check ``text`` names; CheckError if it names none."""
    scheme, colon, rest = text.partition(":")
    if not colon:
        raise CheckError(f"{text!r} is not a check: use {_FORMS}")
    if scheme == "tcp":
        return Check("tcp", text, _tcp_target(text, rest))
    if scheme == "unix":
        if not rest:
            raise CheckError(f"{text!r}: unix: needs a path or {{NAME}}")
        return Check("unix", text, _named(rest) or Target(path=rest))
    if scheme == "http":
        return _http(text, rest)
    if scheme == "https":
        raise CheckError(
            f"{text!r}: https is not checked; check the server's plain HTTP on its "
            "private socket instead (http://{ready}/PATH)"
        )
    if scheme == "cmd":
        return _cmd(text, rest)
    if scheme == "alive":
        return Check("alive", text, seconds=_seconds(text, rest))
    raise CheckError(f"{text!r} is not a check: use {_FORMS}")


def _named(text: str) -> Target | None:
    match = _PLACEHOLDER.fullmatch(text)
    return Target(name=match.group(1)) if match else None


def _tcp_target(text: str, rest: str) -> Target:
    named = _named(rest)
    if named is not None:
        return named
    host, port = _host_port(text, rest, default=None)
    return Target(host=host, port=port)


def _host_port(text: str, authority: str, default: int | None) -> tuple[str, int]:
    if authority.startswith("["):
        host, bracket, after = authority[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise CheckError(f"{text!r}: an IPv6 host goes in brackets: [::1]:8080")
        port_text = after[1:] if after else ""
    else:
        host, _, port_text = authority.rpartition(":") if ":" in authority else (authority, "", "")
    if not host:
        raise CheckError(f"{text!r}: a host is needed, e.g. 127.0.0.1:8080")
    if not port_text:
        if default is None:
            raise CheckError(f"{text!r}: a port is needed, e.g. {host}:8080")
        return host, default
    if not (port_text.isascii() and port_text.isdigit() and 0 < int(port_text) < 65536):
        raise CheckError(f"{text!r}: {port_text!r} is not a port (1-65535)")
    return host, int(port_text)


def _http(text: str, rest: str) -> Check:
    if not rest.startswith("//"):
        raise CheckError(
            f"{text!r}: an HTTP check is http://HOST:PORT/PATH or http://{{NAME}}/PATH"
        )
    authority, slash, path = rest[2:].partition("/")
    path = slash + path if slash else "/"
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise CheckError(f"{text!r}: the path holds a space or a control character")
    if "#" in path:
        path = path.split("#", 1)[0]  # a fragment is never sent
    if "@" in authority:
        raise CheckError(f"{text!r}: no user or password in a check's address")
    named = _named(authority)
    if named is not None:
        return Check("http", text, named, path=path)
    host, port = _host_port(text, authority, default=80)
    return Check("http", text, Target(host=host, port=port), path=path, authority=authority)


def _cmd(text: str, rest: str) -> Check:
    try:
        argv = tuple(shlex.split(rest))
    except ValueError as exc:
        raise CheckError(f"{text!r}: the command does not split into words: {exc}") from None
    if not argv:
        raise CheckError(f"{text!r}: cmd: needs a command")
    return Check("cmd", text, argv=argv)


def _seconds(text: str, rest: str) -> float:
    try:
        value = float(rest)
    except ValueError:
        raise CheckError(f"{text!r}: alive: takes a number of seconds") from None
    if not (value > 0 and math.isfinite(value)):
        raise CheckError(f"{text!r}: alive: takes a positive number of seconds")
    return value


def names_in(check: Check) -> set[str]:
    """The socket names a check refers to, ``{NAME}`` in a command's words included."""
    found = {check.target.name} if check.target is not None and check.target.name else set()
    for word in check.argv:
        found.update(_PLACEHOLDER.findall(word))
    return found


def substitute(word: str, values: Mapping[str, str]) -> str:
    """``word`` with each ``{NAME}`` of a known name replaced; other braces stay."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), word)


def shared_with_old(check: Check, shared: Mapping[str, Endpoint]) -> str | None:
    """The name of the shared socket ``check`` reaches (by name or by address), or None.

    ``shared`` holds the sockets handed from generation to generation.  A
    literal TCP address reaches a socket bound to the same port on the same
    host or on a wildcard address (0.0.0.0, ::).  A command is judged by
    the names in its words only.
    """
    for name in sorted(names_in(check)):
        if name in shared:
            return name
    target = check.target
    if target is None or target.name:
        return None
    for name, endpoint in shared.items():
        if target.path and endpoint.path == target.path:
            return name
        same_host = endpoint.host == target.host or _wildcard(endpoint.host)
        if target.port and endpoint.port == target.port and same_host:
            return name
    return None


def _wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


# ----------------------------------------------------------------------
# One attempt.


async def attempt(check: Check, known: Mapping[str, Endpoint], timeout: float) -> str | None:
    """Try ``check`` once, within ``timeout``: None if it passed, else what it found.

    ``known`` resolves ``{NAME}``.  ``alive:`` is the caller's (it watches the
    server); here it passes.
    """
    try:
        with anyio.fail_after(timeout):
            if check.kind in ("tcp", "unix"):
                stream = await _connect(_endpoint(check, known))
                await stream.aclose()
                return None
            if check.kind == "http":
                return await _http_get(check, known)
            if check.kind == "cmd":
                return await _run(check, known)
            return None
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        return "the connection closed before a status line"
    except Exception as exc:  # a check's failure, whatever it is, is only a "not yet"
        return f"{type(exc).__name__}: {exc}"


def _endpoint(check: Check, known: Mapping[str, Endpoint]) -> Endpoint:
    target = check.target
    assert target is not None
    if target.name:
        return known[target.name]
    return Endpoint(target.host, target.port, target.path)


async def _connect(endpoint: Endpoint) -> anyio.abc.ByteStream:
    if endpoint.path:
        return await anyio.connect_unix(endpoint.path.encode())
    return await anyio.connect_tcp(endpoint.host, endpoint.port)


async def _http_get(check: Check, known: Mapping[str, Endpoint]) -> str | None:
    endpoint = _endpoint(check, known)
    host = check.authority or ("localhost" if endpoint.path else endpoint.text())
    request = (
        f"GET {check.path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: fdchannel-serve\r\n"
        "Accept: */*\r\nConnection: close\r\n\r\n"
    )
    stream = await _connect(endpoint)
    async with stream:
        await stream.send(request.encode("latin-1"))
        head = b""
        while b"\r\n" not in head and len(head) < _STATUS_LINE_BYTES:
            head += await stream.receive(_STATUS_LINE_BYTES - len(head))
    line = head.split(b"\r\n", 1)[0]
    match = re.fullmatch(rb"HTTP/1\.[01] ([0-9]{3})(?: .*)?", line)
    if match is None:
        shown = line[:80].decode("latin-1")
        return f"not an HTTP response: {shown!r}"
    status = int(match.group(1))
    return None if 200 <= status < 300 else f"HTTP {line[9:].decode('latin-1').strip()}"


async def _run(check: Check, known: Mapping[str, Endpoint]) -> str | None:
    values = {name: endpoint.text() for name, endpoint in known.items()}
    argv = [substitute(word, values) for word in check.argv]
    # stdout is not ours to show; stderr says why it failed.  Cancelling kills it.
    result = await anyio.run_process(
        argv, check=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    )
    if result.returncode == 0:
        return None
    said = result.stderr.decode(errors="replace").strip().splitlines()
    last = said[-1][:_STDERR_KEPT] if said else ""
    status = result.returncode
    why = f"exit status {status}" if status >= 0 else f"killed by signal {-status}"
    return f"{why}: {last}" if last else why
