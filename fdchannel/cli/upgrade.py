"""``fdchannel upgrade PIDFILE|CONTROL-SOCKET``: ask a server run under
``fdchannel.upgrade.Upgrader`` to upgrade, wait for the outcome, say it.

A control socket is asked directly and answers with the outcome (believed
from a server of our uid or root only); a pidfile names the process to
signal (SIGHUP unless ``--signal``), signalled only if it is still the one
the pidfile was written for ("stale pidfile" otherwise), whose outcome is
then read from the status file beside the pidfile.  Exit status 0: the new
generation serves (warnings about what went wrong after the commit, such as a
pidfile not rewritten, go to stderr); 1: it did not (the reason is
printed; the old one still serves) or the server could not be asked.
"""

from __future__ import annotations

import argparse
import signal

from ..upgrade.control import request_upgrade
from ._output import OK, Output, format_ms, printable

__all__ = ["run"]


def run(options: argparse.Namespace, out: Output) -> int:
    trigger = signal.Signals[f"SIG{options.signal.upper().removeprefix('SIG')}"]
    reply = request_upgrade(options.target, timeout=options.timeout or 60, trigger=trigger)
    pid = reply.get("pid")
    generation = reply.get("generation")
    took = reply.get("seconds")
    text = f"upgraded: pid {pid} serves now"
    if isinstance(generation, int):
        text += f" (generation {generation})"
    if isinstance(took, int | float):
        text += f", in {format_ms(took)}"
    out.result({"ok": True, **{k: v for k, v in reply.items() if k != "ok"}}, printable(text))
    warnings = reply.get("warnings")
    for warning in warnings if isinstance(warnings, list) else []:
        out.notice(f"warning: {warning}")  # after the commit: it serves all the same
    return OK
