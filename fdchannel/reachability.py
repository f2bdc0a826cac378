"""Can an address be used right now?  One check per transport, without side effects.

``check`` runs the test of the address's transport (``CHECKS``, by the
transport's name in fdchannel.registry, which knows nothing of these
tests); nothing here loads the event loop, so ``fdchannel probe`` starts
quickly.

unix: the socket file exists, and someone listens on it (asked of the
kernel, by the file's inode or the abstract name, never by connecting, so
a one-shot listener is not disturbed).  tcp and vsock: a connect, closed at
once.  file: readable (size, offset) and writable or creatable.  exec: the
command resolves.  fd: the descriptor is open, and what it is.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import procfs as _proc
from .address import (
    SUN_PATH_MAX,
    Address,
    ExecAddress,
    FdAddress,
    FileAddress,
    TcpAddress,
    UnixAddress,
    VsockAddress,
    family_for,
)
from .capabilities import Capability
from .descriptors import describe, sockaddr_text, summary
from .fd_names import inherited_fds
from .qemu.cstring import bounded_int
from .registry import transport_for
from .sockdiag import bound_to_file, bound_to_name
from .text import format_size

_ASCII_DIGITS = "0123456789"
_INT_MAX = (1 << 31) - 1

__all__ = ["CHECKS", "Reach", "capabilities", "check"]

#: Words /bin/sh runs itself, so no PATH search is needed for them.
_SH_BUILTINS = frozenset(
    [
        "!",
        ".",
        ":",
        "[",
        "alias",
        "break",
        "cd",
        "command",
        "continue",
        "echo",
        "eval",
        "exec",
        "exit",
        "export",
        "false",
        "getopts",
        "hash",
        "printf",
        "pwd",
        "read",
        "readonly",
        "return",
        "set",
        "shift",
        "test",
        "times",
        "trap",
        "true",
        "type",
        "ulimit",
        "umask",
        "unalias",
        "unset",
        "wait",
        "{",
        "(",
        "if",
        "for",
        "while",
        "until",
        "case",
    ]
)


@dataclass
class Reach:
    """The verdict on one address: usable or not, why, and what was seen."""

    ok: bool
    detail: str
    facts: dict[str, Any] = field(default_factory=dict)
    #: The listener is ``fdchannel probe --listen``: a self-test is safe.
    probe_listener: bool = False


def check(addr: Address, timeout: float) -> Reach:
    """Whether ``addr`` can be used now, checked without side effects (no connect
    that a one-shot listener would take for its peer), by its transport's test."""
    name = transport_for(addr).name
    test = CHECKS.get(name)
    if test is None:
        return Reach(False, f"{name} is parsed but not supported by fdchannel")
    return test(addr, timeout)


def capabilities(addr: Address, reach: Reach | None) -> list[str]:
    """What a stream on ``addr`` can do, as its transport says for what was found."""
    caps = transport_for(addr).capabilities_for(reach.facts if reach is not None else {})
    return [flag.name for flag in Capability if flag in caps and flag.name]


def _is_probe_listener(argv: list[str]) -> bool:
    """``fdchannel probe --listen`` (console script or ``python -m fdchannel``)."""
    launcher = any(os.path.basename(arg) == "fdchannel" for arg in argv[:3])
    return launcher and "probe" in argv and "--listen" in argv


def _unix(addr: UnixAddress, timeout: float) -> Reach:
    raw = os.fsencode(addr.path)
    # A path needs its NUL, an abstract name its leading NUL: 107 usable bytes either way.
    if len(raw) > SUN_PATH_MAX - 1:
        return Reach(
            False,
            f"the path is {len(raw)} bytes; sun_path holds at most {SUN_PATH_MAX - 1}",
        )
    name = "@" + addr.path if addr.abstract else addr.path
    facts: dict[str, Any] = {"name": name}
    if not addr.abstract:
        try:
            st = os.stat(raw)
        except FileNotFoundError:
            return Reach(False, f"{addr.path} does not exist", facts)
        except OSError as exc:
            return Reach(False, f"cannot look at {addr.path}: {exc.strerror}", facts)
        if not stat.S_ISSOCK(st.st_mode):
            return Reach(False, f"{addr.path} exists but is not a socket", facts)
        facts["mode"] = oct(stat.S_IMODE(st.st_mode))
        facts["owner_uid"] = st.st_uid
        if not os.access(raw, os.W_OK):
            return Reach(False, f"no write permission on {addr.path}: connect needs it", facts)
    # Asked of the kernel, never by connecting: a one-shot listener (an
    # Incoming, recv, probe --listen, QEMU's cpr listener) would take a
    # probe's connection for its real peer.
    found = bound_to_name(os.fsencode(name)) if addr.abstract else bound_to_file(raw, st)
    if found is None:
        return Reach(
            False,
            f"cannot tell whether anyone listens on {name}: the kernel's "
            "socket tables are not readable here (a connect to find out could "
            "disturb a one-shot listener)",
            facts,
        )
    if found.listening:
        return _listeners(list(found.listening), facts)
    if found.other:
        return Reach(False, f"a socket is bound to {name} but does not listen for streams", facts)
    if addr.abstract:
        return Reach(False, f"nobody listens on the abstract name {name}", facts)
    return Reach(False, f"nobody listens on {addr.path} (a stale socket file)", facts)


def _listeners(inodes: list[int], facts: dict[str, Any]) -> Reach:
    owners = _proc.socket_owners(inodes)
    listeners = []
    seen = []
    probe = False
    for pid in owners:
        argv, why = _proc.command_line(pid)
        listeners.append({"pid": pid, "argv": argv, "argv_error": why})
        seen.append(f"pid {pid}: " + (shlex.join(argv) if argv is not None else f"({why})"))
        probe = probe or (argv is not None and _is_probe_listener(argv))
    facts["listeners"] = listeners
    if not listeners:
        return Reach(True, "someone listens (process not visible to us)", facts)
    who = "; ".join(seen)
    return Reach(True, f"someone listens ({who})", facts, probe_listener=probe)


# --------------------------------------------------------------------------
# tcp, vsock


def _tcp(addr: TcpAddress, timeout: float) -> Reach:
    if addr.ipv4 is False and addr.ipv6 is False:
        return Reach(False, "ipv4=off and ipv6=off leave no address family to use")
    if addr.port == "0":
        return Reach(False, "port 0 names no listener (only a listener may ask for any port)")
    try:
        infos = socket.getaddrinfo(
            addr.host or None, addr.port, family_for(addr), socket.SOCK_STREAM
        )
    except socket.gaierror as exc:
        return Reach(False, f"cannot resolve {addr.host or 'localhost'}: {exc.strerror}")
    errors = []
    for family, kind, proto, _, sockaddr in infos:
        where = sockaddr_text(family, sockaddr) or "?"
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect(sockaddr)
            except OSError as exc:
                errors.append(f"{where}: {exc.strerror or 'timed out'}")
                continue
        return Reach(True, f"connected to {where}", {"connected": where})
    return Reach(False, "; ".join(errors) or "no address to connect to", {"errors": errors})


def _vsock(addr: VsockAddress, timeout: float) -> Reach:
    if not (addr.cid.isdigit() and addr.port.isdigit()):
        return Reach(False, f"cid {addr.cid!r} and port {addr.port!r} must be numbers")
    family = getattr(socket, "AF_VSOCK", None)
    try:
        if family is None:
            raise OSError("AF_VSOCK is not in this Python")
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        return Reach(False, f"vsock is not available on this host: {exc.strerror or exc}")
    with sock:
        sock.settimeout(timeout)
        try:
            sock.connect((int(addr.cid), int(addr.port)))
        except OSError as exc:
            return Reach(False, f"cannot connect: {exc.strerror or 'timed out'}")
    return Reach(True, f"connected to cid {addr.cid} port {addr.port}")


# --------------------------------------------------------------------------
# file, exec, fd


def _file(addr: FileAddress) -> Reach:
    path = addr.path
    try:
        st = os.stat(path)
    except FileNotFoundError:
        parent = os.path.dirname(os.path.abspath(path))
        if os.access(parent, os.W_OK | os.X_OK):
            return Reach(
                True,
                f"does not exist yet; the outgoing side can create it in {parent}",
                {"exists": False, "creatable": True},
            )
        return Reach(
            False,
            f"{path} does not exist and {parent} is not writable",
            {"exists": False, "creatable": False},
        )
    except OSError as exc:
        return Reach(False, f"cannot look at {path}: {exc.strerror}")
    if stat.S_ISDIR(st.st_mode):
        return Reach(False, f"{path} is a directory")
    kind = "fifo" if stat.S_ISFIFO(st.st_mode) else "file"
    readable = os.access(path, os.R_OK)
    writable = os.access(path, os.W_OK)
    facts: dict[str, Any] = {
        "exists": True,
        "type": kind,
        "size": st.st_size,
        "readable": readable,
        "writable": writable,
    }
    parts = [f"readable: {'yes' if readable else 'no'}", f"writable: {'yes' if writable else 'no'}"]
    if kind == "file":
        parts.insert(0, f"size {format_size(st.st_size)}")
        if addr.offset > st.st_size:
            parts.append(f"offset {addr.offset} is past the end: the incoming side reads nothing")
    else:
        parts.insert(0, "a FIFO (the other end must be open)")
    return Reach(readable or writable, ", ".join(parts), facts)


def _command_word(command: str) -> str | None:
    """The program a shell command line runs first (after VAR=value assignments)."""
    for word in shlex.split(command):
        if "=" in word and not word.startswith("=") and word.split("=")[0].isidentifier():
            continue
        return word
    return None


def _exec(addr: ExecAddress) -> Reach:
    if not addr.args:
        return Reach(False, "no command to run")
    program = addr.args[0]
    # Run without a PATH search: a name without a slash is relative to the working directory.
    if not os.access(program, os.X_OK) or os.path.isdir(program):
        return Reach(False, f"{program} is not an executable file (no PATH search for argv[0])")
    facts: dict[str, Any] = {"program": program}
    if addr.args[:2] != (program, "-c") or len(addr.args) != 3:
        return Reach(True, f"{program} is executable", facts)
    try:
        word = _command_word(addr.args[2])
    except ValueError as exc:
        return Reach(False, f"the shell cannot split {addr.args[2]!r}: {exc}", facts)
    if word is None:
        return Reach(False, "the shell command is empty", facts)
    if word in _SH_BUILTINS:
        facts["command"] = word
        return Reach(True, f"{program} runs {word!r}, a shell builtin", facts)
    # A word with a slash is checked as it is, a bare one searched in PATH.
    resolved = shutil.which(word)
    if resolved is None:
        return Reach(False, f"{word!r} is not found (PATH={os.environ.get('PATH', '')})", facts)
    facts["command"] = resolved
    return Reach(True, f"{program} runs {word!r} = {resolved}", facts)


def _fd(addr: FdAddress) -> Reach:
    name = addr.name
    if name[:1] in _ASCII_DIGITS:  # as QEMU: only an ASCII digit makes a number
        if name.strip(_ASCII_DIGITS):
            return Reach(False, f"fd:{name}: a name starting with a digit must be all digits")
        fd = bounded_int(name, 10, _INT_MAX + 1)
        if fd > _INT_MAX:
            return Reach(False, f"fd:{name[:24]}: larger than any descriptor number")
    else:
        inherited = inherited_fds()
        if name not in inherited:
            known = ", ".join(sorted(inherited)) or "none"
            return Reach(
                False, f"no inherited descriptor is named {name!r} (LISTEN_FDNAMES: {known})"
            )
        fd = inherited[name]
    found = describe(fd)
    facts = {"descriptor": found}
    if found["kind"] == "closed":
        return Reach(False, f"descriptor {fd} is not open", facts)
    return Reach(True, f"descriptor {fd}: {summary(found)}", facts)


#: The reachability test of each transport, by its name in ``fdchannel.registry``.
CHECKS: dict[str, Callable[[Any, float], Reach]] = {
    "unix": _unix,
    "tcp": _tcp,
    "vsock": _vsock,
    "file": lambda addr, _timeout: _file(addr),
    "exec": lambda addr, _timeout: _exec(addr),
    "fd": lambda addr, _timeout: _fd(addr),
}
