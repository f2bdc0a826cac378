"""``fdchannel probe --cpr-exec [-- CMD ARGS...]``: be QEMU's cpr-exec-command.

A QEMU in cpr-exec mode execs its ``cpr-exec-command`` with its cpr state
in a memfd named by ``QEMU_CPR_EXEC_STATE`` and the state's descriptors
inherited (see fdchannel.cpr_exec).  Given as that command, this reads the
state, describes every descriptor as ``probe --listen`` does, then execs
CMD (the new QEMU) with the environment and every descriptor exactly as
QEMU left them: same numbers, same close-on-exec flags, the memfd and its
offset untouched.  Everything opened here is close-on-exec and closed
before the exec; the signal mask passes as it came, and so do ignored
signals but SIGXFSZ (see ``_become``).  Without CMD it only describes.

The old QEMU is gone by the time this runs (exec keeps its pid, not its
memory), so CMD is the guest's only way on: a state that cannot be read is
reported, and CMD still runs.  Only a CMD that cannot be executed stops
here (exit 1).  The event loop is never loaded: this runs in QEMU's stead.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from typing import Any, NoReturn

from .. import descriptors as describe
from ..cpr_exec import CPR_EXEC_STATE_VARIABLE, CprExecState, read_cpr_exec_state
from ..errors import FdChannelError
from ._become import describe_exec_error, find_program
from ._output import OK, CliError, Output, format_size, plural, printable
from .listen import descriptor_documents, descriptor_table

__all__ = ["run"]


def _descriptors(found: CprExecState) -> list[dict[str, Any]]:
    """``probe --listen``'s descriptor list, plus each one's close-on-exec flag."""
    documents = descriptor_documents(found.state.fds)
    for document in documents:
        document["cloexec"] = not os.get_inheritable(document["fd"])
    return documents


def _subsections(found: CprExecState) -> list[dict[str, Any]]:
    return [
        {
            "name": sub.name,
            "version_id": sub.version_id,
            "known": sub.known,
            "size": len(sub.body),
        }
        for sub in found.state.qemu_subsections
    ]


def _exec_document(program: str | None, command: list[str]) -> dict[str, Any] | None:
    return None if program is None else {"program": program, "argv": command}


def _document(
    found: CprExecState, descriptors: list[dict[str, Any]], program: str | None, command: list[str]
) -> dict[str, Any]:
    return {
        "ok": True,
        "mode": "cpr-exec",
        "variable": CPR_EXEC_STATE_VARIABLE,
        "state_fd": found.state_fd,
        "state_size": found.size,
        "state_offset": found.offset,
        "state_description": describe.describe(found.state_fd),
        "codec": "qemu",
        "descriptors": descriptors,
        "subsections": _subsections(found),
        "exec": _exec_document(program, command),
    }


def _exec_text(program: str | None, command: list[str]) -> str:
    if program is None:
        return "exec         none (no command after '--')"
    return (
        f"exec         {printable(program)}: {printable(shlex.join(command))} "
        "(environment and descriptors as QEMU left them)"
    )


def _text(
    found: CprExecState, descriptors: list[dict[str, Any]], program: str | None, command: list[str]
) -> str:
    memfd = describe.summary(describe.describe(found.state_fd))
    subsections = ", ".join(
        f"{printable(sub.name)} v{sub.version_id}" for sub in found.state.qemu_subsections
    )
    lines = [
        f"state fd     {found.state_fd} ({CPR_EXEC_STATE_VARIABLE}): {memfd}, "
        f"offset {found.offset}",
        f"state        qemu codec (cpr-exec), {plural(len(descriptors), 'descriptor')}, "
        f"{format_size(found.size)}" + (f"; subsections: {subsections}" if subsections else ""),
        *descriptor_table(descriptors),
        _exec_text(program, command),
    ]
    return "\n".join(lines)


def _become(program: str, command: list[str]) -> NoReturn:
    """exec CMD with the environment QEMU gave us (as bytes: exact) and our descriptors."""
    sys.stdout.flush()
    sys.stderr.flush()
    # Python ignores SIGXFSZ at start-up and an ignored signal survives exec;
    # QEMU leaves it at its default.  (SIGPIPE QEMU ignores itself, as Python does.)
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    # As QEMU left it: the program put back what Python changed at start-up.
    try:
        os.execve(program, command, os.environb)
    except OSError as error:
        raise CliError(f"cannot run {program!r}: {describe_exec_error(program, error)}") from None


def _report_failure(exc: FdChannelError, program: str, command: list[str], out: Output) -> None:
    """A state that cannot be read, on stderr: CMD runs anyway."""
    message = printable(" ".join(str(exc).split()))
    if out.json:
        error = {"type": type(exc).__name__, "message": message}
        document = {"ok": False, "error": error, "exec": _exec_document(program, command)}
        out.result(document, "", file=sys.stderr)
        return
    out.write(sys.stderr, f"{out.prog}: error: {message}\n")
    out.notice(f"exec {program} anyway: the old QEMU is gone, and the command is its successor")


def run(options: argparse.Namespace, out: Output) -> int:
    """Describe the cpr-exec state; then, with a command, become it."""
    command: list[str] = options.command
    program = find_program(command) if command else None
    try:
        found = read_cpr_exec_state()
    except FdChannelError as exc:
        if program is None:
            raise
        _report_failure(exc, program, command, out)
        _become(program, command)
    descriptors = _descriptors(found)
    report = sys.stderr if program is not None else sys.stdout
    out.result(
        _document(found, descriptors, program, command),
        _text(found, descriptors, program, command),
        file=report,
    )
    if program is None:
        return OK
    _become(program, command)
