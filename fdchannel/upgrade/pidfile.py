"""The pidfile names the generation serving now; its status file tells how the
last upgrades went (for ``fdchannel upgrade PIDFILE``, which only has a signal
to ask with), and keeps the service's record of its upgrades (``history.py``:
for ``fdchannel upgrade --status PIDFILE``).

The pidfile holds the pid on its first line, as daemons write it and as
systemd's ``PIDFile=`` reads it (the first line only), and the process's
start time on the second, ``start=TICKS`` (field 22 of ``/proc/PID/stat``,
clock ticks after boot): a pid is reused, a pid and its start time name one
process.  The second line is no bare number, so that ``kill $(cat PIDFILE)``
signals no process named by a start time.  A
pidfile of the pid alone (written before the start time was) is believed
for a process that started before the file was written.

The status file is a JSON object: the last outcome recorded (its fields at
the top), ``started`` (the number of the last request), ``recent`` (the
recent outcomes, each client's among them), and ``service``: the service's
record with the pid and generation of the main process.  A fresh service
(a first generation's ``ready()``) starts it over.

Both files are replaced atomically (write a temporary file, rename), so a
reader sees the old content or the new, never half of one; both are written
and read safely in a directory others may write to (``files``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UpgradeError
from . import files

log = logging.getLogger("fdchannel.upgrade")

#: A pid is a C int (pid_t); the kernel's pid_max is far below.
_PID_MAX = (1 << 31) - 1
#: How the pidfile's second line begins.
_START = "start="
#: Outcomes the status file keeps, so that each client finds its own request's.
RECENT = 32
__all__ = [
    "Named",
    "amend",
    "open_named",
    "outcome",
    "pending",
    "pending_entries",
    "process_start",
    "read_pid",
    "read_pidfile",
    "read_status",
    "record",
    "remove_pid",
    "start_attempt",
    "start_time",
    "started",
    "status_path",
    "write_pid",
    "write_service",
    "write_status",
]


def process_start(pid: int) -> int:
    """When ``pid`` started (field 22 of /proc/PID/stat); ProcessLookupError if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        raise ProcessLookupError(f"no process {pid}") from None
    # Field 2, the command name in parentheses, may itself hold spaces and ")":
    # the fields after it begin after the last ")", with field 3.
    return int(text[text.rindex(b")") + 2 :].split()[22 - 3])


@dataclass(frozen=True)
class Named:
    """What a pidfile says: a pid, its start time (None in a pid-only pidfile), and
    when the file was written (``time.time()`` seconds)."""

    pid: int
    start: int | None
    written: float


def write_pid(path: str | os.PathLike[str], pid: int, start: int) -> None:
    """Name the process ``pid`` that started at ``start`` (see ``process_start``)."""
    files.replace(Path(path), f"{pid}\n{_START}{start}\n")


def read_pidfile(path: str | os.PathLike[str]) -> Named:
    """What the pidfile says; ValueError if it holds no positive pid."""
    text, found = files.read_stat(Path(path))
    pid, _, rest = text.strip().partition("\n")
    start = rest.strip().removeprefix(_START) if rest.strip().startswith(_START) else None
    if (
        not _number(pid)
        or not 0 < int(pid) <= _PID_MAX
        or (rest.strip() and not _number(start or ""))
    ):
        raise ValueError(f"{os.fspath(path)} does not hold a process id: {text[:40]!r}")
    return Named(int(pid), int(start) if start else None, found.st_mtime)


def read_pid(path: str | os.PathLike[str]) -> int:
    """The pid in a pidfile; ValueError if it holds no positive number."""
    return read_pidfile(path).pid


def open_named(path: str | os.PathLike[str]) -> tuple[int, int]:
    """The pid the pidfile names and a pidfd of it, once that process is verified to
    be the one the pidfile was written for; UpgradeError "stale pidfile" otherwise.

    The pidfd is opened first and the start time read after: if the pid was
    reused in between, the start time is the newcomer's and does not match;
    if it matches, the pidfd holds the named process (a pid has one holder
    at a time), and signals sent through it reach that process or none.
    """
    named = read_pidfile(path)
    try:
        pidfd = os.pidfd_open(named.pid)
    except ProcessLookupError:
        raise UpgradeError(f"stale pidfile {path}: pid {named.pid} is not running") from None
    try:
        start = process_start(named.pid)
        if named.start is not None:
            stale = start != named.start
        else:  # started after the pidfile was written: not the process it names
            stale = start_time(start) > named.written
        if stale:
            raise UpgradeError(f"stale pidfile {path}: pid {named.pid} is another process now")
    except ProcessLookupError:
        os.close(pidfd)
        raise UpgradeError(f"stale pidfile {path}: pid {named.pid} is not running") from None
    except BaseException:
        os.close(pidfd)
        raise
    return named.pid, pidfd


def remove_pid(path: str | os.PathLike[str], pid: int, start: int) -> bool:
    """Remove the pidfile if it still names ``pid`` started at ``start``; whether it did."""
    try:
        named = read_pidfile(path)
    except (OSError, ValueError, UpgradeError):
        return False
    if (named.pid, named.start) != (pid, start):
        return False
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:  # exiting: a pidfile left is told, not raised
        log.warning("cannot remove the pidfile %s: %s", os.fspath(path), exc.strerror)
        return False
    return True


def _number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def start_time(start: int) -> float:
    """A start time (clock ticks after boot, see ``process_start``) as ``time.time()``
    seconds."""
    booted = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    return booted + start / os.sysconf("SC_CLK_TCK")


def status_path(pidfile: str | os.PathLike[str]) -> Path:
    """Where the status of the last upgrade lives: beside the pidfile."""
    path = Path(pidfile)
    return path.with_name(path.name + ".upgrade")


def write_status(pidfile: str | os.PathLike[str], status: dict[str, Any]) -> None:
    """Replace the status file with ``status``."""
    files.replace(status_path(pidfile), json.dumps(status) + "\n")


def read_status(pidfile: str | os.PathLike[str]) -> dict[str, Any]:
    """The status: the last recorded outcome, ``started`` (the number of the last
    request) and ``recent`` outcomes; ``{"attempt": 0}`` when there is none yet."""
    try:
        status: dict[str, Any] = json.loads(files.read(status_path(pidfile)))
    except (FileNotFoundError, ValueError):
        return {"attempt": 0}
    return status if isinstance(status, dict) else {"attempt": 0}


def start_attempt(pidfile: str | os.PathLike[str]) -> int:
    """Number a new request, one more than any before it, and record that it started.

    A client that reads ``started`` and then asks knows its request's number:
    the next one.
    """
    status = read_status(pidfile)
    attempt = started(status) + 1
    write_status(pidfile, {**status, "started": attempt})
    return attempt


def record(
    pidfile: str | os.PathLike[str],
    outcome: dict[str, Any],
    service: dict[str, Any] | None = None,
) -> None:
    """Record the outcome of request ``outcome["attempt"]``: as the last outcome, and
    among the recent ones, where a later request's outcome does not replace it;
    with ``service``, the service's record as it is now (else the one there stays)."""
    status = read_status(pidfile)
    recent = [o for o in _recent(status) if o.get("attempt") != outcome["attempt"]]
    recent = sorted([*recent, outcome], key=lambda o: int(o["attempt"]))
    while len(recent) > RECENT:  # refusals go first: a client may still wait for an upgrade
        recent.remove(next((o for o in recent if o.get("busy")), recent[0]))
    attempt = max(started(status), int(outcome["attempt"]))
    kept = {"service": service if service is not None else status.get("service")}
    write_status(pidfile, {**outcome, "started": attempt, "recent": recent, **kept})


def write_service(
    pidfile: str | os.PathLike[str], service: dict[str, Any], fresh: bool = False
) -> None:
    """Rewrite the service's record; ``fresh``: a new service, whose status file starts
    over (no outcome, requests numbered from 1 again)."""
    status = {"attempt": 0, "started": 0} if fresh else read_status(pidfile)
    write_status(pidfile, {**status, "service": service})


def amend(pidfile: str | os.PathLike[str], attempt: int, fields: dict[str, Any]) -> None:
    """Add ``fields`` to the recorded outcome of request ``attempt`` (what happened after
    it was answered, such as the drain that followed); the last outcome stays the last."""
    status = read_status(pidfile)
    recent = [{**o, **fields} if o.get("attempt") == attempt else o for o in _recent(status)]
    last = {**status, **fields} if status.get("attempt") == attempt else status
    write_status(pidfile, {**last, "recent": recent})


def started(status: dict[str, Any]) -> int:
    """The number of the last request started (a status file of old: its last outcome's)."""
    number = status.get("started", status.get("attempt", 0))
    return number if isinstance(number, int) else 0


def outcome(status: dict[str, Any], attempt: int) -> dict[str, Any] | None:
    """The recorded outcome of request ``attempt``, if there is one yet."""
    for found in [*_recent(status), status]:
        if found.get("attempt") == attempt and "ok" in found:
            return found
    return None


def pending(status: dict[str, Any], attempt: int) -> dict[str, Any] | None:
    """What is recorded of request ``attempt`` while it is not over (on probation)."""
    for found in [*_recent(status), status]:
        if found.get("attempt") == attempt and "ok" not in found:
            return found
    return None


def pending_entries(status: dict[str, Any]) -> list[dict[str, Any]]:
    """What is recorded of the requests not over yet (on probation), oldest first."""
    return [found for found in _recent(status) if "ok" not in found]


def _recent(status: dict[str, Any]) -> list[dict[str, Any]]:
    recent = status.get("recent")
    if not isinstance(recent, list):
        return []
    return [o for o in recent if isinstance(o, dict) and isinstance(o.get("attempt"), int)]
