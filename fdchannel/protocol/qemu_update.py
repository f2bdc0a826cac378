"""Live update of a running QEMU by cpr-transfer, as a driver both layers run.

The old QEMU is found by its QMP socket; the new one is started from the
caller's command line with what fdchannel appends: its two incoming
channels (abstract unix names, so that no path has to be shared with a
QEMU in a chroot) and a monitor of fdchannel's own on an inherited
socket.  The sequence, and who does what:

1. the old QEMU's monitor: its version, that the guest runs, that its RAM
   can be shared; ``mode=cpr-transfer``, migration events on;
2. the new QEMU starts and listens on its cpr channel (seen in
   /proc/net/unix: connecting to look would take QEMU's one peer);
3. ``migrate`` on the old QEMU: it sends its cpr state (descriptors of
   guest RAM, never the RAM itself) while the guest runs;
4. the new QEMU reads it, listens on main and closes cpr (the
   acknowledgement); its monitor greets us;
5. the old QEMU sends the migration stream; the guest pauses (STOP on the
   old QEMU) until the new one runs it (RESUME): the downtime, from
   QEMU's own event timestamps;
6. the old QEMU is told to quit, and we wait for it to exit.

Whatever fails, the guest keeps running somewhere (``_rollback``): a new
QEMU that did not take over is killed, the old one's migration cancelled
and its guest continued if it stopped.  Nothing here waits: each wait is a
request of ``actions``, bounded by what is left of the timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from ..deadlines import now
from ..errors import FdChannelError, QemuError
from ..sockdiag import bound_to_name
from .actions import Adopt, Close, Driver, WaitReadable
from .monitor import Monitor, connect_monitor

__all__ = ["MODES", "QemuUpdate", "UpdateReport", "checking", "updating"]

MODES = ("cpr-transfer", "cpr-exec")
#: New QEMUs that took over: they outlive their update, and stay referenced here so
#: that their Popen objects are not dropped while they run (Popen.__del__ warns
#: "subprocess N is still running"); each update reaps those that exited since.
_HANDED_OVER: list[subprocess.Popen[bytes]] = []
#: The first QEMU of each mode.
_SINCE = {"cpr-transfer": (10, 0, 0), "cpr-exec": (10, 2, 0)}
#: How often the new QEMU's cpr listener is looked for while it starts.
_LOOK_EVERY = 0.002
#: How long a rollback step, or the old QEMU's exit, may take.
_GRACE = 10.0
#: How long the new QEMU may take to say whether it runs the guest, before a rollback.
_ASK = 2.0
#: Lines of the new QEMU's log that go into the reason when it fails.
_LOG_LINES = 5
#: Migration states in which the old QEMU is still migrating (qapi/migration.json).
_MIGRATING = frozenset(
    {"setup", "active", "pre-switchover", "device", "wait-unplug", "cancelling", "postcopy-active"}
)


@dataclass
class UpdateReport:
    """What an update (or ``check``) did: ``result`` is "updated", "rolled-back" or
    "failed" ("ready" or "not-ready" for a check)."""

    result: str
    mode: str
    old_pid: int | None = None
    new_pid: int | None = None
    #: The guest's pause: the old QEMU's STOP to the new QEMU's RESUME, by QEMU's clocks.
    downtime_ms: float | None = None
    total_ms: float = 0.0
    #: Why it did not update (None when it did).
    reason: str | None = None
    #: Each step's name and how long it took, in order.
    steps: list[tuple[str, float]] = field(default_factory=list)
    old_version: str | None = None
    new_version: str | None = None
    #: Where the new QEMU's output went.
    log: str | None = None
    #: A check's findings: what stands in the way, in words an operator can act on.
    problems: list[str] = field(default_factory=list)
    #: What went wrong after the new QEMU took over (the update stands).
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.result in ("updated", "ready")

    def as_json(self) -> dict[str, Any]:
        """The report as ``--json`` prints it."""
        return {
            "result": self.result,
            "mode": self.mode,
            "old_pid": self.old_pid,
            "new_pid": self.new_pid,
            "downtime_ms": _rounded(self.downtime_ms),
            "total_ms": _rounded(self.total_ms),
            "reason": self.reason,
            "steps": [{"name": name, "ms": _rounded(ms)} for name, ms in self.steps],
            "old_version": self.old_version,
            "new_version": self.new_version,
            "log": self.log,
            "problems": self.problems,
            "warnings": self.warnings,
        }


def _rounded(ms: float | None) -> float | None:
    return None if ms is None else round(ms, 3)


def _version(version: tuple[int, int, int]) -> str:
    return ".".join(map(str, version))


class _Failed(FdChannelError):
    """The update stops here: ``reason`` says why."""


class _Clock:
    """The update's deadline, and each step's time."""

    def __init__(self, timeout: float) -> None:
        self.started = self._mark = now()
        self.timeout = timeout
        self.steps: list[tuple[str, float]] = []

    def left(self) -> float:
        return max(0.0, self.timeout - (now() - self.started))

    def done(self, name: str) -> None:
        at = now()
        self.steps.append((name, (at - self._mark) * 1000))
        self._mark = at

    def total_ms(self) -> float:
        return (now() - self.started) * 1000


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: fdchannel updates by {' or '.join(MODES)}")
    return mode


def updating(
    qmp: str,
    command: Sequence[str],
    *,
    mode: str = "cpr-transfer",
    timeout: float = 60.0,
    log: str | None = None,
) -> Driver[UpdateReport]:
    """Replace the QEMU behind the QMP socket ``qmp`` with the one ``command``
    starts: the report.  The arguments are checked now (ValueError)."""
    return QemuUpdate(qmp, command, mode=mode, timeout=timeout, log=log).run()


def checking(
    qmp: str, *, mode: str = "cpr-transfer", timeout: float = 10.0
) -> Driver[UpdateReport]:
    """Whether the QEMU behind ``qmp`` can be updated in ``mode``, changing nothing."""
    _check_mode(mode)
    return _check(qmp, mode, _Clock(timeout))


def _check(qmp: str, mode: str, clock: _Clock) -> Driver[UpdateReport]:
    report = UpdateReport("not-ready", mode)
    monitor: Monitor | None = None
    try:
        monitor = yield from connect_monitor(qmp, "the QEMU", clock.left())
        report.old_pid = monitor.pid
        report.old_version = _version(monitor.session.version)
        clock.done("connect")
        report.problems = yield from _problems(monitor, mode, clock, change=False)
        clock.done("check")
        report.result = "not-ready" if report.problems else "ready"
    except FdChannelError as exc:
        report.problems.append(str(exc))
    finally:
        if monitor is not None:
            yield Close(monitor.stream)
    report.reason = "; ".join(report.problems) or None
    report.steps, report.total_ms = clock.steps, clock.total_ms()
    return report


def _problems(monitor: Monitor, mode: str, clock: _Clock, *, change: bool) -> Driver[list[str]]:
    """What stands in the way of updating ``monitor``'s QEMU in ``mode``.

    QEMU reports migration blockers for the mode set (``query-migrate``), so a
    check sets the mode, asks, and sets it back; an update (``change``) keeps it.
    """
    problems: list[str] = []
    version = monitor.session.version
    since = _SINCE[mode]
    if version < since:
        problems.append(
            f"QEMU {_version(version)} has no {mode} (QEMU {since[0]}.{since[1]} and later)"
        )
        return problems
    status = yield from monitor.execute("query-status", timeout=clock.left())
    if status.get("status") != "running":
        problems.append(f"the guest is not running (QEMU's run state: {status.get('status')})")
    memdevs = yield from monitor.execute("query-memdev", timeout=clock.left())
    private = [str(m.get("id", "?")) for m in memdevs if not m.get("share")]
    if not memdevs:
        problems.append(
            "guest RAM is not a shareable memory backend: start QEMU with "
            "-object memory-backend-memfd,id=ram0,size=SIZE,share=on "
            "-machine memory-backend=ram0"
        )
    elif private:
        problems.append(
            f"guest memory backend(s) {', '.join(private)} not shared: give them share=on"
        )
    with contextlib.suppress(FdChannelError):
        aux = yield from monitor.execute(
            "qom-get", {"path": "/machine", "property": "aux-ram-share"}, timeout=clock.left()
        )
        if aux is False:
            problems.append(
                "ROMs and other auxiliary RAM are not shareable: start QEMU with "
                "-machine aux-ram-share=on"
            )
    parameters = yield from monitor.execute("query-migrate-parameters", timeout=clock.left())
    before = parameters.get("mode", "normal")
    if before != mode:
        yield from monitor.execute("migrate-set-parameters", {"mode": mode}, timeout=clock.left())
    try:
        migration = yield from monitor.execute("query-migrate", timeout=clock.left())
    finally:
        if before != mode and not change:
            yield from monitor.execute(
                "migrate-set-parameters", {"mode": before}, timeout=clock.left()
            )
    if migration.get("status") in _MIGRATING:
        problems.append(f"a migration is already under way ({migration['status']})")
    for reason in migration.get("blocked-reasons", []):
        problems.append(f"QEMU blocks {mode}: {reason}")
    return problems


def _listening(name: str) -> bool:
    """Whether someone listens on the abstract unix ``name`` (/proc/net/unix)."""
    found = bound_to_name(b"@" + name.encode())
    return found is not None and bool(found.listening)


def _check_command(program: str, root: str, pid: int) -> None:
    """cpr-exec: the old QEMU must find ``program`` as execvp will, in its own root
    and with its own PATH, or the exec fails with the guest stopped."""
    if "/" in program:
        candidates = [program]
    else:
        path = _environment(pid).get("PATH", "/usr/local/bin:/usr/bin:/bin")
        candidates = [os.path.join(d or ".", program) for d in path.split(":")]
    for candidate in candidates:
        inside = os.path.join(root, candidate.lstrip("/"))
        if os.path.isfile(inside) and os.access(inside, os.X_OK):
            return
    raise _Failed(f"the old QEMU would not find {program} to exec (looked in its root and PATH)")


def _environment(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as file:
            raw = file.read()
    except OSError:
        return {}
    pairs = (os.fsdecode(item).partition("=") for item in raw.split(b"\0") if item)
    return {name: value for name, _, value in pairs}


class QemuUpdate:
    """One update: ``run()`` is its driver, ``report`` what it did so far (final once
    the driver ended, however it ended: an interrupted update rolled back first)."""

    def __init__(
        self,
        qmp: str,
        command: Sequence[str],
        *,
        mode: str = "cpr-transfer",
        timeout: float = 60.0,
        log: str | None = None,
    ) -> None:
        _check_mode(mode)
        if not command:
            raise ValueError("the new QEMU's command line is empty")
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        self.qmp = qmp
        self.command = list(command)
        self.mode = mode
        self.clock = _Clock(timeout)
        self.report = UpdateReport("failed", mode, log=log)
        self.old: Monitor | None = None
        self.new: Monitor | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.pidfd: int | None = None
        self.log_file: IO[bytes] | None = None
        self.mode_before: str | None = None
        self.migrating = False
        #: The new QEMU read the cpr state (its monitor greeted us).
        self.took_state = False
        token = f"fdchannel-{os.getpid()}-{secrets.token_hex(4)}"
        self.names = {"cpr": f"{token}-cpr", "main": f"{token}-main", "monitor": f"{token}-qmp"}
        #: cpr-exec: the migration stream's file, as we see it (through QEMU's root).
        self.state_file: str | None = None
        self.state_inside = f"/tmp/{token}.vmstate"
        #: cpr-exec: the old QEMU has exec'd the new command: no way back.
        self.execd = False

    def run(self) -> Driver[UpdateReport]:
        report = self.report
        interrupted: BaseException | None = None
        try:
            try:
                yield from self._switch()
                took_over = True
            except Exception as exc:
                report.reason = str(exc) or type(exc).__name__
                took_over = yield from self._rollback()
            except BaseException as exc:
                report.reason = f"interrupted ({type(exc).__name__})"
                if not (yield from self._rollback()):
                    raise
                # The guest runs on the new QEMU: finish the update, then let the
                # interruption (a cancellation) go on.
                took_over, interrupted = True, exc
            if took_over:
                yield from self._take_over()
            if interrupted is not None:
                raise interrupted
        finally:
            yield from self._close()
            report.steps, report.total_ms = self.clock.steps, self.clock.total_ms()
        return report

    def _take_over(self) -> Driver[None]:
        """The new QEMU runs the guest: the update is done, whatever follows."""
        report = self.report
        if report.reason is not None:
            report.warnings.append(f"{report.reason}; but the new QEMU runs the guest: kept")
        report.result, report.reason = "updated", None
        if self.process is not None:
            _HANDED_OVER[:] = [p for p in _HANDED_OVER if p.poll() is None]
            _HANDED_OVER.append(self.process)
        try:
            yield from self._retire_old()
        except Exception as exc:
            report.warnings.append(str(exc) or type(exc).__name__)

    # --- the update -------------------------------------------------------------------------

    def _switch(self) -> Driver[None]:
        """Up to the new QEMU running the guest; a failure here rolls back."""
        clock, report = self.clock, self.report
        self.old = old = yield from connect_monitor(self.qmp, "the old QEMU", clock.left())
        report.old_pid, report.old_version = old.pid, _version(old.session.version)
        clock.done("connect-old")
        parameters = yield from old.execute("query-migrate-parameters", timeout=clock.left())
        # None: a QEMU without the parameter (before 10.0), which nothing changes.
        self.mode_before = parameters.get("mode")
        problems = yield from _problems(old, self.mode, clock, change=True)
        if problems:
            raise _Failed("; ".join(problems))
        yield from old.execute(
            "migrate-set-capabilities",
            {"capabilities": [{"capability": "events", "state": True}]},
            timeout=clock.left(),
        )
        clock.done("check-old")
        if self.mode == "cpr-exec":
            yield from self._switch_by_exec(old)
            return
        yield from self._start_new()
        clock.done("start-new")
        yield from self._await_listening()
        clock.done("new-listens")
        self.migrating = True  # from here on, a rollback may have a guest to continue
        yield from old.execute("migrate", {"channels": self._channels()}, timeout=clock.left())
        clock.done("migrate")
        yield from self._greet_new()
        clock.done("cpr-state-read")
        stop = yield from old.wait_event(["STOP"], clock.left())
        assert self.new is not None
        resume = yield from self.new.wait_event(["RESUME"], clock.left())
        report.downtime_ms = (resume.timestamp - stop.timestamp) * 1000
        clock.done("switch")

    def _switch_by_exec(self, old: Monitor) -> Driver[None]:
        """cpr-exec: the old QEMU writes its state to a file and execs the new
        command line in its own place (the same pid).  Everything that can be
        checked is checked before: after the exec there is no old QEMU to go
        back to."""
        clock, report = self.clock, self.report
        if old.pid is None:
            raise _Failed("cannot tell which process serves the QMP socket: cpr-exec needs it")
        root = f"/proc/{old.pid}/root"
        _check_command(self.command[0], root, old.pid)
        self.state_file = root + self.state_inside
        argv = [*self.command, "-incoming", "defer", *self._own_monitor_by_name()]
        yield from old.execute(
            "migrate-set-parameters", {"cpr-exec-command": argv}, timeout=clock.left()
        )
        self.pidfd = os.pidfd_open(old.pid)
        report.new_pid = old.pid
        self.migrating = True
        yield from old.execute(
            "migrate", {"channels": [self._state_channel()]}, timeout=clock.left()
        )
        clock.done("migrate")
        stop = yield from old.wait_event(["STOP"], clock.left())
        yield from old.wait_closed(clock.left())  # the exec closes its monitor
        self.execd = True
        clock.done("exec")
        yield from self._await_name(self.names["monitor"], "its monitor")
        self.new = new = yield from connect_monitor(
            "\0" + self.names["monitor"], "the new QEMU", clock.left()
        )
        report.new_version = _version(new.session.version)
        clock.done("new-listens")
        yield from new.execute(
            "migrate-incoming", {"channels": [self._state_channel()]}, timeout=clock.left()
        )
        resume = yield from new.wait_event(["RESUME"], clock.left())
        report.downtime_ms = (resume.timestamp - stop.timestamp) * 1000
        clock.done("switch")

    def _state_channel(self) -> dict[str, Any]:
        return {
            "channel-type": "main",
            "addr": {"transport": "file", "filename": self.state_inside, "offset": 0},
        }

    def _own_monitor_by_name(self) -> list[str]:
        """A monitor for us on an abstract name (cpr-exec: the new QEMU inherits none
        of our descriptors)."""
        name = self.names["monitor"]
        return [
            "-chardev",
            f"socket,id=fdchannel-qmp,path={name},abstract=on,server=on,wait=off",
            "-mon",
            "chardev=fdchannel-qmp,mode=control",
        ]

    def _channels(self) -> list[dict[str, Any]]:
        """The incoming channels, on abstract unix names (no path to share)."""
        return [
            {
                "channel-type": kind,
                "addr": {"transport": "socket", "type": "unix", "path": name, "abstract": True},
            }
            for kind, name in (("main", self.names["main"]), ("cpr", self.names["cpr"]))
        ]

    def _start_new(self) -> Driver[None]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            argv = [*self.command]
            for channel in self._channels():
                argv += ["-incoming", json.dumps(channel, separators=(",", ":"))]
            argv += [
                "-chardev",
                f"socket,id=fdchannel-qmp,fd={theirs.fileno()}",
                "-mon",
                "chardev=fdchannel-qmp,mode=control",
            ]
            self.log_file = self._open_log()
            try:
                # A session of its own: the new QEMU outlives us and our terminal's
                # signals; it holds none of our output (a caller reading it to
                # its end returns when we do).
                self.process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=self.log_file,
                    stderr=self.log_file,
                    pass_fds=[theirs.fileno()],
                    start_new_session=True,
                )
            except OSError as exc:
                raise _Failed(f"cannot start the new QEMU ({argv[0]}): {exc.strerror}") from exc
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.pidfd = os.pidfd_open(self.process.pid)
        self.report.new_pid = self.process.pid
        self.new = Monitor((yield from self._adopt(ours)), "the new QEMU", self.process.pid)
        yield from self.new.offer_capabilities()

    def _adopt(self, sock: socket.socket) -> Driver[Any]:
        try:
            stream = yield Adopt(sock)
        except BaseException:
            sock.close()
            raise
        return stream

    def _open_log(self) -> IO[bytes]:
        path = self.report.log
        if path is None:
            handle, path = tempfile.mkstemp(prefix="fdchannel-qemu-", suffix=".log")
            self.report.log = path
            return os.fdopen(handle, "wb")
        try:
            return open(path, "ab")
        except OSError as exc:
            raise _Failed(f"cannot open the log {path}: {exc.strerror}") from exc

    def _log_tail(self) -> str:
        if self.report.log is None:
            return ""
        try:
            with open(self.report.log, "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - 4096))
                lines = log.read().decode(errors="replace").splitlines()
        except OSError:
            return ""
        # QEMU's words about fdchannel's own monitor (11.1: "-mon is deprecated")
        # are not why it failed.
        kept = [line.strip() for line in lines if line.strip() and "fdchannel-qmp" not in line]
        return " | ".join(kept[-_LOG_LINES:])

    def _exited(self) -> bool:
        if self.process is None:
            return False  # cpr-exec: not our child; the pidfd tells
        return self.process.poll() is not None

    def _await_listening(self) -> Driver[None]:
        """Until the new QEMU listens on its cpr channel (QEMU connects it once,
        with no retry: it must listen before ``migrate``)."""
        yield from self._await_name(self.names["cpr"], "the cpr state")

    def _await_name(self, name: str, what: str) -> Driver[None]:
        """Until the new QEMU listens on the abstract unix ``name``, or exits."""
        assert self.pidfd is not None
        while not _listening(name):
            if self._exited() or (yield WaitReadable(self.pidfd, _LOOK_EVERY)):
                raise _Failed(f"the new QEMU exited before it listened for {what}")
            if self.clock.left() == 0:
                raise _Failed(f"the new QEMU did not listen for {what} in time")

    def _greet_new(self) -> Driver[None]:
        """The new QEMU's monitor greets once it has read the cpr state."""
        assert self.new is not None
        try:
            version = yield from self.new.greet(self.clock.left())
        except QemuError as exc:
            raise _Failed(f"the new QEMU did not take the cpr state: {exc}") from exc
        self.took_state = True
        self.report.new_version = _version(version)

    def _await_completed(self, old: Monitor) -> Driver[None]:
        while True:
            migration = yield from old.execute("query-migrate", timeout=self.clock.left())
            status = migration.get("status")
            if status == "completed":
                return
            if status not in _MIGRATING:
                raise _Failed(f"the old QEMU's migration ended {status}")
            yield from old.wait_event(["MIGRATION"], self.clock.left())

    def _retire_old(self) -> Driver[None]:
        """The update is done: the old QEMU's migration completes, it quits, and we
        see it go.  What fails here is a warning: the new QEMU runs the guest."""
        old = self.old
        assert old is not None
        if self.mode == "cpr-exec":
            return  # the old QEMU became the new one
        yield from self._await_completed(old)
        watch = None
        if old.pid is not None:
            with contextlib.suppress(OSError):
                watch = os.pidfd_open(old.pid)
        try:
            yield from old.execute("quit", timeout=_GRACE)
            if watch is not None and not (yield WaitReadable(watch, _GRACE)):
                raise QemuError(f"the old QEMU (pid {old.pid}) did not exit after quit")
        finally:
            if watch is not None:
                os.close(watch)
        self.clock.done("old-exited")

    # --- rollback ---------------------------------------------------------------------------

    def _rollback(self) -> Driver[bool]:
        """The guest keeps running on the old QEMU; nothing of the new one is left.
        False; True, touching nothing, if the new QEMU turns out to run the guest
        (its RESUME was missed, or came as we gave up): then it is kept."""
        report = self.report
        if (yield from self._new_runs_guest()):
            return True
        if self.execd:
            # cpr-exec: the old QEMU is gone; a new one that failed took the guest.
            report.result = "failed"
            report.reason = f"{report.reason}; after the exec, so the guest is lost"
            yield from self._kill_exec()
            return False
        yield from self._kill_new()
        report.result = "rolled-back" if self.took_state else "failed"
        old = self.old
        if old is None or old.session.closed:
            return False
        try:
            if self.migrating:
                migration = yield from old.execute("query-migrate", timeout=_GRACE)
                if migration.get("status") in _MIGRATING:
                    yield from old.execute("migrate_cancel", timeout=_GRACE)
            status = yield from old.execute("query-status", timeout=_GRACE)
            # Only a guest this update stopped is continued.
            if self.migrating and status.get("status") != "running":
                yield from old.execute("cont", timeout=_GRACE)
                report.result = "rolled-back"
            if self.mode_before is not None and self.mode_before != self.mode:
                yield from old.execute(
                    "migrate-set-parameters", {"mode": self.mode_before}, timeout=_GRACE
                )
        except FdChannelError as exc:
            report.reason = f"{report.reason}; and the rollback failed: {exc}"
        return False

    def _new_runs_guest(self) -> Driver[bool]:
        """Whether the new QEMU, having taken the state, runs the guest now."""
        new = self.new
        if new is None or new.session.closed or not (self.took_state or self.execd):
            return False
        try:
            status = yield from new.execute("query-status", timeout=_ASK)
        except FdChannelError:
            return False
        return bool(status.get("status") == "running")

    def _kill_new(self) -> Driver[None]:
        """Kill the new QEMU; if it had exited by itself, its status and last words
        join the reason."""
        process = self.process
        if process is None:
            return
        if self.pidfd is None:  # interrupted before we could watch it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=_GRACE)
            return
        # A QEMU that closed its monitor is exiting (tearing down its memory
        # takes a while under load): wait for it, to report its own status.  One
        # still talking may be exiting as we look: give it a moment only.
        dying = self.new is not None and self.new.session.closed
        if (
            yield WaitReadable(self.pidfd, _GRACE if dying else 0.05)
        ) and process.poll() is not None:
            tail = self._log_tail()
            self.report.reason = (
                f"{self.report.reason}; the new QEMU exited with status {process.returncode}"
                + (f": {tail}" if tail else "")
            )
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # QEMU and whatever wrapped it
            yield WaitReadable(self.pidfd, _GRACE)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=0.5)

    def _kill_exec(self) -> Driver[None]:
        """cpr-exec: the process that exec'd and failed is not our child."""
        if self.pidfd is None:
            return
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        yield WaitReadable(self.pidfd, _GRACE)

    def _close(self) -> Driver[None]:
        for monitor in (self.new, self.old):
            if monitor is not None:
                yield Close(monitor.stream)
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None
        if self.state_file is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.state_file)
