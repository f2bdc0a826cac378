"""The handshake's I/O: each generation's end of it, over the three socketpairs
named in ``lineage.py``.  The order and what each step allows is the table's
(``handshake.py``); this module does the I/O and feeds it events.

The listeners travel with the upgrader's own bookkeeping as the state's
metadata, a JSON object: ``release`` (the command line and directory the new
generation was started from, as given: ``release.py``), ``probation``
(seconds; the control link then stays open after the commit, until the old
generation says SETTLED, with the service's record counting this upgrade,
or goes away), ``history`` (the service's record of its upgrades so far:
``history.py``), ``requested`` (when the upgrade was asked for,
CLOCK_MONOTONIC), and ``stderr`` and ``relay``: the descriptors, in the new
generation, of the old generation's stderr and of the read end of the pipe
that is the new generation's stderr until its upgrade is settled (at the
commit, or at the end of the probation: ``stderr.py``).

A link to the new generation that breaks is the consequence of what it did,
not the cause: the reason of the failure waits (briefly) for it to exit and
says how it ended, with its last lines on stderr (``reasons.py``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from ..errors import (
    ConnectionLostError,
    FdChannelError,
    HandoffError,
    UpgradeError,
    UpgradeFailed,
)
from ..handoff.cpr import ReceivedCpr, receive_cpr, send_cpr
from ..state import FdState, NamedFd
from ..transports import Listener, Stream
from . import handshake, lineage as lineage_env, lines
from .handshake import NEW, OLD, Event, Handshake, State
from .reasons import GenerationFailed, reason, running
from .release import Launch, Release, release_from
from .spawn import Child, spawn
from .stderr import Pipe, Relay, Tail

__all__ = ["NOT_INHERITED", "Handover", "NewSide", "OldSide"]

log = logging.getLogger("fdchannel.upgrade")

Pause = Callable[[], Awaitable[FdState | None]]
Resume = Callable[[], Awaitable[None]]
Progress = Callable[[str], object]

#: The longest report taken from the new generation (one short JSON line).
REPORT_BYTES = 1 << 16
#: Environment variables that describe this process only, never the next generation.
NOT_INHERITED = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", lineage_env.ENV)
#: How long a new generation whose link broke is given to exit, so that the reason
#: says how it ended (it usually has: its exit closed the link).
EXIT_BOUND = 2.0


class _Side:
    def __init__(self, table: handshake.Table, side: str, progress: Progress) -> None:
        self.handshake = Handshake(table, side)
        self._progress = progress

    def _fire(self, event: Event) -> None:
        state = self.handshake.fire(event)
        if state.value in handshake.OLD_STEPS + handshake.NEW_STEPS:
            self._progress(state.value)


@dataclass(frozen=True)
class Handover:
    """An acknowledged handover: the new generation serves."""

    child: Child
    #: When ``pause`` was called.
    paused: float
    #: Descriptors handed over after "ready".
    handed: int
    #: With a probation: our end of the control link, open until the probation ends.
    link: socket.socket | None = None


class OldSide(_Side):
    """One upgrade attempt, from the old generation: hand on until the commit, or roll back."""

    def __init__(
        self,
        *,
        generation: int,
        start_timeout: float,
        ready_timeout: float,
        handover_timeout: float,
        progress: Progress,
        probation: float = 0.0,
        history: Mapping[str, Any] | None = None,
        requested: float | None = None,
    ) -> None:
        super().__init__(OLD, "the old generation", progress)
        self.generation = generation
        self.start_timeout = start_timeout
        self.ready_timeout = ready_timeout
        self.handover_timeout = handover_timeout
        self.probation = probation
        #: What travels with the listeners, as their state's metadata.
        self.bookkeeping: dict[str, object] = {"probation": probation}
        if history is not None:
            self.bookkeeping["history"] = dict(history)
        if requested is not None:
            self.bookkeeping["requested"] = requested

    async def hand_on(
        self,
        launch: Launch,
        listeners: Mapping[str, int],
        pause: Pause | None,
        resume: Resume | None,
    ) -> Handover:
        """Start ``launch`` as the next generation and hand it ``listeners`` and what
        ``pause`` returns.  On any failure the new generation is killed and
        ``resume`` runs (if ``pause`` was called) before the error goes on."""
        ours: list[socket.socket] = []
        child: Child | None = None
        link: socket.socket | None = None
        try:
            child = self._spawn(launch, ours)
            try:
                metadata = json.dumps(self.bookkeeping).encode()
                named = [NamedFd(name, 0, fd) for name, fd in listeners.items()]
                sent = FdState(named, metadata=metadata)
                await self._send(ours[0], sent, self.start_timeout, child, "the listeners")
                self._fire(Event.LISTENERS_TAKEN)
                await self._await_ready(ours[1], child)
                self._fire(Event.READY)
                handed = FdState()
                paused = time.monotonic()
                self._fire(Event.PAUSE)
                if pause is not None:
                    handed = await pause() or FdState()
                self._fire(Event.PAUSED)
                await self._send(ours[2], handed, self.handover_timeout, child, "the handover")
                self._fire(Event.HANDOVER_TAKEN)
                if self.probation > 0:
                    link = ours.pop(1)  # open until the probation ends
            except UpgradeFailed:
                raise
            except (FdChannelError, OSError) as exc:
                if child.exited():
                    raise self._exited(child) from exc
                raise UpgradeFailed(f"the upgrade to pid {child.pid} failed: {exc}") from exc
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._roll_back(child, resume if pause is not None else None)
            raise
        finally:
            for s in ours:
                s.close()
        return Handover(child, paused, len(handed), link)

    def commit(self) -> None:
        """The new generation serves: from here on, only its exit during a probation
        rolls back."""
        self.handshake.fire(Event.COMMIT)

    def settle(self, link: socket.socket | None, history: Mapping[str, Any] | None = None) -> None:
        """The upgrade is settled (the probation, if any, is over), the new generation
        stuck: tell it, with the service's record (best effort)."""
        self.handshake.fire(Event.SETTLE)
        if link is not None:
            word = lines.encode({**handshake.SETTLED, "history": history or {}})
            if len(word) > REPORT_BYTES:  # the new generation would take it for no word
                word = lines.encode(handshake.SETTLED)
            with link, contextlib.suppress(OSError):
                link.setblocking(False)  # a new generation that reads nothing: a full buffer
                link.send(word)

    def roll_back(self, link: socket.socket | None) -> None:
        """The new generation exited during its probation: this one serves again."""
        self.handshake.fire(Event.ROLL_BACK)
        if link is not None:
            link.close()

    def _spawn(self, launch: Launch, ours: list[socket.socket]) -> Child:
        theirs: list[socket.socket] = []
        pipe: Pipe | None = None
        original: int | None = None
        try:
            for _ in range(3):
                mine, other = socket.socketpair()
                ours.append(mine)
                theirs.append(other)
            cpr, control, handover = (s.fileno() for s in theirs)
            lineage = lineage_env.Lineage(cpr, control, handover, os.getpid(), self.generation + 1)
            env = {k: v for k, v in launch.env.items() if k not in NOT_INHERITED}
            env[lineage_env.ENV] = lineage.encode()
            self.bookkeeping["release"] = launch.release.as_json()
            keep = list(lineage.fds())
            original = _our_stderr()
            if original is not None:
                pipe = Pipe()
                keep += [original, pipe.read]
                self.bookkeeping.update(stderr=original, relay=pipe.read)
            stderr = pipe.write if pipe else None
            child = spawn(launch.argv, env, keep=keep, stderr=stderr, cwd=launch.cwd)
            if pipe is not None:
                child.relay = Relay(os.dup(pipe.read), 2, Tail()).start()
        finally:
            for s in theirs:
                s.close()
            if pipe is not None:
                pipe.close()
            if original is not None:
                os.close(original)
        self._fire(Event.SPAWN)
        return child

    async def _roll_back(self, child: Child | None, resume: Resume | None) -> None:
        """Before the commit: kill the new generation, resume what was paused."""
        if self.handshake.allows(Event.FAIL):
            self.handshake.fire(Event.FAIL)
        try:
            if child is not None:
                await child.kill()
            if resume is not None and self.handshake.passed(State.PAUSING):
                await resume()
        finally:
            if self.handshake.allows(Event.ROLL_BACK):
                self.handshake.fire(Event.ROLL_BACK)

    async def _await_ready(self, channel: socket.socket, child: Child) -> None:
        stream = Stream.from_fd(os.dup(channel.fileno()))
        line: bytes | None = None
        async with stream:
            with anyio.move_on_after(self.ready_timeout):
                try:
                    line = await lines.receive_line(stream, REPORT_BYTES)
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    line = b""  # it hung up: it is exiting, or gave up on us
                except lines.LineTooLong:
                    line = b"{}"
        if line is None:
            raise self._late(child, f"did not call ready() within {self.ready_timeout:g} s")
        if not line:  # it hung up: it is exiting, or gave up on us
            raise await self._hung_up(child, "before ready()")
        failure = handshake.report(lines.decode(line))
        if failure is not None:
            message = f"the new generation (pid {child.pid}) failed its start: {failure}"
            raise GenerationFailed(message, child.pid, stderr=child.stderr())

    async def _send(
        self, channel: socket.socket, state: FdState, timeout: float, child: Child, what: str
    ) -> None:
        """One cpr exchange with the new generation, on our end of a socketpair."""
        try:
            await send_cpr(f"fd:{channel.fileno()}", state, timeout=timeout)
        except TimeoutError as exc:  # HandoffTimeout, TransportTimeout
            raise self._late(child, f"did not take {what} within {timeout:g} s") from exc
        except (ConnectionLostError, HandoffError) as exc:  # it hung up, reset, or closed
            raise await self._hung_up(child, f"without taking {what}") from exc
        except FdChannelError as exc:
            if await child.wait(EXIT_BOUND):  # what it sent was cut short by its exit
                raise self._exited(child) from exc
            raise GenerationFailed(
                f"the new generation (pid {child.pid}) did not take {what}: {exc}",
                child.pid,
                stderr=child.stderr(),
            ) from exc

    def _exited(self, child: Child) -> GenerationFailed:
        """The new generation exited (or was killed) before the commit: how, and when."""
        when = " before ready()"
        if self.handshake.passed(State.READY_RECEIVED):
            when = " after ready(), during the handover"
        return GenerationFailed.exited(child.pid, child.status, when, child.stderr())

    def _late(self, child: Child, did: str) -> GenerationFailed:
        """A deadline passed: it exited meanwhile, or it is still at it."""
        if child.exited():
            return self._exited(child)
        stderr = child.stderr()
        return GenerationFailed(running(child.pid, did, stderr), child.pid, stderr=stderr)

    async def _hung_up(self, child: Child, when: str) -> GenerationFailed:
        """Its end of a link closed: it has exited, as a rule (its exit closed it)."""
        if await child.wait(EXIT_BOUND):
            return self._exited(child)
        stderr = child.stderr()
        did = f"closed its link to the old generation {when}, and is still running"
        return GenerationFailed(running(child.pid, did, stderr), child.pid, stderr=stderr)


class NewSide(_Side):
    """The new generation's end, over what ``lineage`` names (ours to close)."""

    def __init__(self, lineage: lineage_env.Lineage, progress: Progress) -> None:
        super().__init__(NEW, "the new generation", progress)
        self.lineage = lineage
        self.parent = lineage.parent
        self._links: tuple[int, ...] = (lineage.control, lineage.handover)
        #: Seconds the old generation watches this one after the commit (0: none).
        self.probation = 0.0
        #: What this generation was started from, as given (None: an older sender).
        self.release: Release | None = None
        #: The service's record of its upgrades, as the old generation sent it with the
        #: listeners, then with SETTLED (this upgrade counted); None: none came.
        self.history: dict[str, Any] | None = None
        #: When the upgrade that started us was asked for (CLOCK_MONOTONIC; None: not said).
        self.requested: float | None = None
        #: The old generation's stderr and the read end of our stderr's pipe, until the
        #: upgrade is settled (ours to close).
        self._stderr: int | None = None
        self._relay: int | None = None

    async def inherit(self, timeout: float) -> dict[str, int]:
        """The listeners, by name (duplicates, ours); acknowledged to the old generation."""
        received = await _receive(
            self.lineage.cpr, timeout, f"the listeners did not arrive from pid {self.parent}"
        )
        taken: dict[str, int] = {}
        try:
            with received.state as state:
                for entry in state.fds:
                    taken[entry.name] = os.dup(entry.fd)
                self._take_bookkeeping(state.metadata)
            self._fire(Event.LISTENERS_RECEIVED)
            with self._old_generation():
                await received.accept()  # the close-as-ack: the listeners are ours
            self._fire(Event.ACKNOWLEDGE)
        except BaseException:
            for fd in taken.values():
                os.close(fd)
            raise
        return taken

    async def take_over(self, timeout: float) -> FdState:
        """Say ready, receive the handover and acknowledge it: the commit."""
        with self._old_generation():
            await _tell(self.lineage.control, handshake.READY)
        self._fire(Event.SAY_READY)
        handover = os.dup(self.lineage.handover)
        self.close(keep_link=self.probation > 0)
        received = await _receive(handover, timeout, f"the handover from pid {self.parent} failed")
        self._fire(Event.HANDOVER_RECEIVED)
        try:
            with self._old_generation():
                await received.accept()  # the commit: from here on we serve
        except BaseException:
            received.state.close()
            raise
        self._fire(Event.SERVE)
        if self.probation == 0:
            self.restore_stderr()  # settled: nothing more to tell the old generation
        return received.state

    async def give_up(self, why: str) -> None:
        """Tell the old generation why this one will not be ready, if it still listens
        (best effort)."""
        if self.handshake.allows(Event.REPORT_FAILURE):
            self.handshake.fire(Event.REPORT_FAILURE)
            quiet = contextlib.suppress(OSError, FdChannelError, anyio.BrokenResourceError)
            with anyio.CancelScope(shield=True), anyio.move_on_after(1), quiet:
                await _tell(self.lineage.control, handshake.failed(why))
        elif self.handshake.allows(Event.FAIL):
            self.handshake.fire(Event.FAIL)

    async def await_settled(self, timeout: float) -> bool | None:
        """Wait for the old generation to settle the upgrade (at once without a
        probation, else at its end): True when it says this one stuck, False when
        it went away first, None when neither came by ``timeout``.  The control
        link is closed then, and the stderr put back."""
        link = self._links[0] if self._links else None
        message: dict[str, object] | None = None
        settled: bool | None = False
        try:
            if link is not None:
                with anyio.move_on_after(timeout) as waited:
                    async with Stream.from_fd(os.dup(link)) as stream:
                        with contextlib.suppress(
                            anyio.EndOfStream, anyio.BrokenResourceError, lines.LineTooLong
                        ):
                            message = lines.decode(await lines.receive_line(stream, REPORT_BYTES))
                settled = None if waited.cancelled_caught else handshake.settled(message)
            if settled and isinstance(history := (message or {}).get("history"), dict):
                self.history = history
        finally:
            self.close()
            self.restore_stderr()
        if settled:
            self._fire(Event.CONFIRM)
        return settled

    def restore_stderr(self) -> None:
        """Put the old generation's stderr back as ours, and relay the pipe until
        nothing holds it (our children started meanwhile write to it): at once,
        as a rule, when nothing else does."""
        if self._stderr is not None:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            with contextlib.suppress(OSError):
                os.dup2(self._stderr, 2)
            os.close(self._stderr)
            self._stderr = None
        if self._relay is not None:
            Relay(self._relay, 2).start_unless_done()  # it closes the pipe at its end
            self._relay = None

    def close(self, keep_link: bool = False) -> None:
        """Close the links to the old generation (the cpr one closes with its receipt);
        with ``keep_link``, all but the control link (a probation's)."""
        kept = self._links[:1] if keep_link else ()
        for fd in self._links:
            if fd not in kept:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._links = kept

    def _take_bookkeeping(self, metadata: bytes) -> None:
        """What the old generation sent with the listeners (nothing, from an older one)."""
        try:
            found = json.loads(metadata) if metadata else {}
        except ValueError:
            found = None
        if not isinstance(found, dict):
            log.warning("ignoring the bookkeeping of pid %d: not a JSON object", self.parent)
            return
        probation = found.get("probation", 0)
        if isinstance(probation, int | float) and probation > 0:
            self.probation = float(probation)
        history = found.get("history")
        self.history = history if isinstance(history, dict) else None
        requested = found.get("requested")
        if isinstance(requested, int | float) and not isinstance(requested, bool):
            self.requested = float(requested)
        self._stderr = _inherited(found.get("stderr"))
        self._relay = _inherited(found.get("relay"))
        release = found.get("release")
        if isinstance(release, dict):
            try:
                command, cwd, _ = release_from(release.get("command"), release.get("cwd"), None)
            except UpgradeError as exc:
                log.warning("ignoring the release pid %d started us from: %s", self.parent, exc)
            else:
                if command is not None and cwd is not None:
                    self.release = Release(command, cwd)

    @contextlib.contextmanager
    def _old_generation(self) -> Iterator[None]:
        """A link to the old generation breaking: it went away (exited, or was killed)."""
        try:
            yield
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise UpgradeFailed(
                f"the old generation (pid {self.parent}) went away: {reason(exc)}"
            ) from exc


def _our_stderr() -> int | None:
    """A copy of our stderr for the next generation to put back; None if there is none."""
    try:
        return os.dup(2)
    except OSError:
        return None


def _inherited(fd: object) -> int | None:
    """A descriptor the bookkeeping names, if it is one and open: made close-on-exec
    (ours only, not our children's)."""
    if not isinstance(fd, int) or isinstance(fd, bool) or not 2 < fd < 1 << 31:
        return None
    try:
        fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
    except OSError:
        log.warning("ignoring descriptor %d of the bookkeeping: it is not open", fd)
        return None
    return fd


async def _receive(fd: int, timeout: float, failure: str) -> ReceivedCpr:
    """The new side of one cpr exchange, on ``fd`` (ours from here on)."""
    source = Listener.from_fd(fd, policy=None)
    try:
        return await receive_cpr(source, timeout=timeout)
    except FdChannelError as exc:
        raise UpgradeFailed(f"{failure}: {exc}") from exc
    finally:
        await source.aclose()


async def _tell(control: int, message: dict[str, object]) -> None:
    """One line to the old generation on the control link."""
    async with Stream.from_fd(os.dup(control)) as stream:
        await stream.send(lines.encode(message))
