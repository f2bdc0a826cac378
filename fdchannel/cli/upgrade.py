"""``fdchannel upgrade PIDFILE|CONTROL-SOCKET``: ask a server run under
``fdchannel.upgrade.Upgrader`` to upgrade, wait for the outcome, say it;
``fdchannel upgrade --status PIDFILE|CONTROL-SOCKET``: say which generation
serves, how the last upgrade went, and how many went well, failed, were
rolled back or refused since the service started.

A control socket is asked directly and answers with the outcome (believed
from a server of our uid or root only); a pidfile names the process to
signal (SIGHUP unless ``--signal``), signalled only if it is still the one
the pidfile was written for ("stale pidfile" otherwise), whose outcome is
then read from the status file beside the pidfile.  Either way the outcome
is the same, and so is what is printed: ``upgraded: pid 4242 serves now
(generation 3), in 151 ms``, or the reason (``--json``: the outcome's
fields, the same keys either way).  ``--command``, ``--cwd`` and ``--env``
ask a control socket for a new release.  A server with a probation answers
once it is over (the wait is that much longer, and said on stderr).  Exit
status 0: the new generation serves (warnings about what went wrong after
the commit, such as a pidfile not rewritten, go to stderr); 1: it did not,
or it exited during its probation and the old one serves again (the reason
is printed) or the server could not be asked.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ..upgrade.control import ask_upgrade, failure, request_status
from ._output import OK, PROBLEM, Output, UsageError, format_ms, printable

__all__ = ["run"]

PROG = "fdchannel upgrade"


def _release(options: argparse.Namespace) -> dict[str, Any]:
    """``--command``, ``--cwd``, ``--env`` and ``--unset-env``, as request_upgrade takes them."""
    asked: dict[str, Any] = {}
    if options.command is not None:
        command = options.command[1:] if options.command[:1] == ["--"] else options.command
        if not command:
            raise UsageError(
                f"--command needs the program: {PROG} CONTROL-SOCKET --command CMD", PROG
            )
        asked["command"] = command
    if options.cwd is not None:
        asked["cwd"] = options.cwd
    env: dict[str, str | None] = {}
    for pair in options.env:
        name, equals, value = pair.partition("=")
        if not equals or not name:
            raise UsageError(f"--env takes NAME=VALUE, not {pair!r}", PROG)
        env[name] = value
    for name in options.unset_env:
        env[name] = None
    if env:
        asked["env"] = env
    return asked


def run(options: argparse.Namespace, out: Output) -> int:
    if options.status:
        return _status(options, out)
    trigger = signal.Signals[f"SIG{options.signal.upper().removeprefix('SIG')}"]

    def on_probation(interim: dict[str, Any]) -> None:
        seconds = interim.get("probation")
        length = f"{seconds:g}" if isinstance(seconds, int | float) else seconds
        out.notice(f"pid {interim.get('pid')} serves, on probation for {length} s")

    reply = ask_upgrade(
        options.target,
        timeout=options.timeout or 60,
        trigger=trigger,
        on_probation=on_probation,
        **_release(options),
    )
    if reply.get("ok") is not True:
        return _failed(reply, out)
    out.result({"ok": True, **{k: v for k, v in reply.items() if k != "ok"}}, upgraded(reply))
    warnings = reply.get("warnings")
    for warning in warnings if isinstance(warnings, list) else []:
        out.notice(f"warning: {warning}")  # after the commit: it serves all the same
    return OK


def upgraded(outcome: Mapping[str, Any]) -> str:
    """``upgraded: pid 4242 serves now (generation 3), in 151 ms``: a good outcome."""
    generation = outcome.get("generation")
    took = outcome.get("seconds")
    probation = outcome.get("probation")
    text = f"upgraded: pid {outcome.get('pid')} serves now"
    if isinstance(generation, int):
        text += f" (generation {generation})"
    if isinstance(took, int | float):
        text += f", in {format_ms(took)}"
    if isinstance(probation, int | float) and probation > 0:
        text += f"; it stuck through a probation of {probation:g} s"
    return printable(text)


def _failed(reply: Mapping[str, Any], out: Output) -> int:
    """A failed upgrade: its reason as an error line, and with --json its outcome
    (the error as every command's, then what the outcome tells of it)."""
    error = failure(reply)
    message = printable(" ".join(str(error).split()))
    out.write(sys.stderr, f"fdchannel: error: {message}\n")
    if out.json:
        kind = "UpgradeRolledBack" if reply.get("rolled_back") else type(error).__name__
        details = {k: v for k, v in reply.items() if k not in ("ok", "error")}
        document = {
            "ok": False,
            "error": {"type": kind, "message": message, "exit_status": PROBLEM},
            **details,
        }
        out.result(document, "")
    return PROBLEM


def _status(options: argparse.Namespace, out: Output) -> int:
    asked = [flag for flag, given in _RELEASE_FLAGS.items() if getattr(options, given)]
    if asked:
        raise UsageError(f"--status asks for nothing to start: leave out {asked[0]}", PROG)
    document = request_status(options.target, timeout=options.timeout or 10)
    out.result(document, status_text(document))
    return OK


#: The options that ask for a new release, and where argparse puts them.
_RELEASE_FLAGS = {
    "--command": "command",
    "--cwd": "cwd",
    "--env": "env",
    "--unset-env": "unset_env",
}


def status_text(document: Mapping[str, Any]) -> str:
    """``--status`` for a person: the generation serving, the last upgrade, the counts."""
    generation = document.get("generation")
    serving = f"generation {generation}" if isinstance(generation, int) else "generation unknown"
    lines = [f"{serving}: pid {document.get('pid')}, started {_when(document.get('started'))}"]
    probation = document.get("probation")
    if isinstance(probation, dict):
        seconds = probation.get("seconds")
        length = f"{seconds:g}" if isinstance(seconds, int | float) else "?"
        lines.append(f"upgrading: pid {probation.get('pid')} serves, on probation for {length} s")
    last = document.get("last")
    if isinstance(last, dict):
        lines.append(f"last upgrade, {_when(last.get('at'))}: {_outcome(last)}")
    else:
        lines.append("last upgrade: none since the service started")
    counts = document.get("counts")
    counts = counts if isinstance(counts, dict) else {}
    counted = ", ".join(
        f"{counts.get(name, 0)} {name.replace('_', ' ')}"
        for name in ("ok", "failed", "rolled_back", "refused")
    )
    since = _when(document.get("service_started"))
    lines.append(f"upgrades since the service started ({since}): {counted}")
    return "\n".join(printable(line) for line in lines)


def _outcome(last: Mapping[str, Any]) -> str:
    if last.get("ok") is True:
        return upgraded(last)
    error = " ".join(str(last.get("error") or "no reason given").split())
    if last.get("rolled_back"):
        return error  # "rolled back: ..."
    took = last.get("seconds")
    return f"failed after {format_ms(took)}: {error}" if isinstance(took, int | float) else error


def _when(moment: object) -> str:
    """An ISO 8601 time to the second, as people read it; "unknown" if it is none."""
    try:
        return datetime.fromisoformat(str(moment)).isoformat(sep=" ", timespec="seconds")
    except ValueError:
        return "unknown"
