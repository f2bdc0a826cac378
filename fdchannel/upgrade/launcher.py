"""``fdchannel serve``: one generation of a server that takes listening descriptors.

Each generation is one process running an ``Upgrader``.  It takes its
listeners from ``Upgrader.listen`` (the previous generation's, systemd's,
or bound), then starts the server's command line as its child with those
sockets at descriptors 3, 4, ... (``{NAME}`` in the command line is the
socket's number; ``LISTEN_FDS``, ``LISTEN_FDNAMES`` and ``LISTEN_PID`` tell
servers that read them), waits for the check the user named, and only then
calls ``ready()``: in a new generation that is the commit.  An upgrade
starts a fresh ``fdchannel serve`` with the same command line, which starts
a fresh server: the two servers share the sockets until the old one is told
to stop.

Readiness is judged on a socket of this generation alone (``{ready}``, a
unix socket in a private directory): both servers accept on the shared
sockets, so a check there may be answered by the old one.  A check that
reaches a shared socket is refused in every generation but the first.

With a probation, the old generation stops its server at the commit all
the same (a server such as gunicorn cannot stop accepting and go on), but
stays the main process until the probation ends; if the new generation
exits meanwhile (a rollback), it starts a fresh server with its own command
line on the sockets it kept, runs its check, and serves again.

Signals: SIGTERM, SIGINT, SIGQUIT (and those named with ``forward``) are
passed to the server; the generation then exits with the server's status,
giving it ``drain_timeout`` before SIGKILL.  SIGHUP is the Upgrader's: it
asks for an upgrade and is never passed on.  Once replaced, the server gets
``stop_signal`` and ``drain_timeout``.  See docs/serve.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import anyio
import anyio.abc

from ..errors import UpgradeError
from ..unix_sockets import BACKLOG
from . import lineage
from .launch_checks import (
    NAME,
    READY,
    Check,
    Endpoint,
    attempt,
    names_in,
    parse_check,
    shared_with_old,
    substitute,
)
from .launch_process import SD_LISTEN_FDS_START, ServerProcess, StderrTail, exit_code, start_server
from .upgrader import Upgrader

__all__ = [
    "DEFAULT_CHECK",
    "STOP_SIGNALS",
    "Plan",
    "ServeError",
    "ServeOptions",
    "plan",
    "serve",
]

log = logging.getLogger("fdchannel.upgrade.serve")

#: Signals that stop the server (passed on, then the drain timeout, then SIGKILL).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
#: Without --ready: the server counts as ready once it has run this long.
DEFAULT_CHECK = "alive:1"
#: How often a check is tried, and the longest one attempt may take.
POLL = 0.1
ATTEMPT_TIMEOUT = 5.0
#: The old generation waits this much longer than the new one's check and drain.
MARGIN = 10.0
#: What describes the generation alone: never passed to its server.
_NOT_PASSED = (b"LISTEN_FDS", b"LISTEN_PID", b"LISTEN_FDNAMES", b"NOTIFY_SOCKET")
_SUN_PATH_MAX = 107

SocketActivation = Literal["auto", "always", "never"]


class ServeError(UpgradeError):
    """This generation could not serve: why, with the server's last lines on stderr."""


@dataclass(frozen=True)
class ServeOptions:
    """What ``fdchannel serve`` was told."""

    #: The server's command line, ``{NAME}`` not replaced yet.
    command: tuple[str, ...]
    #: (name, address) of each shared listener, in order: descriptors 3, 4, ...
    listen: tuple[tuple[str, str], ...]
    pidfile: Path | None = None
    control: Path | None = None
    ready: Check = field(default_factory=lambda: parse_check(DEFAULT_CHECK))
    ready_timeout: float = 30.0
    drain_timeout: float = 30.0
    #: Seconds the old generation watches the new one after the commit (0: none).
    probation: float = 0.0
    stop_signal: signal.Signals = signal.SIGTERM
    #: Passed on to the server beyond STOP_SIGNALS (SIGHUP never is).
    forward: tuple[signal.Signals, ...] = ()
    #: Set LISTEN_FDS and friends: always, never, or when the command line names no socket.
    socket_activation: SocketActivation = "auto"


@dataclass(frozen=True)
class Plan:
    """Where each socket goes in the server, and how it is told."""

    #: Every socket's name, in descriptor order (from 3); ``ready`` last if used.
    names: tuple[str, ...]
    #: The command line with ``{NAME}`` replaced by descriptor numbers.
    argv: tuple[str, ...]
    #: Whether LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID are set.
    listen_fds: bool

    @property
    def private(self) -> bool:
        """Whether the generation makes its private ``ready`` socket."""
        return READY in self.names


def plan(options: ServeOptions) -> Plan:
    """Check ``options`` and place the sockets; ValueError says what is wrong."""
    if not options.command:
        raise ValueError("a server command is needed after '--'")
    if not options.listen:
        raise ValueError("at least one --listen NAME=ADDRESS is needed")
    names = [name for name, _ in options.listen]
    for name in names:
        if not NAME.fullmatch(name):
            raise ValueError(
                f"--listen name {name!r}: a letter or '_', then letters, digits, '_' or '-'"
            )
        if name == READY:
            raise ValueError(f"--listen name {READY!r} is the generation's private socket's")
        if names.count(name) > 1:
            raise ValueError(f"--listen name {name!r} is given twice")
    check = options.ready
    unknown = names_in(check) - {*names, READY}
    if unknown:
        raise ValueError(
            f"the check {check.text!r} names {', '.join(sorted(unknown))}, which is neither "
            f"a --listen name nor {READY!r}"
        )
    if check.kind in ("tcp", "unix") and check.target is not None and check.target.name:
        raise ValueError(
            f"the check {check.text!r} would pass at once: the launcher made that socket, "
            "listening, and the kernel completes a connection to it before the server "
            "accepts anything.  Ask the server itself: http://{NAME}/PATH or cmd:COMMAND"
        )
    placeholders = {f"{{{name}}}" for name in (*names, READY)}
    named = {p[1:-1] for word in options.command for p in placeholders if p in word}
    if READY in names_in(check) or READY in named:
        names.append(READY)
    listen_fds = options.socket_activation == "always" or (
        options.socket_activation == "auto" and not named
    )
    if not listen_fds:
        if not named:
            raise ValueError(
                "without socket activation the server must be told its sockets: put "
                "{NAME} in its command line (e.g. --bind fd://{http})"
            )
        if READY in names and READY not in named:
            raise ValueError(
                f"the check {check.text!r} uses the private socket, which the server is "
                "not told of: put {ready} in its command line too (e.g. --bind fd://{ready})"
            )
    if check.kind == "alive" and check.seconds >= options.ready_timeout:
        raise ValueError(f"{check.text!r} does not fit in --ready-timeout {options.ready_timeout}")
    numbers = {name: str(slot) for slot, name in enumerate(names, SD_LISTEN_FDS_START)}
    argv = tuple(substitute(word, numbers) for word in options.command)
    return Plan(tuple(names), argv, listen_fds)


def shared_explanation(check: Check, name: str) -> str:
    """Why a check on a shared socket proves nothing, and what to check instead."""
    return (
        f"the check {check.text!r} reaches {name!r}, which this generation shares with "
        "the one it replaces: both servers accept on it, so the old one may answer, and "
        "the check proves nothing about the new one.  Check the generation's private "
        "socket instead: --ready 'http://{ready}/PATH' (the server is given it as {ready}, "
        "or through LISTEN_FDS)"
    )


async def serve(options: ServeOptions) -> int:
    """Run one generation; returns the exit status (the server's, once it served).

    ServeError if it could not serve (the check failed, the server exited
    first, or the check is refused): in a new generation that fails the
    upgrade with that reason, and the old generation serves on.
    """
    placed = plan(options)
    upgrader = Upgrader(
        pidfile=options.pidfile,
        control=options.control,
        ready_timeout=options.ready_timeout + options.drain_timeout + MARGIN,
        probation=options.probation,
        # A backstop: the server was stopped within the drain timeout (then SIGKILL).
        drain_timeout=options.drain_timeout + MARGIN,
    )
    async with upgrader as up:
        return await _Generation(options, placed, up).run()


class _Generation:
    def __init__(self, options: ServeOptions, placed: Plan, up: Upgrader) -> None:
        self.options = options
        self.plan = placed
        self.up = up
        self.server: ServerProcess | None = None
        self.signalled: list[int] = []
        self.stop_asked = anyio.Event()

    async def run(self) -> int:
        options = self.options
        for name, address in options.listen:
            async with await self.up.listen(name, address):
                pass  # the upgrader holds the socket; the server accepts, not we
        held = self.up.listening()
        bound = {name: _endpoint(held[name]) for name, _ in options.listen}
        reached = shared_with_old(options.ready, bound)
        if reached is not None:
            why = shared_explanation(options.ready, reached)
            if self.up.inherited:
                raise ServeError(f"refused: {why}")
            log.warning("generation 0 serves, but upgrades will fail: %s", why)
        known = {name: _reachable(endpoint) for name, endpoint in bound.items()}
        async with anyio.create_task_group() as tasks:
            await tasks.start(self._forward)
            try:
                # A server, then (after a rollback on probation) a fresh one, and so on.
                again = False
                while True:
                    status = await self._with_server(held, known, again)
                    if status is not None:
                        return status
                    again = True
            finally:
                tasks.cancel_scope.cancel()
        raise AssertionError("unreachable")  # pragma: no cover (mypy: the task group)

    async def _with_server(
        self, held: Mapping[str, int], shared: Mapping[str, Endpoint], again: bool
    ) -> int | None:
        """One server's life: start it, check it, serve; its exit status, or None to
        start a fresh one (this generation serves again after a rollback)."""
        options = self.options
        known = dict(shared)
        with _private_socket(options.control, self.plan.private) as private:
            fds = [held[name] for name in self.plan.names if name != READY]
            if private is not None:
                fds.append(private.fileno())
                known[READY] = Endpoint(path=private.getsockname())
            async with anyio.create_task_group() as relays:
                server, tail = self._start(fds)
                if private is not None:
                    private.close()  # the server's copy is the one: gone with it
                relays.start_soon(tail.relay)
                try:
                    return await self._serve(server, tail, known, again)
                finally:
                    with anyio.CancelScope(shield=True):
                        if not server.exited():
                            await self._stop(server, options.stop_signal, "stopping")
                        with anyio.move_on_after(1):
                            await tail.closed.wait()
                        relays.cancel_scope.cancel()
                    self.server = None
                    server.close()
                    tail.close()
        raise AssertionError("unreachable")  # pragma: no cover (mypy: the task group)

    def _start(self, fds: Sequence[int]) -> tuple[ServerProcess, StderrTail]:
        options, placed = self.options, self.plan
        program = shutil.which(placed.argv[0])
        if program is None:
            raise ServeError(f"cannot run {placed.argv[0]!r}: not found (PATH is searched)")
        env = {k: v for k, v in os.environb.items() if k not in _NOT_PASSED}
        env.pop(os.fsencode(lineage.ENV), None)
        if placed.listen_fds:
            env[b"LISTEN_FDS"] = str(len(fds)).encode()
            env[b"LISTEN_FDNAMES"] = ":".join(placed.names).encode()
        read, write = os.pipe2(os.O_CLOEXEC)
        try:
            server = start_server(
                program,
                placed.argv,
                env,
                fds,
                listen_pid=placed.listen_fds,
                death_signal=options.stop_signal,
                stderr=write,
            )
        except OSError as exc:
            os.close(read)
            raise ServeError(f"cannot run {program}: {exc.strerror or exc}") from exc
        finally:
            os.close(write)
        self.server = server
        for signum in self.signalled:  # arrived while it was starting
            server.signal(signum)
        self.signalled.clear()
        slots = ", ".join(
            f"{name}={slot}" for slot, name in enumerate(placed.names, SD_LISTEN_FDS_START)
        )
        how = "LISTEN_FDS" if placed.listen_fds else "its command line"
        log.info(
            "generation %d: started the server, pid %d (%s; told by %s)",
            self.up.generation,
            server.pid,
            slots,
            how,
        )
        return server, StderrTail(read)

    async def _serve(
        self, server: ServerProcess, tail: StderrTail, known: Mapping[str, Endpoint], again: bool
    ) -> int | None:
        """Check, be ready (the first time), serve until replaced or stopped; the
        server's status, or None to serve again with a fresh one (a rollback)."""
        options = self.options
        if not await self._wait_ready(server, tail, known):
            assert server.status is not None
            log.info("generation %d: the server stopped before it was ready", self.up.generation)
            return exit_code(server.status)
        if again:
            log.info("generation %d: pid %d serves again", self.up.generation, server.pid)
        else:
            (await self.up.ready()).close()
            log.info("generation %d: ready; pid %d serves", self.up.generation, server.pid)
        what = await _first(
            replaced=self.up.wait_replaced, exited=server.wait, asked=self.stop_asked.wait
        )
        if what == "replaced":
            # gunicorn cannot stop accepting and go on: with a probation too, the
            # server stops at the commit, and a rollback starts a fresh one.
            await self._stop(server, options.stop_signal, "replaced")
            if self.up.probation > 0 and not await self._settled():
                return None
        elif what == "asked":
            await self._stop(server, None, "stopping on a signal")
        else:
            log.warning(
                "generation %d: the server exited while serving (%s)",
                self.up.generation,
                server.describe(),
            )
        assert server.status is not None
        return exit_code(server.status)

    async def _settled(self) -> bool:
        """The probation's end: True if the replacement stuck (or a stop signal came
        meanwhile), False to serve again."""
        log.info("generation %d: waiting for the end of the probation", self.up.generation)
        if await self.up.settled() or self.stop_asked.is_set():
            return True
        log.warning("generation %d: rolled back: starting the server again", self.up.generation)
        return False

    async def _stop(self, server: ServerProcess, signum: int | None, why: str) -> None:
        """Stop the server (``signum``, or the one already passed on), within the drain timeout."""
        timeout = self.options.drain_timeout
        if signum is not None:
            name = signal.Signals(signum).name
            log.info("generation %d: %s: %s to the server", self.up.generation, why, name)
            server.signal(signum)
        if await server.wait(timeout):
            log.info("generation %d: the server (%s)", self.up.generation, server.describe())
            return
        log.warning(
            "generation %d: the server did not stop within %g s: SIGKILL to its process group",
            self.up.generation,
            timeout,
        )
        await server.kill()

    async def _wait_ready(
        self, server: ServerProcess, tail: StderrTail, known: Mapping[str, Endpoint]
    ) -> bool:
        """True once the check passes; False if a signal stopped the server first.
        ServeError if it exited first or the check did not pass in time."""
        options = self.options
        check = options.ready
        last: list[str] = []

        async def checking() -> None:
            if check.kind == "alive":
                await anyio.sleep(check.seconds)
                return
            while True:
                said = await attempt(check, known, ATTEMPT_TIMEOUT)
                if said is None:
                    return
                last[:] = [said]
                await anyio.sleep(POLL)

        what: str | None = None
        with anyio.move_on_after(options.ready_timeout):
            what = await _first(ready=checking, exited=server.wait)
        if what == "ready" and not server.exited():
            return True
        if server.exited():
            if self.stop_asked.is_set():
                return False
            await _settle(tail)
            raise ServeError(_with_tail(f"the server ({server.describe()}) before ready", tail))
        said = f": {check.text} said: {last[0]}" if last else ""
        raise ServeError(
            _with_tail(
                f"the server (pid {server.pid}) was not ready within "
                f"{options.ready_timeout:g} s{said}",
                tail,
            )
        )

    async def _forward(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        forwarded = tuple(dict.fromkeys((*STOP_SIGNALS, *self.options.forward)))
        with anyio.open_signal_receiver(*forwarded) as signals:
            task_status.started()
            async for signum in signals:
                self.signalled.append(signum)
                if self.server is not None:
                    self.server.signal(signum)
                if signum in STOP_SIGNALS:
                    self.stop_asked.set()


async def _first(**waits: Callable[[], Awaitable[object]]) -> str:
    """The name of whichever of ``waits`` returns first; the others are cancelled."""
    done: list[str] = []
    async with anyio.create_task_group() as tasks:

        async def run(name: str, wait: Callable[[], Awaitable[object]]) -> None:
            await wait()
            done.append(name)
            tasks.cancel_scope.cancel()

        for name, wait in waits.items():
            tasks.start_soon(run, name, wait)
    return done[0] if done else ""


async def _settle(tail: StderrTail) -> None:
    """Let the relay read what the server wrote before it exited (bounded)."""
    with anyio.move_on_after(0.5):
        await tail.closed.wait()


def _with_tail(text: str, tail: StderrTail) -> str:
    lines = tail.last_lines()
    return f"{text}; its last lines on stderr: {' | '.join(lines)}" if lines else text


def _endpoint(fd: int) -> Endpoint:
    """What ``fd`` (a listening socket) is bound to."""
    with socket.socket(fileno=os.dup(fd)) as sock:
        local = sock.getsockname()
        family = sock.family
    if family == socket.AF_UNIX:
        return Endpoint(path=os.fsdecode(local) if local else "")
    if family in (socket.AF_INET, socket.AF_INET6):
        return Endpoint(host=local[0], port=local[1])
    return Endpoint()


def _reachable(endpoint: Endpoint) -> Endpoint:
    """Where a client on this host reaches a socket bound to a wildcard address."""
    if endpoint.host == "0.0.0.0":
        return Endpoint(host="127.0.0.1", port=endpoint.port)
    if endpoint.host == "::":
        return Endpoint(host="::1", port=endpoint.port)
    return endpoint


@contextlib.contextmanager
def _private_socket(control: Path | None, wanted: bool) -> Iterator[socket.socket | None]:
    """The generation's ``ready`` socket, listening in a new directory only we may enter.

    Made beside the control socket (a directory of the service's own), else
    in the temporary directory; removed with everything in it on the way out.
    """
    if not wanted:
        yield None
        return
    where = str(control.parent) if control is not None else None
    directory = tempfile.mkdtemp(prefix=".fdchannel-serve-", dir=where)  # mode 0700
    try:
        path = os.path.join(directory, READY)
        if len(os.fsencode(path)) > _SUN_PATH_MAX:
            raise ServeError(
                f"the private socket's path {path!r} is longer than a unix socket's "
                f"{_SUN_PATH_MAX} bytes: put the control socket in a shorter directory"
            )
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            sock.listen(BACKLOG)
            yield sock
        finally:
            sock.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
