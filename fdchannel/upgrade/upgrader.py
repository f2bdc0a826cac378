"""The upgrader: one object per generation of a server, handing its listeners on.

A generation opens its listeners through ``listen(name, address)``: taken
over from the previous generation when there is one (or from systemd's
socket activation), bound otherwise.  ``ready()`` is its health check.
``upgrade()`` (or SIGHUP, or a request on the control socket) starts the
next generation and hands it every named listener over a cpr channel; the
old generation stops accepting only once the new one is ready and has
acknowledged what was handed over, then drains and exits.  Any failure
before that point kills the new generation and leaves the old one serving.
See docs/upgrade.md for the sequence.

With a probation, the old generation stops accepting at the commit but
keeps its listeners and stays the main process: if the new generation exits
within the probation, the old one serves again (a rollback after the
switch); only once it ends does the new generation become the main process.

This module is the generation's lifecycle; the handshake between two
generations is ``handshake.py`` (its table) and ``sides.py`` (its I/O), the
control socket ``control_server.py``, the listeners' origins ``sockets.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import anyio
import anyio.abc

from ..address import Address, TcpAddress, UnixAddress
from ..credentials import CredentialPolicy, same_user_or_root
from ..errors import UpgradeBusy, UpgradeError, UpgradeFailed
from ..state import FdState
from ..text import printable
from ..transports import Listener
from ..transports.datagram import DatagramListener
from ..unix_sockets import BACKLOG
from . import connections, files, lineage as lineage_env, pidfile as pidfiles, sockets, systemd
from .addresses import DatagramAddress, listen_address
from .control_server import ControlServer, Interim
from .handshake import NEW_STEPS, OLD_STEPS
from .history import History, status_document, timestamp
from .reasons import GenerationFailed, reason
from .release import Release, Variables, logical_cwd, release_from
from .sides import NOT_INHERITED, Handover, NewSide, OldSide, Pause, Resume
from .spawn import Child, exit_text

__all__ = [
    "CONTROL",
    "NEW_STEPS",
    "OLD_STEPS",
    "UpgradeResult",
    "UpgradeRolledBack",
    "Upgrader",
    "default_command",
]

log = logging.getLogger("fdchannel.upgrade")

#: The name the control socket travels under between generations.
CONTROL = "fdchannel.upgrade.control"
#: How long a new generation on probation waits for the old one's word past the
#: probation itself, before it takes the old one for gone.
_CONFIRM_GRACE = 60.0
#: How long a status request waits for the old generation's word once it is due.
_SETTLED_WAIT = 5.0


def default_command() -> list[str]:
    """This program's own command line: the interpreter, its options, the script."""
    return [sys.executable, *sys.orig_argv[1:]]


@dataclass(frozen=True)
class UpgradeResult:
    """A finished upgrade: who serves now and how long it took."""

    pid: int
    generation: int
    #: From the request to the commit (the handover acknowledged).
    seconds: float
    #: From ``pause()`` (the old generation stops serving what it hands over)
    #: to the new one acknowledging it: the pause of whatever was handed over.
    handover_seconds: float
    #: Descriptors handed over after "ready" (connections, memory).
    handed: int
    #: What went wrong after the commit (too late to roll back: the new
    #: generation serves), e.g. the pidfile could not be rewritten.
    warnings: tuple[str, ...] = ()
    #: The probation the new generation went through after the commit (0: none).
    probation: float = 0.0
    #: What it was started as: its command line and directory, resolved.
    command: tuple[str, ...] = ()
    cwd: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": True,
            "pid": self.pid,
            "generation": self.generation,
            "seconds": self.seconds,
            "handover_seconds": self.handover_seconds,
            "handed": self.handed,
            "warnings": list(self.warnings),
            "probation": self.probation,
            "command": list(self.command),
            "cwd": self.cwd,
        }


class UpgradeRolledBack(GenerationFailed):
    """The new generation exited during its probation: the old one serves again."""

    def __init__(self, pid: int, status: int | None, after: float, stderr: Sequence[str]) -> None:
        when = f", {after * 1000:.0f} ms after ready()"
        exited = GenerationFailed.exited(pid, status, when, stderr)
        super().__init__(f"rolled back: {exited}", pid, status, stderr)
        #: Its wait status in words ("exit status 3", "killed by SIGSEGV").
        self.status = exit_text(status)
        #: Seconds from the commit (its ``ready()`` returning) to its exit.
        self.after = after

    def details(self) -> dict[str, Any]:
        return {**super().details(), "rolled_back": True, "after_ms": round(self.after * 1000)}

    def as_json(self) -> dict[str, Any]:
        return {"ok": False, "error": str(self), **self.details()}


class _Trial:
    """One replacement, from its commit to the end of its probation (at once without)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.done = anyio.Event()
        self.result: UpgradeResult | None = None
        self.error: UpgradeRolledBack | None = None
        #: The outcome as recorded (and answered on the control socket).
        self.recorded: dict[str, Any] = {}

    @property
    def stuck(self) -> bool:
        return self.result is not None

    def end(self, outcome: UpgradeResult | UpgradeRolledBack, recorded: dict[str, Any]) -> None:
        self.recorded = recorded
        if isinstance(outcome, UpgradeResult):
            self.result = outcome
        else:
            self.error = outcome
        self.done.set()

    async def outcome(self) -> UpgradeResult:
        await self.done.wait()
        if self.result is None:
            assert self.error is not None
            raise self.error
        return self.result


class Upgrader(anyio.abc.AsyncResource):
    """``async with Upgrader() as up``: listen, be ready, be upgraded.

    ``command`` starts the next generation, in ``cwd`` with ``env``'s changes
    to the environment (a value sets a variable, None removes it).  By
    default: the command line and directory this generation was started
    from, as given (through a ``current`` symlink, maybe: they are resolved
    anew at each upgrade; see ``release.py``).  ``pidfile`` is rewritten to
    name the serving generation (its pid and start time), and removed by the
    last one when it exits; ``control`` is a unix socket path taking
    ``upgrade`` requests (see ``fdchannel upgrade``; ``control_timeout`` and
    ``control_clients`` bound how long a client may take and how many are
    answered at once).  Keep both in a directory of their own, such as
    ``/run/APP/``: one that others may write to is warned about.
    ``trigger`` is the signal that asks for an upgrade (None: none).
    ``pause`` (optional) runs in the old generation once the new one is
    ready: it stops serving what it hands over and
    returns that as a state (descriptors and metadata) which the new
    generation's ``ready()`` returns; ``resume`` runs if that handover is
    not acknowledged.  ``progress`` hears each step's name (OLD_STEPS,
    NEW_STEPS), for logging and tests.

    ``probation`` (seconds; 0: none) is how long the old generation watches
    the new one after the commit: it stops accepting (``wait_replaced()``
    returns) but keeps its listeners and stays the main process (pidfile,
    systemd's ``MAINPID``); if the new generation exits meanwhile, the
    upgrade is rolled back (``settled()`` returns False: accept again), else
    the new one becomes the main process (``settled()`` returns True).
    ``upgrade()`` returns (or raises ``UpgradeRolledBack``) once it is over.

    ``drain_timeout`` (seconds; None: no limit) bounds the drain: that long
    after it was replaced (after the probation), a generation still running
    counts the connections it still holds (those accepted on its listeners),
    logs and records them as cut (beside the pidfile), and exits with status 0.
    """

    def __init__(
        self,
        *,
        command: Sequence[str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        env: Variables | None = None,
        pidfile: str | os.PathLike[str] | None = None,
        control: str | os.PathLike[str] | None = None,
        trigger: signal.Signals | None = signal.SIGHUP,
        pause: Pause | None = None,
        resume: Resume | None = None,
        start_timeout: float = 30.0,
        ready_timeout: float = 30.0,
        handover_timeout: float = 10.0,
        probation: float = 0.0,
        drain_timeout: float | None = None,
        progress: Callable[[str], object] | None = None,
    ) -> None:
        if drain_timeout is not None and not drain_timeout >= 0:
            raise UpgradeError(f"drain_timeout is a number of seconds, not {drain_timeout!r}")
        if not 0 <= probation < float("inf"):
            raise UpgradeError(f"probation is a number of seconds, not {probation!r}")
        checked_command, self.cwd, self.env = release_from(command, cwd, env)
        self.command = list(checked_command) if checked_command is not None else None
        #: Where this process started, as it was named ($PWD, symlinks and all).
        self._started_in = logical_cwd()
        self.pidfile = Path(pidfile) if pidfile is not None else None
        self.control = Path(control) if control is not None else None
        self.trigger = trigger
        self.pause = pause
        self.resume = resume
        self.start_timeout = start_timeout
        self.ready_timeout = ready_timeout
        self.handover_timeout = handover_timeout
        self.drain_timeout = drain_timeout
        self.probation = probation
        self._progress = progress or (lambda step: None)
        #: 0 for a generation nobody handed anything to, then 1, 2, ...
        self.generation = 0
        self._new: NewSide | None = None  # our end of the handshake, if inherited
        self._received: dict[str, int] = {}  # handed to us, not claimed yet
        self._held: dict[str, int] = {}  # ours to hand on, by name
        self._given: list[Listener] = []  # returned by listen(), closed with us
        self._phase = "new"  # entered, ready, upgrading, probation, replaced, closed
        self._successor: int | None = None
        self._replaced: anyio.Event | None = None
        self._trial: _Trial | None = None  # the last replacement, settled or not
        self._on_probation = False  # a new generation the old one still watches
        #: A new generation on probation: set once the old one settled the upgrade (or
        #: went away), due by then (monotonic: the end of the probation).
        self._confirmed: anyio.Event | None = None
        self._confirm_due = 0.0
        #: The service's record of its upgrades, handed on (``history.py``).
        self.history = History()
        #: Who the pidfile names as the main process, (pid, generation): recorded with it.
        self._main = (os.getpid(), 0)
        self._tasks: anyio.abc.TaskGroup | None = None
        self._exit = contextlib.AsyncExitStack()
        self._control_listener: Listener | None = None
        self._control = ControlServer(
            self._upgrade_answer, lambda: self.generation, status=self.status
        )

    @property
    def control_timeout(self) -> float:
        """A control client has this long to send its request (and to take the answer)."""
        return self._control.timeout

    @control_timeout.setter
    def control_timeout(self, value: float) -> None:
        self._control.timeout = value

    @property
    def control_clients(self) -> int:
        """Control clients answered at once; one more is refused."""
        return self._control.clients

    @control_clients.setter
    def control_clients(self, value: int) -> None:
        self._control.clients = value

    # ------------------------------------------------------------------
    # Entering: inherit what the previous generation handed over.

    @property
    def inherited(self) -> bool:
        """Whether a previous generation started this one."""
        return self._new is not None

    @property
    def replaced(self) -> bool:
        """Whether a new generation has taken over (maybe still on probation): stop
        accepting, drain, exit."""
        return self._phase in ("probation", "replaced")

    async def __aenter__(self) -> Upgrader:
        if self._phase != "new":
            raise UpgradeError("an Upgrader is entered once")
        self._phase = "entered"
        self._replaced = anyio.Event()
        for path in (self.pidfile, self.control):
            if path is not None:
                files.warn_if_shared(path)
        try:
            lineage = lineage_env.take()
            if lineage is not None:
                await self._inherit(lineage)
            self._tasks = await self._exit.enter_async_context(anyio.create_task_group())
            if self.trigger is not None:
                await self._tasks.start(self._watch_signal, self.trigger)
        except BaseException:
            await self._close(failed=None)
            raise
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        error = exc_info[1]
        stranded = await self._close(failed=None if error is None else reason(error))
        if stranded is not None and error is None:
            raise stranded

    async def aclose(self) -> None:
        stranded = await self._close(failed=None)
        if stranded is not None:
            raise stranded

    async def _inherit(self, lineage: lineage_env.Lineage) -> None:
        self._new = NewSide(lineage, self._progress)
        self.generation = lineage.generation
        self._received.update(await self._new.inherit(self.start_timeout))
        self.history = History.from_json(self._new.history) or History()
        self._main = (lineage.parent, self.generation - 1)  # until the upgrade is settled
        log.info(
            "generation %d: took over %s from pid %d",
            self.generation,
            ", ".join(self._received) or "nothing",
            lineage.parent,
        )

    # ------------------------------------------------------------------
    # Listening.

    async def listen(
        self,
        name: str,
        address: str | Address | DatagramAddress,
        *,
        policy: CredentialPolicy | None = same_user_or_root,
        mode: int = 0o600,
        backlog: int = BACKLOG,
    ) -> Listener:
        """A listener for ``name``: the previous generation's, systemd's, or a new one.

        ``address`` is in the upgrade grammar (``fdchannel.upgrade.addresses``:
        tcp:, udp:, unix:, unixgram:, fd:).  Each call returns a new Listener
        over its own duplicate: closing it stops this generation accepting;
        the socket itself lives on while the upgrader (or the next generation)
        holds it.  Listeners still open when the upgrader closes are closed
        with it.  A datagram socket gives a DatagramListener (``receive``,
        ``send``; see ``listen_datagram``).  ``policy`` applies to unix
        sockets (peers of our uid or root by default; each datagram's sender
        on a datagram socket); ``mode`` to a socket file bound here,
        ``backlog`` to a stream listener bound here.
        """
        if self._phase not in ("entered", "ready"):
            raise UpgradeError(f"listen({name!r}) needs an entered, not replaced, Upgrader")
        parsed = listen_address(address)
        fd = self._held.get(name)
        if fd is None:
            fd = self._received.pop(name, None)
            if fd is not None and (was := sockets.moved(fd, parsed)) is not None:
                # The new version listens elsewhere: bind there (failing the upgrade if
                # it cannot); the old socket closes with the old generation.
                log.warning(
                    "generation %d: %s moved from %s to %s", self.generation, name, was, parsed
                )
                os.close(fd)
                fd = None
            if fd is None:
                fd = sockets.from_socket_activation(name, parsed)
            if fd is None:
                fd = await sockets.bind(parsed, mode=mode, backlog=backlog)
            self._held[name] = fd
        copy = os.dup(fd)
        try:
            listener = sockets.wrap(copy, policy=policy)
        except BaseException:
            os.close(copy)
            raise
        self._given.append(listener)
        return listener

    async def listen_datagram(
        self,
        name: str,
        address: str | Address | DatagramAddress,
        *,
        policy: CredentialPolicy | None = same_user_or_root,
        mode: int = 0o600,
    ) -> DatagramListener:
        """``listen`` for a datagram socket (``udp:``, ``unixgram:``, or ``fd:``
        naming one), typed as such; a stream address is refused."""
        parsed = listen_address(address)
        if isinstance(parsed, TcpAddress | UnixAddress):
            raise UpgradeError(
                f"listen_datagram({name!r}): {parsed} is a stream socket's address: use "
                "udp:HOST:PORT, unixgram:PATH or fd:N here, or listen() for a stream socket"
            )
        listener = await self.listen(name, parsed, policy=policy, mode=mode)
        if not isinstance(listener, DatagramListener):
            await listener.aclose()
            raise UpgradeError(
                f"listen_datagram({name!r}): {parsed} is no datagram socket: "
                "use listen() for a stream socket"
            )
        return listener

    def listening(self) -> dict[str, int]:
        """The descriptors held for each name (what the next generation gets)."""
        return dict(self._held)

    # ------------------------------------------------------------------
    # Ready: the health check.

    async def ready(self) -> FdState:
        """Say this generation is healthy and ready to serve.

        Start accepting once it returns: in a new generation that is the
        commit, and a generation killed before it must not have taken
        connections with it (the old one accepts until the commit).

        The first generation writes its pidfile (and starts the service's
        record of upgrades anew beside it) and tells systemd READY=1.
        A new generation tells the old one, which stops accepting and hands
        over what its ``pause`` returns: that is returned here (an empty
        state if nothing), and this generation owns its descriptors.
        Listeners handed over but not claimed by now are closed.
        """
        if self._phase != "entered":
            raise UpgradeError("ready() is called once, inside the Upgrader")
        handed = FdState()
        if self._new is not None:
            handed = await self._new.take_over(self.handover_timeout)
            if self._new.probation == 0:  # settled: the upgrade that started us went well
                self.history.count(self._started_us())
        else:
            if self.pidfile is not None:
                pidfiles.write_pid(self.pidfile, os.getpid(), pidfiles.process_start(os.getpid()))
            # A fresh service: its record starts over (a restart is no upgrade).
            self.history = History()
            self._main = (os.getpid(), self.generation)
            self._write_service(fresh=True)
            systemd.notify(READY=1, STATUS=f"serving (generation {self.generation})")
        self._phase = "ready"
        try:
            for name, fd in self._received.items():
                if name != CONTROL:
                    log.warning("closing %s: handed over, but not listened on by now", name)
                    os.close(fd)
            self._received = {k: v for k, v in self._received.items() if k == CONTROL}
            await self._serve_control()
            if self._new is not None and self._new.probation > 0:
                self._on_probation = True
                self._confirmed = anyio.Event()
                self._confirm_due = time.monotonic() + self._new.probation
                assert self._tasks is not None
                self._tasks.start_soon(self._await_confirmation, self._new)
        except BaseException:
            handed.close()
            raise
        return handed

    async def _serve_control(self) -> None:
        if self.control is not None:
            self._control_listener = await self.listen(CONTROL, UnixAddress(str(self.control)))
            assert self._tasks is not None
            self._tasks.start_soon(self._control.serve, self._control_listener)

    async def _await_confirmation(self, new: NewSide) -> None:
        """Wait for the old generation to settle the upgrade (the end of the probation,
        if any); if it goes away first, this generation is the main process from
        now on."""
        try:
            settled = await new.await_settled(new.probation + _CONFIRM_GRACE)
        finally:
            self._on_probation = False
            assert self._confirmed is not None
            self._confirmed.set()
        if settled:
            self.history = History.from_json(new.history) or self.history
            self._main = (os.getpid(), self.generation)
            log.info("generation %d: pid %d ended the probation", self.generation, new.parent)
            return
        if self.pidfile is not None:
            try:
                pidfiles.write_pid(self.pidfile, os.getpid(), pidfiles.process_start(os.getpid()))
            except UpgradeError as exc:
                log.warning("the pidfile does not name pid %d: %s", os.getpid(), exc)
        systemd.notify(MAINPID=os.getpid(), READY=1, STATUS=f"pid {os.getpid()} serves")
        self.history.count(self._started_us())  # as far as this generation can tell
        self._main = (os.getpid(), self.generation)
        self._write_service()
        log.warning(
            "generation %d: pid %d %s during the probation: this is the main process now",
            self.generation,
            new.parent,
            "went away" if settled is False else "said nothing",
        )

    def _started_us(self) -> dict[str, Any]:
        """The outcome of the upgrade that started this generation, as this one sees it
        (the old generation records its own beside the pidfile: ``_sync_history``)."""
        outcome: dict[str, Any] = {"ok": True, "pid": os.getpid(), "generation": self.generation}
        requested = self._new.requested if self._new is not None else None
        if requested is not None:
            outcome["seconds"] = time.monotonic() - requested
        return {**outcome, "at": timestamp()}

    def _sync_history(self) -> None:
        """Take the service's record from beside the pidfile when it names this
        generation: the old generation recorded there how the upgrade that started
        this one went, to the figure."""
        if self.pidfile is None or self._main[0] == os.getpid():
            return
        try:
            service = pidfiles.read_status(self.pidfile).get("service")
        except UpgradeError:
            return
        if (
            isinstance(service, dict)
            and service.get("pid") == os.getpid()
            and service.get("generation") == self.generation
            and (recorded := History.from_json(service)) is not None
        ):
            self.history = recorded
            self._main = (os.getpid(), self.generation)

    # ------------------------------------------------------------------
    # Upgrading: the old generation's side.

    async def wait_replaced(self) -> int:
        """Wait until a new generation has taken over; returns its pid.  Stop
        accepting then; with a probation, ``settled()`` says whether to leave."""
        assert self._replaced is not None, "enter the Upgrader first"
        await self._replaced.wait()
        assert self._successor is not None
        return self._successor

    async def settled(self) -> bool:
        """After ``wait_replaced()``: wait for the probation to end (at once without).

        True: the new generation stuck; drain and leave.  False: it exited
        during its probation, and this generation is the main process again:
        ``listen()`` again and accept (the listeners were kept).
        """
        if self._trial is None:
            raise UpgradeError("settled() follows wait_replaced(): nothing has taken over")
        trial = self._trial
        await trial.done.wait()
        return trial.stuck

    async def upgrade(
        self,
        command: Sequence[str] | None = None,
        *,
        cwd: str | os.PathLike[str] | None = None,
        env: Variables | None = None,
    ) -> UpgradeResult:
        """Start the next generation (``command`` in ``cwd``, with ``env``'s changes;
        by default the upgrader's) and hand over.

        Returns once the new generation serves, and with a probation once it
        has stuck through it.  Raises UpgradeBusy if an upgrade is under way
        (or on probation, or this generation is not ready, or already
        replaced), UpgradeFailed with the reason if the new generation did
        not take over (it was killed, and this one serves on), and its
        subclass UpgradeRolledBack if it exited during its probation (this
        one serves again); UpgradeError if ``command``, ``cwd`` or ``env`` is
        malformed.
        """
        return await self._attempt(self._release(command, cwd, env))

    def _release(
        self,
        command: Sequence[str] | None,
        cwd: str | os.PathLike[str] | None,
        env: Variables | None,
    ) -> Release:
        """What to start: as asked, else as set, else as this generation was started."""
        asked_command, asked_cwd, asked_env = release_from(command, cwd, env)
        inherited = self._new.release if self._new is not None else None
        return Release(
            asked_command
            or (tuple(self.command) if self.command else None)
            or (inherited.command if inherited else None)
            or tuple(default_command()),
            asked_cwd or self.cwd or (inherited.cwd if inherited else None) or self._started_in,
            {**self.env, **asked_env},
        )

    async def _attempt(
        self,
        release: Release,
        interim: Interim | None = None,
        answer: dict[str, Any] | None = None,
    ) -> UpgradeResult:
        """One upgrade request: its result, or its failure raised; ``answer`` gets the
        outcome as recorded, either way, once it is known."""
        answer = {} if answer is None else answer
        self._sync_history()
        attempt = self._start_attempt()
        started = time.monotonic()
        busy = self._busy()
        if busy is not None:
            refused = UpgradeBusy(f"cannot upgrade now: {busy}")
            answer.update(ok=False, busy=True, error=str(refused), at=timestamp())
            self._record(attempt, answer)
            raise refused
        self._phase = "upgrading"
        systemd.notify(RELOADING=1, STATUS="upgrading")
        log.info("generation %d: upgrading", self.generation)
        try:
            trial = await self._upgrade(release, attempt, started)
        except BaseException as exc:
            if self._phase != "upgrading":  # committed: nothing to roll back (see _commit)
                raise
            self._phase = "ready"
            why = reason(exc)
            systemd.notify(READY=1, STATUS=f"serving; the last upgrade failed: {why}")
            answer.update(self._failure(exc, started))
            self._record(attempt, answer)
            # One log line, whatever the new generation's exception text holds.
            shown = printable(why)
            log.warning("generation %d: upgrade failed, still serving: %s", self.generation, shown)
            raise
        if interim is not None and not trial.done.is_set():
            await interim({"probation": self.probation, "pid": trial.pid})
        try:
            return await trial.outcome()
        finally:
            answer.update(trial.recorded)

    def _failure(self, error: BaseException, started: float) -> dict[str, Any]:
        """The outcome of an upgrade that failed before the commit."""
        outcome: dict[str, Any] = {
            "ok": False,
            "error": reason(error),
            "generation": self.generation + 1,
            "seconds": time.monotonic() - started,
        }
        if isinstance(error, GenerationFailed):
            outcome.update(error.details())
        return {**outcome, "at": timestamp()}

    def _busy(self) -> str | None:
        """Why no upgrade can start now; None when one can."""
        if self._phase == "ready":
            if self._on_probation and self._new is not None:
                return f"this generation is on probation (pid {self._new.parent} watches it)"
            return None
        return {
            "upgrading": "an upgrade is already in progress",
            "probation": f"the last upgrade, to pid {self._successor}, is on probation",
            "replaced": f"already replaced by pid {self._successor}",
        }.get(self._phase, "this generation is not ready yet")

    async def _upgrade(self, release: Release, attempt: int, started: float) -> _Trial:
        launch = release.resolve({k: v for k, v in os.environ.items() if k not in NOT_INHERITED})
        log.info(
            "generation %d: starting %s in %s",
            self.generation,
            printable(" ".join(launch.argv)),
            printable(launch.cwd or "this directory"),
        )
        side = OldSide(
            generation=self.generation,
            start_timeout=self.start_timeout,
            ready_timeout=self.ready_timeout,
            handover_timeout=self.handover_timeout,
            progress=self._progress,
            probation=self.probation,
            history=self.history.as_json(),
            requested=started,
        )
        handover = await side.hand_on(launch, self._held, self.pause, self.resume)
        # The commit: the new generation acknowledged the handover and serves.
        side.commit()
        done = time.monotonic()
        child = handover.child
        self._phase = "probation" if self.probation > 0 else "replaced"
        self._successor = child.pid
        trial = self._trial = _Trial(child.pid)
        result = UpgradeResult(
            child.pid,
            self.generation + 1,
            done - started,
            done - handover.paused,
            handover.handed,
            probation=self.probation,
            command=launch.argv,
            cwd=launch.cwd or "",
        )
        with anyio.CancelScope(shield=True):
            warnings = await self._commit(child)
            result = dataclasses.replace(result, warnings=tuple(warnings))
            if self.probation > 0:
                log.info(
                    "generation %d: pid %d serves, on probation for %g s",
                    self.generation,
                    child.pid,
                    self.probation,
                )
                pending = {"probation": self.probation, "pid": child.pid}
                self._record(attempt, pending, f"pid {child.pid} serves, on probation")
                assert self._tasks is not None
                self._tasks.start_soon(self._watch, side, handover, result, attempt, done)
            else:
                self._settle(side, handover, result, attempt)
        return trial

    async def _commit(self, child: Child) -> list[str]:
        """Let the new generation be the one: past the commit nothing is rolled back
        (but for its exit during a probation), so what goes wrong here is logged
        and returned as warnings, and this generation goes on to be replaced (and
        drain) whatever happens.  With a probation it stays the main process."""
        warnings: list[str] = []
        try:
            if self.probation > 0:
                systemd.notify(STATUS=f"pid {child.pid} serves, on probation")
            else:
                child.release()
                warnings += self._make_main(child.pid, child.start, self.generation + 1)
            if self._control_listener is not None:
                try:
                    await self._control_listener.aclose()
                except Exception as exc:
                    warnings.append(self._warn("the control socket was not closed", exc))
                self._control_listener = None
        finally:
            assert self._replaced is not None
            self._replaced.set()
        return warnings

    def _make_main(self, pid: int, start: int, generation: int) -> list[str]:
        """Name ``pid`` in the pidfile and to systemd as the main process; warnings."""
        warnings: list[str] = []
        self._main = (pid, generation)
        if self.pidfile is not None:
            try:
                pidfiles.write_pid(self.pidfile, pid, start)
            except Exception as exc:
                warnings.append(self._warn(f"the pidfile does not name pid {pid}", exc))
        systemd.notify(MAINPID=pid, READY=1, STATUS=f"pid {pid} serves")
        return warnings

    def _warn(self, what: str, exc: BaseException) -> str:
        warning = f"{what}: {reason(exc)}"
        log.warning("generation %d: after the commit, %s", self.generation, printable(warning))
        return warning

    async def _watch(
        self,
        side: OldSide,
        handover: Handover,
        result: UpgradeResult,
        attempt: int,
        committed: float,
    ) -> None:
        """The probation: the new generation exits within it (rolled back) or not."""
        child = handover.child
        exited = False
        try:
            exited = await child.wait(self.probation)
        finally:  # also when cancelled: the outcome is decided now, whatever it is
            with anyio.CancelScope(shield=True):
                if exited or child.exited():
                    after = time.monotonic() - committed
                    await self._roll_back(side, handover, attempt, after, result.seconds + after)
                else:
                    made = self._make_main(child.pid, child.start, result.generation)
                    result = dataclasses.replace(result, warnings=(*result.warnings, *made))
                    self._settle(side, handover, result, attempt)

    def _settle(
        self, side: OldSide, handover: Handover, result: UpgradeResult, attempt: int
    ) -> None:
        """The replacement stuck: the new generation is the main process by now."""
        outcome = {**result.as_json(), "at": timestamp()}
        self._record(attempt, outcome)
        side.settle(handover.link, self.history.as_json())  # this upgrade counted
        handover.child.release()
        self._phase = "replaced"
        log.info("generation %d: replaced by pid %d", self.generation, result.pid)
        assert self._trial is not None
        self._trial.end(result, outcome)
        if self.drain_timeout is not None:
            assert self._tasks is not None
            self._tasks.start_soon(self._end_drain, attempt, self.drain_timeout)

    async def _roll_back(
        self, side: OldSide, handover: Handover, attempt: int, after: float, seconds: float
    ) -> None:
        """The new generation exited during its probation: serve again, as the main process.
        ``after``: from the commit to its exit; ``seconds``: from the request."""
        child = handover.child
        assert child.status is not None
        error = UpgradeRolledBack(child.pid, child.status, after, child.stderr())
        side.roll_back(handover.link)
        child.release()
        self._phase = "ready"
        self._replaced = anyio.Event()
        why = str(error)
        if self.pidfile is not None:
            try:
                pidfiles.write_pid(self.pidfile, os.getpid(), pidfiles.process_start(os.getpid()))
            except UpgradeError as exc:
                log.warning("the pidfile does not name pid %d: %s", os.getpid(), exc)
        self._main = (os.getpid(), self.generation)
        systemd.notify(MAINPID=os.getpid(), READY=1, STATUS=f"serving; {why}")
        try:
            await self._serve_control()
        except Exception as exc:
            log.warning("generation %d: the control socket: %s", self.generation, reason(exc))
        outcome = {
            "ok": False,
            "error": why,
            "generation": self.generation + 1,
            "seconds": seconds,
            **error.details(),
            "at": timestamp(),
        }
        self._record(attempt, outcome)
        log.warning("generation %d: %s; serving again", self.generation, printable(why))
        assert self._trial is not None
        self._trial.end(error, outcome)

    async def _end_drain(self, attempt: int, timeout: float) -> None:
        """``drain_timeout`` after the replacement: whatever is still in flight is cut.

        Exits the process (status 0: the drain ended as configured, and a new
        generation serves) unless the upgrader is closed first."""
        await anyio.sleep(timeout)
        cut = connections.accepted(fd for name, fd in self._held.items() if name != CONTROL)
        log.warning(
            "generation %d: the drain timeout (%g s) passed: exiting, %d connection%s cut",
            self.generation,
            timeout,
            cut,
            "" if cut == 1 else "s",
        )
        self._amend(attempt, {"drain": {"timeout": timeout, "cut": cut, "pid": os.getpid()}})
        _exit_now(0)

    # ------------------------------------------------------------------
    # Triggers: a signal, the control socket.

    async def _watch_signal(
        self, signum: signal.Signals, *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        with anyio.open_signal_receiver(signum) as signals:
            task_status.started()
            async for _ in signals:
                assert self._tasks is not None
                self._tasks.start_soon(self._upgrade_logged)

    async def _upgrade_answer(self, interim: Interim, asked: dict[str, Any]) -> dict[str, Any]:
        """The outcome of a control socket's request, as recorded beside the pidfile."""
        release = self._release(asked.get("command"), asked.get("cwd"), asked.get("env"))
        outcome: dict[str, Any] = {}
        try:
            await self._attempt(release, interim, outcome)
        except UpgradeError:
            if not outcome:  # refused before it was an attempt (the status file, say)
                raise
        return outcome

    async def status(self) -> dict[str, Any]:
        """This generation and the service's record of its upgrades (what ``fdchannel
        upgrade --status`` shows): ``pid``, ``generation``, ``started`` (when this
        process started), ``service_started``, ``counts`` (``ok``, ``failed``,
        ``rolled_back``, ``refused``), ``last`` (the last upgrade's outcome, None
        before any) and ``probation`` (``{"pid", "seconds"}`` while one runs)."""
        confirmed = self._confirmed
        if confirmed is not None and time.monotonic() >= self._confirm_due:
            # The old generation's word is due: the record it sends counts this upgrade.
            with anyio.move_on_after(_SETTLED_WAIT):
                await confirmed.wait()
        self._sync_history()
        probation: dict[str, Any] | None = None
        if self._on_probation and self._new is not None and self._new.probation > 0:
            probation = {"pid": os.getpid(), "seconds": self._new.probation}
        elif self._phase == "probation" and self._successor is not None:
            probation = {"pid": self._successor, "seconds": self.probation}
        start = pidfiles.start_time(pidfiles.process_start(os.getpid()))
        return status_document(
            os.getpid(), self.generation, timestamp(start), self.history, probation
        )

    async def _upgrade_logged(self) -> None:
        try:
            await self.upgrade()
        except UpgradeError:
            pass  # upgrade() logged and recorded it
        except Exception:  # a trigger must not bring the server down
            log.exception("generation %d: the upgrade went wrong", self.generation)

    # ------------------------------------------------------------------
    # Bookkeeping and closing.

    def _start_attempt(self) -> int:
        """This request's number, recorded as started (0 without a pidfile)."""
        return 0 if self.pidfile is None else pidfiles.start_attempt(self.pidfile)

    def _record(self, attempt: int, outcome: dict[str, Any], why: str | None = None) -> None:
        """Record request ``attempt``'s outcome (without ``ok``: not over yet, on
        probation), counted in the service's record once it is over."""
        if "ok" in outcome:
            self.history.count(outcome)
        if self.pidfile is None:
            return
        if why is None:
            why = str(outcome.get("error") or f"pid {outcome.get('pid')} serves")
        status = {"attempt": attempt, "reason": why, "from_pid": os.getpid(), **outcome}
        # A generation replaced (draining) refusing a request is not the service's word.
        main = self._main[0] == os.getpid() or not outcome.get("busy")
        try:
            pidfiles.record(self.pidfile, status, self._service() if main else None)
        except UpgradeError as exc:
            log.warning("cannot record the upgrade's outcome: %s", exc)

    def _service(self) -> dict[str, Any]:
        """The service's record as the status file keeps it, with who the pidfile names."""
        pid, generation = self._main
        return {"pid": pid, "generation": generation, **self.history.as_json()}

    def _write_service(self, fresh: bool = False) -> None:
        """Rewrite the service's record beside the pidfile (``fresh``: and nothing else)."""
        if self.pidfile is None:
            return
        try:
            pidfiles.write_service(self.pidfile, self._service(), fresh=fresh)
        except UpgradeError as exc:
            log.warning("cannot record the service's upgrades: %s", exc)

    def _amend(self, attempt: int, fields: dict[str, Any]) -> None:
        if self.pidfile is None:
            return
        try:
            pidfiles.amend(self.pidfile, attempt, fields)
        except UpgradeError as exc:
            log.warning("cannot record what followed the upgrade: %s", exc)

    async def _close(self, failed: str | None) -> UpgradeFailed | None:
        """Close everything; an error to raise when the application left during a
        probation that then rolled back (nothing accepts: the service ends)."""
        if self._phase == "closed":
            return None
        if self._new is not None and self._phase == "entered":
            await self._new.give_up(failed or "it exited before ready()")
        stranded: UpgradeFailed | None = None
        if self._phase == "probation" and self._trial is not None:
            # The main process stays until the probation ends, and holds the listeners.
            log.info("generation %d: waiting for the end of the probation", self.generation)
            with anyio.CancelScope(shield=True):
                await self._trial.done.wait()
            if self._trial.error is not None:
                stranded = UpgradeFailed(
                    f"{self._trial.error}, but the application had left the Upgrader: "
                    "nothing accepts, and this generation ends"
                )
        replaced = self._phase == "replaced"
        # A new generation leaving on probation: the old one serves on these
        # sockets again, so their files stay (the pidfile names the old one).
        on_probation = self._on_probation
        self._phase = "closed"
        await self._control.quiesce(1)  # let a control reply in flight go out
        if self._tasks is not None:
            self._tasks.cancel_scope.cancel()
        await self._exit.aclose()  # the task group: exited in the task that entered it
        with anyio.CancelScope(shield=True):
            for listener in self._given:
                await listener.aclose()
        self._given.clear()
        if self._new is not None:
            self._new.close()
            self._new.restore_stderr()  # if it was never settled (a pipe nobody reads, else)
        for fd in self._received.values():
            os.close(fd)
        self._received.clear()
        for fd in self._held.values():
            if not replaced and not on_probation:
                sockets.unlink_if_ours(fd)  # the last generation leaves no socket file behind
            os.close(fd)
        self._held.clear()
        if not replaced and self.pidfile is not None:  # nor a pidfile naming it
            pidfiles.remove_pid(self.pidfile, os.getpid(), pidfiles.process_start(os.getpid()))
        return stranded


def _exit_now(status: int) -> NoReturn:
    """End the process at once, its logs and standard streams flushed first."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)
