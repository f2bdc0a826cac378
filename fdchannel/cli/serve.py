"""``fdchannel serve --listen NAME=ADDRESS ... -- SERVER-ARGV``: run a server that takes
listening descriptors (gunicorn ``--bind fd://{http}``, any server reading
``LISTEN_FDS``) as an upgradable generation.

Each generation is this command running an ``Upgrader``; the server is its
child, given the sockets.  ``fdchannel upgrade PIDFILE|CONTROL`` (or SIGHUP)
starts the next generation, a fresh ``fdchannel serve`` with the same command
line and a fresh server.  See fdchannel/upgrade/launcher.py and docs/serve.md.
Its own lines go to stderr, ``fdchannel serve[PID]: ...``, with the server's
stderr; stdout is the server's.

Exit status: the server's once it served (128 + a signal's number if a
signal ended it); 1 if this generation could not serve (the reason is
printed: the server exited before its check passed, the check did not pass
in time); 2 for a wrong command line.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import cast

import anyio

from ..text import printable
from ..upgrade.addresses import UdpAddress, UnixDatagramAddress, listen_address
from ..upgrade.launch_checks import CheckError, parse_check
from ..upgrade.launcher import (
    DEFAULT_CHECK,
    ServeError,
    ServeOptions,
    SocketActivation,
    plan,
    serve as serve_generation,
)
from ._become import find_program
from ._output import CliError, Output, UsageError, single

__all__ = ["LOOPS", "options_of", "run"]

PROG = "fdchannel serve"
#: The event loops the launcher itself can run on (the server's is its own).
LOOPS = ("asyncio", "uvloop", "trio")


def _signal(text: str, what: str) -> signal.Signals:
    signum = signal.Signals[f"SIG{text.upper().removeprefix('SIG')}"]
    if signum in (signal.SIGKILL, signal.SIGSTOP):
        raise UsageError(f"{what} {signum.name}: it cannot be caught, nor passed on", PROG)
    if signum == signal.SIGHUP and what == "--forward":
        raise UsageError(
            "--forward HUP: SIGHUP asks the generation for an upgrade and is never passed on",
            PROG,
        )
    return signum


def _listen(item: str) -> tuple[str, str]:
    name, equals, address = item.partition("=")
    if not equals or not name or not address:
        raise UsageError(f"--listen {item!r}: expected NAME=ADDRESS, e.g. http=tcp:0.0.0.0:8080")
    # Upgrades' own grammar; an AddressError (no such scheme) is a usage error.
    if isinstance(listen_address(address), UdpAddress | UnixDatagramAddress):
        raise UsageError(
            f"--listen {item!r}: fdchannel serve hands on stream listeners only; "
            "a datagram socket needs Upgrader.listen_datagram in the server itself"
        )
    return name, address


def options_of(options: argparse.Namespace) -> ServeOptions:
    """The launcher's options from the command line; UsageError if they are wrong."""
    command: list[str] = options.command
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise UsageError(f"a server command is needed: {PROG} ... -- SERVER-ARGV", PROG)
    try:
        check = parse_check(options.ready or DEFAULT_CHECK)
    except CheckError as exc:
        raise UsageError(f"--ready {exc}", PROG) from None
    if not 0 <= options.probation < float("inf"):
        raise UsageError(f"--probation {options.probation}: a number of seconds, 0 or more", PROG)
    serve = ServeOptions(
        command=tuple(command),
        listen=tuple(_listen(item) for item in options.listen),
        pidfile=Path(options.pidfile),
        control=Path(options.control),
        ready=check,
        ready_timeout=options.ready_timeout,
        drain_timeout=options.drain_timeout,
        probation=options.probation,
        stop_signal=_signal(options.stop_signal, "--stop-signal"),
        forward=tuple(_signal(name, "--forward") for name in options.forward),
        socket_activation=cast(SocketActivation, options.socket_activation),
    )
    try:
        plan(serve)
    except ValueError as exc:
        raise UsageError(str(exc), PROG) from None
    return serve


class _Printable(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))


def _log_to_stderr(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Printable(f"{PROG}[%(process)d]: %(message)s"))
    logger = logging.getLogger("fdchannel")
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def run(options: argparse.Namespace, out: Output) -> int:
    serve = options_of(options)
    find_program(list(serve.command))  # a typo fails here, before any socket is bound
    _log_to_stderr(options.quiet)
    backend, backend_options = options.loop, {}
    if backend == "uvloop":
        import uvloop

        backend, backend_options = "asyncio", {"loop_factory": uvloop.new_event_loop}
    try:
        return anyio.run(serve_generation, serve, backend=backend, backend_options=backend_options)
    except Exception as exc:
        error = single(exc)
        if isinstance(error, ServeError):
            raise CliError(str(error), PROG) from None
        if error is not exc:
            raise error from error.__cause__
        raise
