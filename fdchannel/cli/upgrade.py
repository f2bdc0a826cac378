"""``fdchannel upgrade PIDFILE|CONTROL-SOCKET``: ask a server run under
``fdchannel.upgrade.Upgrader`` to upgrade, wait for the outcome, say it.

A control socket is asked directly and answers with the outcome (believed
from a server of our uid or root only); a pidfile names the process to
signal (SIGHUP unless ``--signal``), signalled only if it is still the one
the pidfile was written for ("stale pidfile" otherwise), whose outcome is
then read from the status file beside the pidfile.  ``--command``,
``--cwd`` and ``--env`` ask a control socket for a new release.  A server with a
probation answers once it is over (the wait is that much longer, and said on
stderr).  Exit status 0: the new generation serves (warnings about what went
wrong after the commit, such as a pidfile not rewritten, go to stderr); 1: it
did not, or it exited during its probation and the old one serves again (the
reason is printed) or the server could not be asked.
"""

from __future__ import annotations

import argparse
import signal
from typing import Any

from ..upgrade.control import request_upgrade
from ._output import OK, Output, UsageError, format_ms, printable

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
    trigger = signal.Signals[f"SIG{options.signal.upper().removeprefix('SIG')}"]

    def on_probation(interim: dict[str, Any]) -> None:
        seconds = interim.get("probation")
        out.notice(f"pid {interim.get('pid')} serves, on probation for {seconds} s")

    reply = request_upgrade(
        options.target,
        timeout=options.timeout or 60,
        trigger=trigger,
        on_probation=on_probation,
        **_release(options),
    )
    pid = reply.get("pid")
    generation = reply.get("generation")
    took = reply.get("seconds")
    probation = reply.get("probation")
    text = f"upgraded: pid {pid} serves now"
    if isinstance(generation, int):
        text += f" (generation {generation})"
    if isinstance(took, int | float):
        text += f", in {format_ms(took)}"
    if isinstance(probation, int | float) and probation > 0:
        text += f"; it stuck through a probation of {probation:g} s"
    out.result({"ok": True, **{k: v for k, v in reply.items() if k != "ok"}}, printable(text))
    warnings = reply.get("warnings")
    for warning in warnings if isinstance(warnings, list) else []:
        out.notice(f"warning: {warning}")  # after the commit: it serves all the same
    return OK
