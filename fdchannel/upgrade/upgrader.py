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

This module is the generation's lifecycle; the handshake between two
generations is ``handshake.py`` (its table) and ``sides.py`` (its I/O), the
control socket ``control_server.py``, the listeners' origins ``sockets.py``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from ..address import Address, UnixAddress, parse_address
from ..credentials import CredentialPolicy, same_user_or_root
from ..errors import UpgradeBusy, UpgradeError
from ..state import FdState
from ..text import printable
from ..transports import Listener
from ..unix_sockets import BACKLOG
from . import files, lineage as lineage_env, pidfile as pidfiles, sockets, systemd
from .control_server import ControlServer
from .handshake import NEW_STEPS, OLD_STEPS
from .reasons import reason
from .sides import NewSide, OldSide, Pause, Resume
from .spawn import Child

__all__ = ["CONTROL", "NEW_STEPS", "OLD_STEPS", "Upgrader", "UpgradeResult", "default_command"]

log = logging.getLogger("fdchannel.upgrade")

#: The name the control socket travels under between generations.
CONTROL = "fdchannel.upgrade.control"


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

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": True,
            "pid": self.pid,
            "generation": self.generation,
            "seconds": self.seconds,
            "handover_seconds": self.handover_seconds,
            "handed": self.handed,
            "warnings": list(self.warnings),
        }


class Upgrader(anyio.abc.AsyncResource):
    """``async with Upgrader() as up``: listen, be ready, be upgraded.

    ``command`` starts the next generation (default: this program's own
    command line).  ``pidfile`` is rewritten to name the serving generation
    (its pid and start time), and removed by the last one when it exits;
    ``control`` is a unix socket path taking ``upgrade`` requests (see
    ``fdchannel upgrade``; ``control_timeout`` and ``control_clients`` bound
    how long a client may take and how many are answered at once).  Keep
    both in a directory of their own, such as ``/run/APP/``: one that others
    may write to is warned about.  ``trigger`` is the signal that asks for an
    upgrade (None: none).  ``pause`` (optional) runs in the old generation
    once the new one is ready: it stops serving what it hands over and
    returns that as a state (descriptors and metadata) which the new
    generation's ``ready()`` returns; ``resume`` runs if that handover is
    not acknowledged.  ``progress`` hears each step's name (OLD_STEPS,
    NEW_STEPS), for logging and tests.
    """

    def __init__(
        self,
        *,
        command: Sequence[str] | None = None,
        pidfile: str | os.PathLike[str] | None = None,
        control: str | os.PathLike[str] | None = None,
        trigger: signal.Signals | None = signal.SIGHUP,
        pause: Pause | None = None,
        resume: Resume | None = None,
        start_timeout: float = 30.0,
        ready_timeout: float = 30.0,
        handover_timeout: float = 10.0,
        progress: Callable[[str], object] | None = None,
    ) -> None:
        self.command = list(command) if command is not None else None
        self.pidfile = Path(pidfile) if pidfile is not None else None
        self.control = Path(control) if control is not None else None
        self.trigger = trigger
        self.pause = pause
        self.resume = resume
        self.start_timeout = start_timeout
        self.ready_timeout = ready_timeout
        self.handover_timeout = handover_timeout
        self._progress = progress or (lambda step: None)
        #: 0 for a generation nobody handed anything to, then 1, 2, ...
        self.generation = 0
        self._new: NewSide | None = None  # our end of the handshake, if inherited
        self._received: dict[str, int] = {}  # handed to us, not claimed yet
        self._held: dict[str, int] = {}  # ours to hand on, by name
        self._given: list[Listener] = []  # returned by listen(), closed with us
        self._phase = "new"  # entered, ready, upgrading, replaced, closed
        self._successor: int | None = None
        self._replaced: anyio.Event | None = None
        self._tasks: anyio.abc.TaskGroup | None = None
        self._exit = contextlib.AsyncExitStack()
        self._control_listener: Listener | None = None
        self._control = ControlServer(self._upgrade_answer, lambda: self.generation)

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
        """Whether a new generation has taken over: stop accepting, drain, exit."""
        return self._phase == "replaced"

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
        await self._close(failed=None if error is None else reason(error))

    async def aclose(self) -> None:
        await self._close(failed=None)

    async def _inherit(self, lineage: lineage_env.Lineage) -> None:
        self._new = NewSide(lineage, self._progress)
        self.generation = lineage.generation
        self._received.update(await self._new.inherit(self.start_timeout))
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
        address: str | Address,
        *,
        policy: CredentialPolicy | None = same_user_or_root,
        mode: int = 0o600,
        backlog: int = BACKLOG,
    ) -> Listener:
        """A listener for ``name``: the previous generation's, systemd's, or a new one.

        Each call returns a new Listener over its own duplicate: closing it
        stops this generation accepting; the socket itself lives on while
        the upgrader (or the next generation) holds it.  Listeners still
        open when the upgrader closes are closed with it.  ``policy`` applies
        to unix sockets (peers of our uid or root by default); ``mode`` and
        ``backlog`` to one bound here.
        """
        if self._phase not in ("entered", "ready"):
            raise UpgradeError(f"listen({name!r}) needs an entered, not replaced, Upgrader")
        parsed = parse_address(address) if isinstance(address, str) else address
        fd = self._held.get(name)
        if fd is None:
            fd = self._received.pop(name, None)
            if fd is None:
                fd = sockets.from_socket_activation(name, parsed)
            if fd is None:
                fd = await sockets.bind(parsed, mode=mode, backlog=backlog)
            self._held[name] = fd
        copy = os.dup(fd)
        try:
            listener = Listener.from_fd(copy, policy=policy)
        except BaseException:
            os.close(copy)
            raise
        self._given.append(listener)
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

        The first generation writes its pidfile and tells systemd READY=1.
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
        else:
            if self.pidfile is not None:
                pidfiles.write_pid(self.pidfile, os.getpid(), pidfiles.process_start(os.getpid()))
            systemd.notify(READY=1, STATUS=f"serving (generation {self.generation})")
        self._phase = "ready"
        try:
            for name, fd in self._received.items():
                if name != CONTROL:
                    log.warning("closing %s: handed over, but not listened on by now", name)
                    os.close(fd)
            self._received = {k: v for k, v in self._received.items() if k == CONTROL}
            if self.control is not None:
                self._control_listener = await self.listen(CONTROL, UnixAddress(str(self.control)))
                assert self._tasks is not None
                self._tasks.start_soon(self._control.serve, self._control_listener)
        except BaseException:
            handed.close()
            raise
        return handed

    # ------------------------------------------------------------------
    # Upgrading: the old generation's side.

    async def wait_replaced(self) -> int:
        """Wait until a new generation has taken over; returns its pid."""
        assert self._replaced is not None, "enter the Upgrader first"
        await self._replaced.wait()
        assert self._successor is not None
        return self._successor

    async def upgrade(self, command: Sequence[str] | None = None) -> UpgradeResult:
        """Start the next generation (``command``, else the upgrader's) and hand over.

        Raises UpgradeBusy if an upgrade is under way (or this generation is
        not ready, or already replaced), UpgradeFailed with the reason if the
        new generation did not take over: it was killed, and this one serves on.
        """
        attempt = self._start_attempt()
        if self._phase != "ready":
            why = {
                "upgrading": "an upgrade is already in progress",
                "replaced": f"already replaced by pid {self._successor}",
            }.get(self._phase, "this generation is not ready yet")
            self._record(attempt, False, f"busy: {why}", busy=True)
            raise UpgradeBusy(f"cannot upgrade now: {why}")
        self._phase = "upgrading"
        systemd.notify(RELOADING=1, STATUS="upgrading")
        log.info("generation %d: upgrading", self.generation)
        try:
            result = await self._upgrade(command)
        except BaseException as exc:
            if self._phase != "upgrading":  # committed: nothing to roll back (see _commit)
                raise
            self._phase = "ready"
            why = reason(exc)
            systemd.notify(READY=1, STATUS=f"serving; the last upgrade failed: {why}")
            self._record(attempt, False, why)
            # One log line, whatever the new generation's exception text holds.
            shown = printable(why)
            log.warning("generation %d: upgrade failed, still serving: %s", self.generation, shown)
            raise
        warnings = list(result.warnings)
        self._record(attempt, True, f"pid {result.pid} serves", pid=result.pid, warnings=warnings)
        log.info("generation %d: replaced by pid %d", self.generation, result.pid)
        return result

    async def _upgrade(self, command: Sequence[str] | None) -> UpgradeResult:
        started = time.monotonic()
        argv = list(command or self.command or default_command())
        side = OldSide(
            generation=self.generation,
            start_timeout=self.start_timeout,
            ready_timeout=self.ready_timeout,
            handover_timeout=self.handover_timeout,
            progress=self._progress,
        )
        handover = await side.hand_on(argv, self._held, self.pause, self.resume)
        # The commit: the new generation acknowledged the handover and serves.
        side.commit()
        done = time.monotonic()
        child = handover.child
        self._phase = "replaced"
        self._successor = child.pid
        with anyio.CancelScope(shield=True):
            warnings = await self._commit(child)
        return UpgradeResult(
            child.pid,
            self.generation + 1,
            done - started,
            done - handover.paused,
            handover.handed,
            tuple(warnings),
        )

    async def _commit(self, child: Child) -> list[str]:
        """Let the new generation be the one: past the commit nothing is rolled back,
        so what goes wrong here is logged and returned as warnings, and this
        generation goes on to be replaced (and drain) whatever happens."""
        warnings: list[str] = []

        def warn(what: str, exc: BaseException) -> None:
            warnings.append(f"{what}: {reason(exc)}")
            shown = printable(warnings[-1])
            log.warning("generation %d: after the commit, %s", self.generation, shown)

        try:
            child.release()
            if self.pidfile is not None:
                try:
                    pidfiles.write_pid(self.pidfile, child.pid, child.start)
                except Exception as exc:
                    warn(f"the pidfile does not name pid {child.pid}", exc)
            systemd.notify(MAINPID=child.pid, READY=1, STATUS=f"pid {child.pid} serves")
            if self._control_listener is not None:
                try:
                    await self._control_listener.aclose()
                except Exception as exc:
                    warn("the control socket was not closed", exc)
        finally:
            assert self._replaced is not None
            self._replaced.set()
        return warnings

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

    async def _upgrade_answer(self) -> dict[str, Any]:
        return (await self.upgrade()).as_json()

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

    def _record(self, attempt: int, ok: bool, reason: str, **extra: Any) -> None:
        if self.pidfile is None:
            return
        status = {"attempt": attempt, "ok": ok, "reason": reason, "from_pid": os.getpid()}
        try:
            pidfiles.record(self.pidfile, {**status, **extra})
        except UpgradeError as exc:
            log.warning("cannot record the upgrade's outcome: %s", exc)

    async def _close(self, failed: str | None) -> None:
        if self._phase == "closed":
            return
        if self._new is not None and self._phase == "entered":
            await self._new.give_up(failed or "it exited before ready()")
        replaced = self._phase == "replaced"
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
        for fd in self._received.values():
            os.close(fd)
        self._received.clear()
        for fd in self._held.values():
            if not replaced:
                sockets.unlink_if_ours(fd)  # the last generation leaves no socket file behind
            os.close(fd)
        self._held.clear()
        if not replaced and self.pidfile is not None:  # nor a pidfile naming it
            pidfiles.remove_pid(self.pidfile, os.getpid(), pidfiles.process_start(os.getpid()))
