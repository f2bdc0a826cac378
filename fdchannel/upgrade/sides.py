"""The handshake's I/O: each generation's end of it, over the three socketpairs
named in ``lineage.py``.  The order and what each step allows is the table's
(``handshake.py``); this module does the I/O and feeds it events.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import anyio

from ..errors import FdChannelError, UpgradeFailed
from ..handoff.cpr import ReceivedCpr, receive_cpr, send_cpr
from ..state import FdState, NamedFd
from ..transports import Listener, Stream
from . import handshake, lineage as lineage_env, lines
from .handshake import NEW, OLD, Event, Handshake, State
from .reasons import reason
from .spawn import Child, spawn

__all__ = ["Handover", "NewSide", "OldSide"]

Pause = Callable[[], Awaitable[FdState | None]]
Resume = Callable[[], Awaitable[None]]
Progress = Callable[[str], object]

#: The longest report taken from the new generation (one short JSON line).
REPORT_BYTES = 1 << 16
#: Environment variables that describe this process only, never the next generation.
_NOT_INHERITED = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", lineage_env.ENV)


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
    ) -> None:
        super().__init__(OLD, "the old generation", progress)
        self.generation = generation
        self.start_timeout = start_timeout
        self.ready_timeout = ready_timeout
        self.handover_timeout = handover_timeout

    async def hand_on(
        self,
        argv: Sequence[str],
        listeners: Mapping[str, int],
        pause: Pause | None,
        resume: Resume | None,
    ) -> Handover:
        """Start ``argv`` as the next generation and hand it ``listeners`` and what
        ``pause`` returns.  On any failure the new generation is killed and
        ``resume`` runs (if ``pause`` was called) before the error goes on."""
        ours: list[socket.socket] = []
        child: Child | None = None
        try:
            child = self._spawn(argv, ours)
            try:
                sent = FdState([NamedFd(name, 0, fd) for name, fd in listeners.items()])
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
            except UpgradeFailed:
                raise
            except (FdChannelError, OSError) as exc:
                raise UpgradeFailed(f"the upgrade to {child.describe()} failed: {exc}") from exc
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._roll_back(child, resume if pause is not None else None)
            raise
        finally:
            for s in ours:
                s.close()
        return Handover(child, paused, len(handed))

    def commit(self) -> None:
        """The new generation serves: nothing is rolled back from here on."""
        self.handshake.fire(Event.COMMIT)

    def _spawn(self, argv: Sequence[str], ours: list[socket.socket]) -> Child:
        theirs: list[socket.socket] = []
        try:
            for _ in range(3):
                mine, other = socket.socketpair()
                ours.append(mine)
                theirs.append(other)
            cpr, control, handover = (s.fileno() for s in theirs)
            lineage = lineage_env.Lineage(cpr, control, handover, os.getpid(), self.generation + 1)
            env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
            env[lineage_env.ENV] = lineage.encode()
            child = spawn(argv, env, keep=lineage.fds())
        finally:
            for s in theirs:
                s.close()
        self._fire(Event.SPAWN)
        return child

    async def _roll_back(self, child: Child | None, resume: Resume | None) -> None:
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
            raise UpgradeFailed(
                f"the new generation (pid {child.pid}) was not ready within {self.ready_timeout} s"
            )
        if not line:
            raise UpgradeFailed(f"the new generation ({await _fate(child)}) hung up before ready")
        failure = handshake.report(lines.decode(line))
        if failure is not None:
            raise UpgradeFailed(f"the new generation (pid {child.pid}) failed its start: {failure}")

    @staticmethod
    async def _send(
        channel: socket.socket, state: FdState, timeout: float, child: Child, what: str
    ) -> None:
        """One cpr exchange with the new generation, on our end of a socketpair."""
        try:
            await send_cpr(f"fd:{channel.fileno()}", state, timeout=timeout)
        except FdChannelError as exc:
            raise UpgradeFailed(
                f"the new generation ({await _fate(child)}) did not take {what}: {exc}"
            ) from exc


class NewSide(_Side):
    """The new generation's end, over what ``lineage`` names (ours to close)."""

    def __init__(self, lineage: lineage_env.Lineage, progress: Progress) -> None:
        super().__init__(NEW, "the new generation", progress)
        self.lineage = lineage
        self.parent = lineage.parent
        self._links: tuple[int, ...] = (lineage.control, lineage.handover)

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
        self.close()
        received = await _receive(handover, timeout, f"the handover from pid {self.parent} failed")
        self._fire(Event.HANDOVER_RECEIVED)
        try:
            with self._old_generation():
                await received.accept()  # the commit: from here on we serve
        except BaseException:
            received.state.close()
            raise
        self._fire(Event.SERVE)
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

    def close(self) -> None:
        """Close the links to the old generation (the cpr one closes with its receipt)."""
        for fd in self._links:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._links = ()

    @contextlib.contextmanager
    def _old_generation(self) -> Iterator[None]:
        """A link to the old generation breaking: it went away (exited, or was killed)."""
        try:
            yield
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise UpgradeFailed(
                f"the old generation (pid {self.parent}) went away: {reason(exc)}"
            ) from exc


async def _fate(child: Child) -> str:
    """What became of a child whose channel broke: it usually has just exited."""
    await child.wait(0.5)
    return child.describe()


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
