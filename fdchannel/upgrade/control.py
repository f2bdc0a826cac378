"""Asking a running server for an upgrade: through its control socket, or with a
signal and its pidfile.  Blocking (the command line has no event loop).

The control socket speaks JSON lines: the client sends ``upgrade``, the
server answers with one object once the upgrade is over: ``{"ok": true,
"pid": ...}``, or ``{"ok": false, "error": ..., "busy": true?}``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import time
from pathlib import Path
from typing import Any

from ..errors import UpgradeBusy, UpgradeError, UpgradeFailed
from . import pidfile as pidfiles

__all__ = ["request_upgrade"]

#: How often the pidfile's status is read while waiting (a file has nothing to wait on).
_POLL = 0.02


def request_upgrade(
    target: str | os.PathLike[str], *, timeout: float = 60, trigger: int = signal.SIGHUP
) -> dict[str, Any]:
    """Ask for an upgrade and wait for its outcome: the reply, ``{"ok": true, ...}``.

    ``target`` is a control socket, or a pidfile (then ``trigger`` goes to its
    pid and the outcome is read from the status file beside it).  Raises
    UpgradeBusy, UpgradeFailed with the server's reason, or UpgradeError
    when the server cannot be asked or does not answer within ``timeout``.
    """
    path = Path(target)
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise UpgradeError(f"cannot ask {path}: {exc.strerror}") from exc
    reply = (
        _ask_socket(path, timeout)
        if stat.S_ISSOCK(mode)
        else _signal_and_watch(path, timeout, trigger)
    )
    if reply.get("ok") is True:
        return reply
    error = str(reply.get("error") or reply.get("reason") or "no reason given")
    raise (UpgradeBusy if reply.get("busy") or error.startswith("busy") else UpgradeFailed)(error)


def _ask_socket(path: Path, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(os.fspath(path))
            sock.sendall(b"upgrade\n")
            data = b""
            while not data.endswith(b"\n"):
                sock.settimeout(max(0.0, deadline - time.monotonic()))
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            raise UpgradeError(f"{path} did not answer within {timeout} s") from None
        except OSError as exc:
            raise UpgradeError(f"cannot ask {path}: {exc.strerror or exc}") from exc
    try:
        reply = json.loads(data)
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        raise UpgradeError(f"{path} hung up without an answer" if not data else f"{path}: {data!r}")
    return reply


def _signal_and_watch(path: Path, timeout: float, trigger: int) -> dict[str, Any]:
    try:
        pid = pidfiles.read_pid(path)
    except (OSError, ValueError) as exc:
        raise UpgradeError(f"cannot read the pidfile {path}: {exc}") from exc
    before = pidfiles.read_status(path).get("attempt", 0)
    try:
        os.kill(pid, trigger)
    except OSError as exc:
        raise UpgradeError(f"cannot signal pid {pid} (from {path}): {exc.strerror}") from exc
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = pidfiles.read_status(path)
        if status.get("attempt", 0) != before and status.get("from_pid") == pid:
            return status
        if not _alive(pid):
            status = pidfiles.read_status(path)
            if status.get("attempt", 0) != before:
                return status
            raise UpgradeError(f"pid {pid} (from {path}) exited without an upgrade")
        time.sleep(_POLL)
    raise UpgradeError(f"pid {pid} (from {path}) did not finish an upgrade within {timeout} s")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
