"""Asking a running server for an upgrade, or for its status: through its control
socket, or with a signal and its pidfile.  Blocking (the command line has no
event loop).

The control socket speaks JSON lines (``lines.py``; the server's end is
``control_server.py``): the client sends ``upgrade``, the server answers
with one object once the upgrade is over: ``{"ok": true, "pid": ...,
"generation": ..., "seconds": ..., "warnings": [...]}``, or ``{"ok": false,
"error": ..., "busy": true?, "pid": ..., "exit_status": ..., "stderr":
[...]}``: the outcome as the status file beside a pidfile records it, so
that both ways of asking read the same.
With a probation an interim ``{"probation": SECONDS, "pid": ...}`` comes at
the commit, and the wait is that much longer (the status file beside a
pidfile records it the same way, as the request's entry without ``ok``).
Anyone may have bound the path: the answer is believed only from a server
of our own uid or root (SO_PEERCRED), and read up to 64 KiB.

A new release (a command line, a working directory, changes to the
environment) is asked for with an object on the request line (see
``control_server.py``): only a control socket can carry it, never a signal.

A pidfile's process is signalled only once verified to be the one the
pidfile names (``pidfile.open_named``), through a pidfd; the outcome of
this very request is then read from the status file beside the pidfile.

``status`` asks for the serving generation and the service's record of its
upgrades (``history.status_document``): answered by the control socket, or
read from the pidfile and the status file beside it (no signal).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..credentials import peer_credentials, same_user_or_root
from ..errors import UpgradeBusy, UpgradeError, UpgradeFailed
from . import lines, pidfile as pidfiles
from .history import History, status_document, timestamp

__all__ = ["REQUEST", "STATUS", "ask_upgrade", "failure", "request_status", "request_upgrade"]

#: The requests a control socket understands.
REQUEST = "upgrade"
STATUS = "status"
#: What the status file records of a request besides its outcome.
_BOOKKEEPING = ("attempt", "from_pid", "reason", "started", "recent", "service", "drain")
#: The most read of a control socket's answer (one JSON line of a few hundred bytes).
_ANSWER_BYTES = 1 << 16
#: The longest request a server takes (control_server.REQUEST_BYTES).
_REQUEST_BYTES = 1 << 16
#: How often the pidfile's status is read while waiting (a file has nothing to wait on).
_POLL = 0.02


#: Hears the interim word of an upgrade on probation: ``{"probation": SECONDS, "pid": ...}``.
Probation = Callable[[dict[str, Any]], object]


def request_upgrade(
    target: str | os.PathLike[str],
    *,
    timeout: float = 60,
    trigger: int = signal.SIGHUP,
    on_probation: Probation | None = None,
    command: Sequence[str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str | None] | None = None,
) -> dict[str, Any]:
    """Ask for an upgrade and wait for its outcome: the reply, ``{"ok": true, ...}``.

    ``target`` is a control socket, or a pidfile (then ``trigger`` goes to its
    pid and the outcome is read from the status file beside it).  ``timeout``
    bounds the wait, plus the probation once the server says there is one
    (``on_probation`` hears it).  ``command``, ``cwd`` (made absolute here)
    and ``env`` (a value sets a variable, None removes it) ask for a new
    release instead of the server's own: a control socket only.  Raises
    UpgradeBusy, UpgradeFailed with the server's reason (a rollback after the
    switch too), or UpgradeError when the server cannot be asked or does not
    answer in time.
    """
    reply = ask_upgrade(
        target,
        timeout=timeout,
        trigger=trigger,
        on_probation=on_probation,
        command=command,
        cwd=cwd,
        env=env,
    )
    if reply.get("ok") is True:
        return reply
    raise failure(reply)


def ask_upgrade(
    target: str | os.PathLike[str],
    *,
    timeout: float = 60,
    trigger: int = signal.SIGHUP,
    on_probation: Probation | None = None,
    command: Sequence[str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str | None] | None = None,
) -> dict[str, Any]:
    """``request_upgrade``, but a failed upgrade is returned as its outcome too
    (``{"ok": false, "error": ..., ...}``), the same through either target;
    UpgradeError only when the server cannot be asked or does not answer."""
    path = Path(target)
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise UpgradeError(f"cannot ask {path}: {exc.strerror}") from exc
    asked = _release(command, cwd, env)
    if asked and not stat.S_ISSOCK(mode):
        raise UpgradeError(
            f"{path} is no control socket: a new command line, directory or environment "
            "travels only through the server's control socket (Upgrader(control=...)), "
            "a signal carries none"
        )
    request = lines.encode({"request": REQUEST, **asked} if asked else REQUEST)
    if len(request) > _REQUEST_BYTES:
        raise UpgradeError(f"the request is longer than {_REQUEST_BYTES} bytes")
    heard = on_probation or (lambda interim: None)
    if stat.S_ISSOCK(mode):
        return _ask_socket(path, timeout, heard, request)
    return _as_reply(_signal_and_watch(path, timeout, trigger, heard))


def failure(reply: Mapping[str, Any]) -> UpgradeError:
    """The error a failed upgrade's outcome stands for: UpgradeBusy or UpgradeFailed."""
    error = str(reply.get("error") or reply.get("reason") or "no reason given")
    return (UpgradeBusy if reply.get("busy") else UpgradeFailed)(error)


def _as_reply(recorded: dict[str, Any]) -> dict[str, Any]:
    """An outcome as the status file records it, as the control socket answers it."""
    reply = {k: v for k, v in recorded.items() if k not in _BOOKKEEPING}
    if reply.get("ok") is not True and "error" not in reply:
        reply["error"] = recorded.get("reason")
    return reply


def request_status(target: str | os.PathLike[str], *, timeout: float = 10) -> dict[str, Any]:
    """The serving generation and the service's record of its upgrades
    (``history.status_document``): asked of a control socket, or read from a
    pidfile (its process verified as for an upgrade, not signalled) and the
    status file beside it.  UpgradeError when neither can tell."""
    path = Path(target)
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise UpgradeError(f"cannot ask {path}: {exc.strerror}") from exc
    if stat.S_ISSOCK(mode):
        reply = _ask_socket(path, timeout, lambda interim: None, lines.encode(STATUS))
        if reply.get("ok") is not True:
            raise UpgradeError(f"{path}: {reply.get('error') or 'no status'}")
        return reply
    return _read_status(path)


def _read_status(path: Path) -> dict[str, Any]:
    try:
        pid, pidfd = pidfiles.open_named(path)
        os.close(pidfd)
        named = pidfiles.read_pidfile(path)
    except (OSError, ValueError) as exc:
        raise UpgradeError(f"cannot read the pidfile {path}: {exc}") from exc
    status = pidfiles.read_status(path)
    service = status.get("service")
    history = History.from_json(service)
    if history is None or not isinstance(service, dict):
        raise UpgradeError(
            f"{pidfiles.status_path(path)} holds no record of the service's upgrades"
        )
    generation = service.get("generation") if service.get("pid") == pid else None
    start = named.start if named.start is not None else pidfiles.process_start(pid)
    probation: dict[str, Any] | None = None
    for entry in pidfiles.pending_entries(status):
        seconds = _interim(entry)
        if seconds is not None and entry.get("from_pid") == pid:
            probation = {"pid": entry.get("pid"), "seconds": seconds}
    return status_document(
        pid,
        generation if isinstance(generation, int) else None,
        timestamp(pidfiles.start_time(start)),
        history,
        probation,
    )


def _release(
    command: Sequence[str] | None,
    cwd: str | os.PathLike[str] | None,
    env: Mapping[str, str | None] | None,
) -> dict[str, Any]:
    """The request's fields for a new release (none: the server's own)."""
    asked: dict[str, Any] = {}
    if command is not None:
        if isinstance(command, str | bytes) or not command:
            raise UpgradeError("a command is a list of strings: the program and its arguments")
        asked["command"] = list(command)
    if cwd is not None:
        asked["cwd"] = os.path.abspath(cwd)  # not resolved: a "current" symlink stays one
    if env:
        asked["env"] = dict(env)
    return asked


def _ask_socket(path: Path, timeout: float, heard: Probation, request: bytes) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    reader = lines.LineReader(_ANSWER_BYTES)
    line: bytes | None = None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(os.fspath(path))
            _check_server(sock, path)
            sock.sendall(request)
            while line is None:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                line = reader.feed(b"")  # a line that came with the interim one
                if line is None:
                    chunk = sock.recv(reader.room())
                    if not chunk:
                        break
                    line = reader.feed(chunk)
                interim = _interim(lines.decode(line)) if line is not None else None
                if interim is not None:
                    deadline += interim
                    heard(lines.decode(line or b"") or {})
                    line = None
        except lines.LineTooLong:
            raise UpgradeError(
                f"{path} answered a line longer than {_ANSWER_BYTES} bytes: not an upgrader"
            ) from None
        except TimeoutError:
            raise UpgradeError(f"{path} did not answer within {timeout} s") from None
        except OSError as exc:
            raise UpgradeError(f"cannot ask {path}: {exc.strerror or exc}") from exc
    data = reader.pending if line is None else line  # a last line without its newline
    reply = lines.decode(data)
    if reply is None:
        raise UpgradeError(f"{path} hung up without an answer" if not data else f"{path}: {data!r}")
    return reply


def _check_server(sock: socket.socket, path: Path) -> None:
    """Believe only a server of our own uid, or root: anyone may have bound ``path``."""
    server = peer_credentials(sock)
    if not same_user_or_root(server):
        raise UpgradeError(
            f"{path} is served by pid {server.pid} of uid {server.uid}, not by uid "
            f"{os.geteuid()} or root: not asking it"
        )


def _interim(reply: dict[str, Any] | None) -> float | None:
    """The probation an interim word announces; None for any other reply."""
    if reply is None or "ok" in reply:
        return None
    seconds = reply.get("probation")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0:
        return None
    return min(float(seconds), 1e9)


def _signal_and_watch(path: Path, timeout: float, trigger: int, heard: Probation) -> dict[str, Any]:
    try:
        pid, pidfd = pidfiles.open_named(path)
    except (OSError, ValueError) as exc:
        raise UpgradeError(f"cannot read the pidfile {path}: {exc}") from exc
    try:
        return _watch(path, pid, pidfd, timeout, trigger, heard)
    finally:
        os.close(pidfd)


def _watch(
    path: Path, pid: int, pidfd: int, timeout: float, trigger: int, heard: Probation
) -> dict[str, Any]:
    # Requests are numbered as they start: ours is the one after the last started now.
    # (A signal carries no identity: a request that starts between this reading and
    # our signal, or one the kernel merges with ours, shares ours or takes its number.)
    mine = pidfiles.started(pidfiles.read_status(path)) + 1
    try:
        signal.pidfd_send_signal(pidfd, trigger)
    except OSError as exc:
        raise UpgradeError(f"cannot signal pid {pid} (from {path}): {exc.strerror}") from exc
    deadline = time.monotonic() + timeout
    on_probation = False
    while time.monotonic() < deadline:
        status = pidfiles.read_status(path)
        found = pidfiles.outcome(status, mine)
        if found is not None and found.get("from_pid") == pid:
            return found
        pending = pidfiles.pending(status, mine)
        probation = _interim(pending)
        if probation is not None and pending is not None and not on_probation:
            on_probation = True
            deadline += probation
            heard(pending)
        # The pidfd turns readable when the process exits; else look again after _POLL.
        if select.select([pidfd], [], [], _POLL)[0]:
            found = pidfiles.outcome(pidfiles.read_status(path), mine)
            if found is not None:
                return found
            raise UpgradeError(f"pid {pid} (from {path}) exited without an upgrade")
    raise UpgradeError(f"pid {pid} (from {path}) did not finish an upgrade within {timeout} s")
