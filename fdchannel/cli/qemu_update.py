"""``fdchannel qemu-update --qmp OLD-QMP-SOCKET -- NEW-QEMU-ARGV...``: replace a
running QEMU by a new one, the guest running on the same memory.

The update itself is ``fdchannel.protocol.qemu_update`` run by the blocking
layer (no event loop).  SIGINT and SIGTERM interrupt it the same way: it
rolls back (the guest keeps running on the old QEMU), the report is
printed and the exit status is 1, as for any update that did not happen.
Further signals are ignored until the rollback is over: each of its steps
is bounded.

stdout gets the report (text, or with ``--json`` the report's one JSON
object and nothing else); an update that did not happen, or a check that
found problems, adds one line on stderr with the result and the reason.
The new QEMU outlives us and holds none of our output (the library starts
it with its output to the log and stdin from /dev/null).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import threading
from types import FrameType
from typing import Any

from ..protocol.qemu_update import QemuUpdate, UpdateReport, checking
from ._output import OK, PROBLEM, Output, UsageError, format_ms, printable

__all__ = ["CHECK_TIMEOUT", "UPDATE_TIMEOUT", "run"]

#: Seconds an update, or a check, may take unless --timeout says otherwise.
UPDATE_TIMEOUT = 60.0
CHECK_TIMEOUT = 10.0
PROG = "fdchannel qemu-update"
#: Width of the labels of the text report.
_LABEL = 13
#: Seconds a signal is put off while the new QEMU is being started.
_PUT_OFF = 0.01

#: What an interruption raises: a KeyboardInterrupt named after its signal, so
#: that the report's reason says which ("interrupted (SIGTERM)").
_INTERRUPTS: dict[int, type[KeyboardInterrupt]] = {
    signum: type(signum.name, (KeyboardInterrupt,), {"__doc__": f"{signum.name} arrived."})
    for signum in (signal.SIGINT, signal.SIGTERM)
}


def _checked(options: argparse.Namespace) -> None:
    """Usage errors the parser cannot see."""
    if options.log is not None and options.mode == "cpr-exec" and not options.check:
        raise UsageError(
            "--log does not apply to --mode cpr-exec (the new QEMU writes where the old one did)",
            PROG,
        )
    if options.check:
        if options.log is not None:
            raise UsageError("--log does not apply to --check (no QEMU is started)", PROG)
        return
    if options.misplaced:
        raise UsageError(
            f"put the new QEMU's command line after '--': {PROG} --qmp SOCKET -- QEMU ARGS...",
            PROG,
        )
    if not options.command:
        raise UsageError(
            f"the new QEMU's command line is needed after '--': "
            f"{PROG} --qmp SOCKET -- QEMU ARGS... (or --check)",
            PROG,
        )


class _Interruptions:
    """SIGINT and SIGTERM raise KeyboardInterrupt in the main thread while ``with``
    it: the first one only, since a rollback under way must finish; ``caught``
    lists the signals that came.  The previous handlers come back on the way out.

    A signal that comes while the new QEMU is being started (inside
    ``subprocess``) is put off for a moment: an exception there would lose the
    child's pid, and with it the means to kill it.
    """

    def __init__(self) -> None:
        self.caught: list[int] = []
        self._previous: dict[int, Any] = {}
        self._later: list[threading.Timer] = []
        self._leaving = False

    def __enter__(self) -> list[int]:
        if threading.current_thread() is threading.main_thread():  # handlers belong there
            self._previous = {signum: signal.signal(signum, self._handle) for signum in _INTERRUPTS}
        return self.caught

    def __exit__(self, *exc_info: object) -> None:
        self._leaving = True
        for timer in self._later:
            timer.cancel()
            timer.join()  # a signal it sent reaches _handle, not the handler restored below
        for signum, handling in self._previous.items():
            signal.signal(signum, handling)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self._leaving and _starting_a_process(frame):
            timer = threading.Timer(_PUT_OFF, signal.pthread_kill, (threading.get_ident(), signum))
            timer.daemon = True
            self._later.append(timer)
            timer.start()
            return
        self.caught.append(signum)
        if len(self.caught) == 1 and not self._leaving:
            raise _INTERRUPTS[signum]


def _starting_a_process(frame: FrameType | None) -> bool:
    """Whether ``frame`` runs inside ``subprocess`` (Popen between fork and return)."""
    while frame is not None:
        if frame.f_code.co_filename == subprocess.__file__:
            return True
        frame = frame.f_back
    return False


def _interrupted(signum: int) -> str:
    return f"interrupted ({signal.Signals(signum).name})"


def _update(options: argparse.Namespace) -> UpdateReport:
    from ..blocking._handoff import drive  # the blocking layer, only now

    update = QemuUpdate(
        options.qmp,
        options.command,
        mode=options.mode,
        timeout=options.timeout or UPDATE_TIMEOUT,
        log=options.log,
    )
    # The driver rolls back before an interruption goes on; its report is final then.
    with _Interruptions() as caught, contextlib.suppress(KeyboardInterrupt):
        drive(update.run())
    report = update.report
    if caught:
        if not report.steps:  # the driver's last words were the interruption
            report.steps, report.total_ms = update.clock.steps, update.clock.total_ms()
        if not report.ok:
            report.reason = report.reason or _interrupted(caught[0])
        elif "old-exited" not in (name for name, _ in report.steps):
            report.warnings.append(
                f"{_interrupted(caught[0])} after the new QEMU took over, before the old "
                f"QEMU (pid {report.old_pid}) was seen to exit: quit it if it still runs"
            )
    return report


def _check(options: argparse.Namespace) -> UpdateReport:
    from ..blocking._handoff import drive

    timeout = options.timeout or CHECK_TIMEOUT
    with _Interruptions() as caught, contextlib.suppress(KeyboardInterrupt):
        return drive(checking(options.qmp, mode=options.mode, timeout=timeout))
    # A check changes nothing (the mode it sets to ask is set back as it unwinds).
    reason = _interrupted(caught[0])
    return UpdateReport("not-ready", options.mode, reason=reason, problems=[reason])


def _line(label: str, text: str) -> str:
    return f"{label:<{_LABEL}}{text}"


def _qemu(version: str | None, pid: int | None) -> str:
    """``QEMU 10.0.13, pid 4242``, with what is known."""
    known = [f"QEMU {version}" if version else "", f"pid {pid}" if pid is not None else ""]
    return ", ".join(part for part in known if part)


def _known(version: str | None, pid: int | None) -> bool:
    return version is not None or pid is not None


def _update_text(report: UpdateReport) -> str:
    lines = []
    width = max((len(name) for name, _ in report.steps), default=0)
    for name, ms in report.steps:
        lines.append(_line("step", f"{name:<{width}}  {format_ms(ms / 1000):>9}"))
    if report.ok:
        old = f"QEMU {report.old_version} (pid {report.old_pid})"
        new = f"QEMU {report.new_version} (pid {report.new_pid})"
        lines.append(_line("result", f"updated: {old} -> {new}"))
    else:
        lines.append(_line("result", report.result))
        if _known(report.old_version, report.old_pid):
            lines.append(_line("old", _qemu(report.old_version, report.old_pid)))
        if report.new_pid is not None:
            new = _qemu(report.new_version, report.new_pid)
            lines.append(_line("new", f"{new}: killed, or exited by itself"))
    if report.downtime_ms is not None:
        lines.append(_line("downtime", format_ms(report.downtime_ms / 1000)))
    lines.append(_line("total", format_ms(report.total_ms / 1000)))
    if report.log is not None:
        lines.append(_line("log", f"{printable(report.log)} (the new QEMU's output)"))
    return "\n".join(lines)


def _check_text(report: UpdateReport) -> str:
    lines = []
    if _known(report.old_version, report.old_pid):
        lines.append(_line("old", _qemu(report.old_version, report.old_pid)))
    lines += [_line("problem", printable(problem)) for problem in report.problems]
    result = f"ready for {report.mode}" if report.ok else report.result
    lines.append(_line("result", result))
    return "\n".join(lines)


def run(options: argparse.Namespace, out: Output) -> int:
    """Update (or check) the QEMU behind ``--qmp``; 0 if it was updated (ready)."""
    _checked(options)
    report = _check(options) if options.check else _update(options)
    text = _check_text(report) if options.check else _update_text(report)
    out.result(report.as_json(), text)
    for warning in report.warnings:
        out.notice(f"warning: {warning}")  # after the switch: updated all the same
    if report.ok:
        return OK
    reason = " ".join((report.reason or "no reason given").split())
    out.write(sys.stderr, f"{out.prog}: error: {report.result}: {printable(reason)}\n")
    return PROBLEM
