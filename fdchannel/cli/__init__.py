"""The ``fdchannel`` command line: the parser, dispatch, and errors as one line.

Exit status: 0 all went well; 1 a problem was found (unreachable, timed
out, refused, a bad state); 2 the command line is wrong (argparse's errors,
an address or channel that does not parse).  Errors are one line on
stderr, ``fdchannel: error: ...``; ``--debug`` adds the traceback; with
``--json`` stdout also gets ``{"ok": false, "error": {...}}``.

Start-up matters (``fdchannel --help`` runs in scripts): this module
imports argparse, the output helpers and the codec names only.  A
command's module, and with it the address layer or the event loop, is
imported when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn, Protocol

from ..codec_choice import CODECS
from ..errors import AddressError, FdChannelError
from ._output import PROBLEM, USAGE, CliError, Output, UsageError, printable, single

__all__ = ["build_parser", "main"]

PROG = "fdchannel"


class _Command(Protocol):
    def run(self, options: argparse.Namespace, out: Output) -> int: ...


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are raised, to be printed as one line like every other."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')", self.prog)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: a timeout must be a positive number")
    return value


def _common() -> _Parser:
    common = _Parser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON document, not text")
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return common


def _timeout(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--timeout", type=_seconds, metavar="SECONDS", help=f"give up after SECONDS ({default})"
    )


def _add_probe(commands: argparse._SubParsersAction[_Parser], common: _Parser) -> None:
    probe = commands.add_parser(
        "probe",
        parents=[common],
        usage=f"{PROG} probe [-h] [--json] [--debug] [--listen] [--mode {{normal,cpr-transfer}}] "
        "[--self-test | --no-self-test] [--no-ack] [--timeout SECONDS] [URI|CHANNEL ...]\n"
        f"       {PROG} probe --cpr-exec [--json] [--debug] [-- CMD [ARGS ...]]",
        help="check channels; with --listen, receive a state and describe it",
        description="Parse and validate each URI or channel (a list is validated as a set), "
        "show its typed address, QAPI form and capabilities, check that it is reachable, "
        "self-test descriptor passing against 'fdchannel probe --listen', and time each "
        "step.  With --listen: act as the incoming cpr side, accept one peer, show who it "
        "is, receive its state (native or qemu codec), describe every descriptor, then "
        "acknowledge by closing.  With --cpr-exec: be QEMU's cpr-exec-command, describe "
        "the state and descriptors an old QEMU left (QEMU_CPR_EXEC_STATE), then exec CMD "
        "with the environment and every descriptor as they are; the report goes to stderr "
        "when CMD follows.",
        epilog="A channel is a URI (a main channel), QAPI JSON or QEMU keyval text, e.g. "
        "'cpr,addr.transport=socket,addr.type=unix,addr.path=/run/vm/cpr.sock'.",
    )
    probe.add_argument("channels", nargs="*", metavar="URI|CHANNEL", help="what to probe")
    probe.add_argument(
        "--listen", action="store_true", help="be the incoming side on the one URI given"
    )
    probe.add_argument(
        "--cpr-exec",
        action="store_true",
        help="read the state a QEMU in cpr-exec mode left, describe it, then exec the "
        "command after '--' (if any) with everything as QEMU left it",
    )
    probe.add_argument(
        "--mode",
        choices=("normal", "cpr-transfer"),
        help="validate the channels as a set in this mode "
        "(default: cpr-transfer if a cpr channel is given, else normal; "
        "a single channel is validated only with --mode)",
    )
    probe.add_argument(
        "--self-test",
        action=argparse.BooleanOptionalAction,
        help="pass a memfd to a unix listener (default: only when it is 'fdchannel probe "
        "--listen', as a one-shot listener would take the test for its real peer)",
    )
    probe.add_argument(
        "--no-ack",
        action="store_true",
        help="--listen: hold the connection instead of acknowledging, until the sender "
        "hangs up or a signal",
    )
    _timeout(probe, "each check: default 5; --listen: waiting for the peer, default never")


def _add_relay(commands: argparse._SubParsersAction[_Parser], common: _Parser) -> None:
    relay = commands.add_parser(
        "relay",
        parents=[common],
        help="accept one peer on FROM, connect TO, forward bytes and descriptors",
        description="Accept one peer on FROM, connect TO, and forward bytes and "
        "descriptors both ways (each descriptor with its bytes), passing on the sender's "
        "half-close and the receiver's close (the ack).  A progress line on stderr counts "
        "what crossed; the result says who closed first.",
    )
    relay.add_argument("source", metavar="FROM", help="URI or channel to listen on")
    relay.add_argument("dest", metavar="TO", help="URI or channel to connect to")
    relay.add_argument("--quiet", action="store_true", help="no progress line")
    _timeout(relay, "waiting for the peer on FROM; default never")


def _add_send(commands: argparse._SubParsersAction[_Parser], common: _Parser) -> None:
    send = commands.add_parser(
        "send",
        parents=[common],
        help="send descriptors to a listener (recv, probe --listen, an Incoming)",
        description="Send a state holding the named descriptors to URI, as the outgoing "
        "side of a cpr channel: connect (retrying while nobody listens yet), send, "
        "half-close, and wait for the receiver to acknowledge by closing.",
        epilog="SOURCE is a descriptor number this process inherited (3), fd:NAME (an "
        "inherited descriptor by its LISTEN_FDNAMES name), a new listening socket "
        "(tcp:HOST:PORT or unix:PATH; port 0 lets the kernel choose), or a file path. "
        "NAME:ID gives an id (default: 0, or one more than the last same NAME).",
    )
    send.add_argument("uri", metavar="URI", help="where the receiver listens (unix: or fd:)")
    send.add_argument("items", nargs="*", metavar="NAME=SOURCE", help="descriptors to send")
    send.add_argument("--codec", choices=CODECS, default="native", help="state format (native)")
    send.add_argument("--metadata", metavar="TEXT", help="bytes sent with the state (native)")
    _timeout(send, "connect, send and ack; default 10")


def _add_recv(commands: argparse._SubParsersAction[_Parser], common: _Parser) -> None:
    recv = commands.add_parser(
        "recv",
        parents=[common],
        usage=f"{PROG} recv [-h] [--json] [--debug] [--timeout SECONDS] URI -- CMD [ARGS ...]",
        help="receive descriptors, then exec CMD with them (socket activation)",
        description="Listen on URI, accept one peer, receive its state, then exec CMD "
        "with the descriptors as fd 3, 4, ... and LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID "
        "set, as systemd's socket activation does.  The sender is acknowledged once CMD has "
        "started; a CMD that cannot be executed is refused (native codec) or never "
        "acknowledged (qemu codec).  The report goes to stderr: stdout is CMD's.",
    )
    recv.add_argument("uri", metavar="URI", help="where to listen (unix: or fd:)")
    # Caught only to say where the command belongs: after "--".
    recv.add_argument("misplaced", nargs="*", help=argparse.SUPPRESS)
    recv.set_defaults(command=[])
    _timeout(recv, "waiting for the peer and its state; default never")


def _signal_name(text: str) -> str:
    name = text.upper().removeprefix("SIG")
    if name not in {s.name.removeprefix("SIG") for s in signal.Signals}:
        raise argparse.ArgumentTypeError(f"{text!r} is not a signal name (e.g. HUP, USR2)")
    return name


def _add_upgrade(commands: argparse._SubParsersAction[_Parser], common: _Parser) -> None:
    upgrade = commands.add_parser(
        "upgrade",
        parents=[common],
        usage=f"{PROG} upgrade [-h] [--json] [--debug] [--signal NAME] [--timeout SECONDS] "
        "PIDFILE|CONTROL-SOCKET\n"
        f"       {PROG} upgrade [-h] [--json] [--debug] [--timeout SECONDS] [--cwd DIR] "
        "[--env NAME=VALUE]... [--unset-env NAME]... CONTROL-SOCKET [--command CMD [ARGS ...]]\n"
        f"       {PROG} upgrade --status [-h] [--json] [--debug] [--timeout SECONDS] "
        "PIDFILE|CONTROL-SOCKET",
        help="ask a server under fdchannel.upgrade to upgrade, and wait for the outcome",
        description="Ask a running server to start its next generation and hand it its "
        "listeners: through its control socket, or by signalling the pid in its pidfile. "
        "Waits for the outcome (and for the end of a probation): exit status 0 when the new "
        "generation serves, 1 with the reason when it did not (the old one still serves); "
        "the same outcome either way (--json: the same keys). "
        "Through the control socket, --command, --cwd and --env start a new release: "
        "another command line, directory or environment than the server's own. "
        "With --status: upgrade nothing, and say which generation serves (its pid and "
        "start time), how the last upgrade went and how long it took, and how many "
        "upgrades went well, failed, were rolled back or refused since the service started.",
    )
    upgrade.add_argument(
        "target", metavar="PIDFILE|CONTROL-SOCKET", help="the server's pidfile or control socket"
    )
    upgrade.add_argument(
        "--signal",
        type=_signal_name,
        default="HUP",
        metavar="NAME",
        help="the signal sent to a pidfile's process (HUP)",
    )
    upgrade.add_argument(
        "--status",
        action="store_true",
        help="upgrade nothing: show the generation serving, the last upgrade and the counts "
        "since the service started (a pidfile's process is not signalled)",
    )
    _timeout(upgrade, "default 60; with --status 10")
    upgrade.add_argument(
        "--cwd",
        metavar="DIR",
        help="start the new generation in DIR (control socket only; a symlink in it, such "
        "as /srv/app/current, is resolved at this upgrade)",
    )
    upgrade.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set NAME in the new generation's environment (control socket only; repeat it)",
    )
    upgrade.add_argument(
        "--unset-env",
        action="append",
        default=[],
        metavar="NAME",
        help="remove NAME from the new generation's environment (control socket only)",
    )
    upgrade.add_argument(
        "--command",
        nargs=argparse.REMAINDER,
        metavar="CMD",
        help="start CMD ARGS... as the new generation instead of the server's own command "
        "line (control socket only; last: every argument after it is the command)",
    )


def _add_qemu_update(commands: argparse._SubParsersAction[_Parser], common: _Parser) -> None:
    update = commands.add_parser(
        "qemu-update",
        parents=[common],
        usage=f"{PROG} qemu-update [-h] [--json] [--debug] --qmp OLD-QMP-SOCKET "
        "[--mode {cpr-transfer,cpr-exec}] [--timeout SECONDS] [--log PATH] -- NEW-QEMU-ARGV...\n"
        f"       {PROG} qemu-update --check [--json] [--debug] --qmp OLD-QMP-SOCKET "
        "[--mode {cpr-transfer,cpr-exec}] [--timeout SECONDS]",
        help="replace a running QEMU by a new one, live: the guest keeps its memory",
        description="Start the new QEMU from NEW-QEMU-ARGV (fdchannel appends its incoming "
        "channels and a monitor), hand it the old QEMU's guest by cpr-transfer (guest RAM "
        "is passed as descriptors, never copied; the guest pauses only while the devices' "
        "state moves), then make the old QEMU quit.  Whatever fails, the guest keeps "
        "running: on the old QEMU (rolled back) or on the new one (updated).  Exit status "
        "0: updated; 1: not updated (the reason is printed), also when interrupted by "
        "SIGINT or SIGTERM, which roll back.  With --check: whether the old QEMU can be "
        "updated, changing nothing.",
        epilog="The old QEMU needs shared guest RAM, e.g. -object "
        "memory-backend-memfd,id=ram0,size=4G,share=on -machine "
        "pc,aux-ram-share=on,memory-backend=ram0; across QEMU versions NEW-QEMU-ARGV names "
        "the old machine type (-machine pc-i440fx-10.0,...).  See docs/qemu-update.md.",
    )
    update.add_argument(
        "--qmp", required=True, metavar="OLD-QMP-SOCKET", help="the old QEMU's QMP unix socket"
    )
    update.add_argument(
        "--mode",
        choices=("cpr-transfer", "cpr-exec"),
        default="cpr-transfer",
        help="how the guest moves (default cpr-transfer; a mode the library does not "
        "support yet is a usage error)",
    )
    update.add_argument(
        "--check",
        action="store_true",
        help="only say whether the old QEMU can be updated (ready or not-ready, and why); "
        "changes nothing and needs no NEW-QEMU-ARGV",
    )
    update.add_argument(
        "--log",
        metavar="PATH",
        help="append the new QEMU's output to PATH (default: a new temporary file)",
    )
    # Caught only to say where the new QEMU's command line belongs: after "--".
    update.add_argument("misplaced", nargs="*", help=argparse.SUPPRESS)
    update.set_defaults(command=[])
    _timeout(update, "the whole update, default 60; --check: default 10")


def _add_run(commands: argparse._SubParsersAction[_Parser], common: _Parser) -> None:
    run = commands.add_parser(
        "run",
        parents=[common],
        usage=f"{PROG} run [-h] [--json] [--debug] [--grace SECONDS] [--quiet] [--] CMD [ARGS ...]",
        help="be a container's first process (PID 1) for a server that upgrades itself",
        description="Start CMD and stay while its generations come and go: reap every "
        "process left to us, pass SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2 and SIGQUIT on to "
        "the main process, and follow the main process from generation to generation by "
        "the MAINPID= each upgrade sends to NOTIFY_SOCKET (set for CMD).  When the main "
        "process exits without a successor, what is left gets SIGTERM, then SIGKILL after "
        "--grace, and run exits with the main process's status (128 + a signal's number).  "
        "As PID 1 of a PID namespace (a container) it is that namespace's init; elsewhere "
        "it makes itself a child subreaper.  A CMD that cannot be started: exit status 127 "
        "(not found) or 126, as a shell.",
        epilog='In a Dockerfile: ENTRYPOINT ["fdchannel", "run", "--"]; then '
        "'kill -HUP 1' or 'fdchannel upgrade CONTROL-SOCKET' in the container upgrades.  "
        "See docs/containers.md.",
    )
    run.add_argument(
        "--grace",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="once the main process exited, what is left has this long between SIGTERM "
        "and SIGKILL (10)",
    )
    run.add_argument("--quiet", action="store_true", help="only say what went wrong (on stderr)")
    run.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def _add_serve(commands: argparse._SubParsersAction[_Parser], common: _Parser) -> None:
    serve = commands.add_parser(
        "serve",
        parents=[common],
        usage=f"{PROG} serve [-h] [--json] [--debug] --listen NAME=ADDRESS [--listen ...] "
        "--pidfile PATH --control PATH [--ready CHECK] [--ready-timeout SECONDS] "
        "[--drain-timeout SECONDS] [--probation SECONDS] [--stop-signal NAME] [--forward NAME] "
        "[--socket-activation {auto,always,never}] [--quiet] "
        "-- SERVER-ARGV...",
        help="run a server that takes listening descriptors (gunicorn, LISTEN_FDS) upgradably",
        description="Be one generation of an upgradable server: take the listeners (from the "
        "previous generation, systemd, or bound here), start SERVER-ARGV with them at "
        "descriptors 3, 4, ... ({NAME} in SERVER-ARGV is a socket's number; LISTEN_FDS, "
        "LISTEN_FDNAMES and LISTEN_PID are set when SERVER-ARGV names none, or with "
        "--socket-activation always), wait for its --ready check, then serve.  SIGHUP or "
        "'fdchannel upgrade PIDFILE|CONTROL' starts the next generation with the same command "
        "line, and a fresh server; the old server is stopped once the new one passed its "
        "check.  SIGTERM, SIGINT and SIGQUIT are passed to the server (SIGHUP never is); "
        "the exit status is the server's.",
        epilog="CHECK: tcp:HOST:PORT, unix:PATH, http://HOST:PORT/PATH, cmd:COMMAND, "
        "alive:SECONDS (the default, alive:1); {NAME} names a socket, and {ready} the "
        "generation's private one, which only its own server answers on: "
        "--ready 'http://{ready}/healthz'.  A check on a shared socket fails every upgrade.  "
        "E.g. fdchannel serve --listen http=tcp:0.0.0.0:8080 --pidfile /run/app/app.pid "
        "--control /run/app/app.ctl --ready 'http://{ready}/healthz' -- gunicorn app:app "
        "--no-control-socket.  See docs/serve.md.",
    )
    serve.add_argument(
        "--listen",
        action="append",
        required=True,
        metavar="NAME=ADDRESS",
        help="a shared listener: NAME for {NAME} and LISTEN_FDNAMES, ADDRESS as tcp:HOST:PORT "
        "or unix:PATH (repeat for more)",
    )
    serve.add_argument("--pidfile", required=True, metavar="PATH", help="names the generation")
    serve.add_argument(
        "--control", required=True, metavar="PATH", help="the control socket (fdchannel upgrade)"
    )
    serve.add_argument("--ready", metavar="CHECK", help="when the server is ready (alive:1)")
    serve.add_argument(
        "--ready-timeout",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="how long the check may take to pass (30)",
    )
    serve.add_argument(
        "--drain-timeout",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="how long a server told to stop has before SIGKILL (30)",
    )
    serve.add_argument(
        "--probation",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="watch the new generation this long after the switch: if it exits, roll back "
        "(a fresh server, started here, serves again) (0: none)",
    )
    serve.add_argument(
        "--stop-signal",
        type=_signal_name,
        default="TERM",
        metavar="NAME",
        help="what tells a replaced server to stop, gracefully (TERM)",
    )
    serve.add_argument(
        "--forward",
        type=_signal_name,
        action="append",
        default=[],
        metavar="NAME",
        help="pass this signal on to the server too, e.g. USR1 (repeat for more)",
    )
    serve.add_argument(
        "--socket-activation",
        choices=("auto", "always", "never"),
        default="auto",
        help="set LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID: when SERVER-ARGV names no socket "
        "(auto), always, or never",
    )
    serve.add_argument(
        "--loop", choices=("asyncio", "uvloop", "trio"), default="asyncio", help=argparse.SUPPRESS
    )
    serve.add_argument("--quiet", action="store_true", help="only say what went wrong")
    serve.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = _Parser(
        prog=PROG,
        description="Hand file descriptors and state from one process to another, "
        "as QEMU's cpr-transfer does.",
        epilog=f"'{PROG} COMMAND --help' for each command.  Exit status: 0 ok, "
        "1 a problem was found, 2 usage error.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="name", metavar="COMMAND", parser_class=_Parser)
    common = _common()
    for add in (
        _add_probe,
        _add_relay,
        _add_send,
        _add_recv,
        _add_upgrade,
        _add_run,
        _add_serve,
        _add_qemu_update,
    ):
        add(commands, common)
    return parser


def _version() -> str:
    return str(sys.modules["fdchannel"].__dict__.get("__version__", "unknown"))


def _parse(args: list[str]) -> argparse.Namespace:
    parser = build_parser()
    # The command is the first word that is not an option (the top level has no
    # option that takes a value).
    name = next((arg for arg in args if not arg.startswith("-")), None)
    if "--" in args and (
        name in ("recv", "qemu-update") or (name == "probe" and _flag(args, "--cpr-exec"))
    ):
        # The command may hold options and "--" of its own: keep it verbatim.
        cut = args.index("--")
        options = parser.parse_args(args[:cut])
        options.command = args[cut + 1 :]
        return _probe_cpr_exec(options) if name == "probe" else options
    if name == "upgrade" and "--command" in args:
        # Every word after --command is the command, options and "--" included.
        cut = args.index("--command")
        options = parser.parse_args(args[:cut])
        options.command = args[cut + 1 :]
        return options
    options = parser.parse_args(args)
    if options.name is None:
        commands = "probe, relay, send, recv, upgrade, run, serve or qemu-update"
        raise UsageError(f"a command is required: {commands} (see '{PROG} --help')")
    if options.name == "recv" and options.misplaced:
        raise UsageError(f"put the command after '--': {PROG} recv URI -- CMD", f"{PROG} recv")
    if options.name == "probe" and options.cpr_exec:
        return _probe_cpr_exec(options)
    return options


def _probe_cpr_exec(options: argparse.Namespace) -> argparse.Namespace:
    """``probe --cpr-exec [-- CMD]``: checked here, and run by its own module."""
    others = [
        flag
        for flag, given in (
            ("--listen", options.listen),
            ("--mode", options.mode is not None),
            ("--self-test/--no-self-test", options.self_test is not None),
            ("--no-ack", options.no_ack),
            ("--timeout", options.timeout is not None),
        )
        if given
    ]
    if others:
        raise UsageError(f"{others[0]} does not apply to probe --cpr-exec", f"{PROG} probe")
    if options.channels:
        raise UsageError(
            f"probe --cpr-exec takes no URI; put the command after '--': "
            f"{PROG} probe --cpr-exec -- CMD",
            f"{PROG} probe",
        )
    if getattr(options, "command", None) == []:
        raise UsageError(f"a command is needed after '--': {PROG} probe --cpr-exec -- CMD")
    options.command = getattr(options, "command", None) or []
    options.name = "cpr_exec"  # _command runs fdchannel.cli.cpr_exec
    return options


def _command(options: argparse.Namespace) -> _Command:
    name = "listen" if options.name == "probe" and options.listen else options.name
    name = name.replace("-", "_")  # qemu-update: fdchannel.cli.qemu_update
    module: _Command = importlib.import_module(f".{name}", __name__)
    return module


def _flag(args: list[str], flag: str) -> bool:
    """Whether ``flag`` was given before any ``--`` or ``--command`` (what follows is
    a command's own; so also when parsing failed)."""
    ends = [args.index(end) for end in ("--", "--command") if end in args]
    return flag in args[: min(ends, default=len(args))]


def _describe(exc: BaseException) -> tuple[int, str]:
    """Exit status and one line for an error."""
    if isinstance(exc, CliError):
        return exc.exit_status, str(exc)
    if isinstance(exc, AddressError):
        return USAGE, str(exc)
    if isinstance(exc, FdChannelError | TimeoutError | ValueError):
        return PROBLEM, str(exc) or type(exc).__name__
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename is not None else ""
        return PROBLEM, f"{exc.strerror or exc}{where}"
    if type(exc).__module__.split(".")[0] == "anyio":
        # BrokenResourceError and friends: the peer went away under us.
        return PROBLEM, f"{type(exc).__name__}: {exc or 'the connection broke'}"
    return PROBLEM, f"unexpected {type(exc).__name__}: {exc} (--debug shows where)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _flag(args, "--debug")
    out = Output(_flag(args, "--json"), PROG)
    try:
        options = _parse(args)
        return _command(options).run(options, out)
    except KeyboardInterrupt:
        out.write(sys.stderr, f"{PROG}: interrupted\n")
        return 130
    except BrokenPipeError:
        # Whoever read our output stopped (``| head``): not worth a message, and
        # the interpreter must not fail again flushing stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return PROBLEM
    except Exception as exc:
        leaf = single(exc)
        status, message = _describe(leaf)
        if debug:
            import traceback  # only here: every import costs start-up time

            traceback.print_exception(exc)
        # One line, whatever the error held, and nothing a terminal acts on.
        message = printable(" ".join(message.split()))
        prog = leaf.prog if isinstance(leaf, CliError) and leaf.prog else PROG
        out.write(sys.stderr, f"{prog}: error: {message}\n")
        if out.json:
            error = {"type": type(leaf).__name__, "message": message, "exit_status": status}
            out.result({"ok": False, "error": error}, "")
        return status
