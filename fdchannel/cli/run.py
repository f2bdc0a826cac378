"""``fdchannel run [--] CMD ARGS...``: stay the first process while CMD's generations come and go.

A container's PID 1 (or, outside a PID namespace, a child subreaper) that
starts CMD, reaps every process left to it, passes the service's signals
to its main process, and follows that main process from generation to
generation through the ``MAINPID=`` notifications an upgrade sends; it
exits with the main process's status once that exits without a successor.
See fdchannel/upgrade/supervisor.py and docs/containers.md.  Its own lines
go to stderr, ``fdchannel run: ...``; stdout is CMD's.  A CMD that cannot
be started exits 127 (not found) or 126 (found, not runnable), as a shell.
"""

from __future__ import annotations

import argparse
import sys

from ..text import printable
from ..upgrade.supervisor import CannotRun, Supervisor, SupervisorError
from ._become import describe_exec_error
from ._output import CliError, Output, UsageError

__all__ = ["run"]

PROG = "fdchannel run"


class _NotStarted(CliError):
    """CMD could not be started: a shell's exit status."""

    def __init__(self, message: str, exit_status: int) -> None:
        super().__init__(message, PROG)
        self.exit_status = exit_status


def command_of(options: argparse.Namespace) -> list[str]:
    """CMD: what follows the options, without the ``--`` that may separate it."""
    command: list[str] = options.command
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise UsageError(f"a command is needed: {PROG} [--] CMD [ARGS ...]", PROG)
    return command


def run(options: argparse.Namespace, out: Output) -> int:
    command = command_of(options)

    def log(line: str) -> None:
        out.write(sys.stderr, f"{PROG}: {printable(line)}\n")

    supervisor = Supervisor(command, grace=options.grace, log=log, quiet=options.quiet)
    try:
        return supervisor.run()
    except CannotRun as exc:
        found = exc.exit_status == 126  # there, but not runnable: say which file is at fault
        why = describe_exec_error(exc.program, exc.error) if found else exc.error.strerror
        raise _NotStarted(f"cannot run {exc.program!r}: {why}", exc.exit_status) from None
    except SupervisorError as exc:
        raise CliError(str(exc), PROG) from None
