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
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from ..address import Address, TcpAddress, UnixAddress, parse_address
from ..credentials import CredentialPolicy, same_user_or_root
from ..errors import FdChannelError, UpgradeBusy, UpgradeError, UpgradeFailed
from ..fd_names import inherited_fds
from ..handoff.cpr import ReceivedCpr, receive_cpr, send_cpr
from ..sockdiag import bound_to_file
from ..state import FdState, NamedFd
from ..text import printable
from ..transports import FdAttribute, Listener, Stream, listen
from ..unix_sockets import BACKLOG, bind_listening
from . import files, lineage as lineage_env, pidfile as pidfiles, systemd
from .spawn import Child, spawn

__all__ = ["CONTROL", "Upgrader", "UpgradeResult", "default_command"]

log = logging.getLogger("fdchannel.upgrade")

#: The name the control socket travels under between generations.
CONTROL = "fdchannel.upgrade.control"
#: What a progress callback hears, in order (old side, then new side):
OLD_STEPS = ("spawned", "listeners-sent", "ready-received", "paused", "handed-over")
NEW_STEPS = ("inherited", "acknowledged", "ready-sent", "handover-received", "serving")
#: The longest control request taken (it is one word).
_REQUEST_BYTES = 4096
#: Environment variables that describe this process only, never the next generation.
_NOT_INHERITED = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", lineage_env.ENV)

Pause = Callable[[], Awaitable[FdState | None]]
Resume = Callable[[], Awaitable[None]]


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
        self._lineage: lineage_env.Lineage | None = None
        self._received: dict[str, int] = {}  # handed to us, not claimed yet
        self._held: dict[str, int] = {}  # ours to hand on, by name
        self._given: list[Listener] = []  # returned by listen(), closed with us
        self._phase = "new"  # entered, ready, upgrading, replaced, closed
        self._successor: int | None = None
        self._replaced: anyio.Event | None = None
        self._tasks: anyio.abc.TaskGroup | None = None
        self._exit = contextlib.AsyncExitStack()
        self._control_listener: Listener | None = None
        #: A control client has this long to send its request (and to take the answer).
        self.control_timeout = 10.0
        #: Control clients answered at once; one more is refused.
        self.control_clients = 8
        self._replies = 0
        self._quiet: anyio.Event | None = None

    # ------------------------------------------------------------------
    # Entering: inherit what the previous generation handed over.

    @property
    def inherited(self) -> bool:
        """Whether a previous generation started this one."""
        return self._lineage is not None

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
            self._lineage = lineage_env.take()
            if self._lineage is not None:
                await self._inherit(self._lineage)
            self._tasks = await self._exit.enter_async_context(anyio.create_task_group())
            if self.trigger is not None:
                await self._tasks.start(self._watch_signal, self.trigger)
        except BaseException:
            await self._close(failed=None)
            raise
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        error = exc_info[1]
        await self._close(failed=None if error is None else _reason(error))

    async def aclose(self) -> None:
        await self._close(failed=None)

    async def _inherit(self, lineage: lineage_env.Lineage) -> None:
        self.generation = lineage.generation
        received = await _receive(
            lineage.cpr,
            self.start_timeout,
            f"the listeners did not arrive from pid {lineage.parent}",
        )
        with received.state as state:
            for entry in state.fds:
                self._received[entry.name] = os.dup(entry.fd)
        self._progress("inherited")
        with _old_generation(lineage.parent):
            await received.accept()  # the close-as-ack: the listeners are ours
        self._progress("acknowledged")
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
                fd = _from_socket_activation(name, parsed)
            if fd is None:
                fd = await _bind(parsed, mode=mode, backlog=backlog)
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
        if self._lineage is not None:
            handed = await self._take_over(self._lineage)
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
                self._tasks.start_soon(self._serve_control, self._control_listener)
        except BaseException:
            handed.close()
            raise
        return handed

    async def _take_over(self, lineage: lineage_env.Lineage) -> FdState:
        with _old_generation(lineage.parent):
            await _tell(lineage.control, {"ready": True})
        self._progress("ready-sent")
        handover = os.dup(lineage.handover)
        self._close_lineage()
        received = await _receive(
            handover, self.handover_timeout, f"the handover from pid {lineage.parent} failed"
        )
        self._progress("handover-received")
        try:
            with _old_generation(lineage.parent):
                await received.accept()  # the commit: from here on we serve
        except BaseException:
            received.state.close()
            raise
        self._progress("serving")
        return received.state

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
            reason = _reason(exc)
            systemd.notify(READY=1, STATUS=f"serving; the last upgrade failed: {reason}")
            self._record(attempt, False, reason)
            # One log line, whatever the new generation's exception text holds.
            shown = printable(reason)
            log.warning("generation %d: upgrade failed, still serving: %s", self.generation, shown)
            raise
        warnings = list(result.warnings)
        self._record(attempt, True, f"pid {result.pid} serves", pid=result.pid, warnings=warnings)
        log.info("generation %d: replaced by pid %d", self.generation, result.pid)
        return result

    async def _upgrade(self, command: Sequence[str] | None) -> UpgradeResult:
        started = time.monotonic()
        argv = list(command or self.command or default_command())
        ours: list[socket.socket] = []
        child: Child | None = None
        paused = False
        try:
            theirs: list[socket.socket] = []
            try:
                for _ in range(3):
                    mine, other = socket.socketpair()
                    ours.append(mine)
                    theirs.append(other)
                cpr, control, handover = (s.fileno() for s in theirs)
                lineage = lineage_env.Lineage(
                    cpr, control, handover, os.getpid(), self.generation + 1
                )
                env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
                env[lineage_env.ENV] = lineage.encode()
                child = spawn(argv, env, keep=lineage.fds())
            finally:
                for s in theirs:
                    s.close()
            self._progress("spawned")
            try:
                await self._send_listeners(ours[0], child)
                self._progress("listeners-sent")
                await self._await_ready(ours[1], child)
                self._progress("ready-received")
                handed = FdState()
                pause_started = time.monotonic()
                if self.pause is not None:
                    paused = True
                    handed = await self.pause() or FdState()
                self._progress("paused")
                await self._hand_over(ours[2], handed, child)
                self._progress("handed-over")
            except UpgradeFailed:
                raise
            except (FdChannelError, OSError) as exc:
                raise UpgradeFailed(f"the upgrade to {child.describe()} failed: {exc}") from exc
        except BaseException:
            with anyio.CancelScope(shield=True):
                if child is not None:
                    await child.kill()
                if paused and self.resume is not None:
                    await self.resume()
            raise
        finally:
            for s in ours:
                s.close()
        # The commit: the new generation acknowledged the handover and serves.
        done = time.monotonic()
        self._phase = "replaced"
        self._successor = child.pid
        with anyio.CancelScope(shield=True):
            warnings = await self._commit(child)
        return UpgradeResult(
            child.pid,
            self.generation + 1,
            done - started,
            done - pause_started,
            len(handed),
            tuple(warnings),
        )

    async def _commit(self, child: Child) -> list[str]:
        """Let the new generation be the one: past the commit nothing is rolled back,
        so what goes wrong here is logged and returned as warnings, and this
        generation goes on to be replaced (and drain) whatever happens."""
        warnings: list[str] = []

        def warn(what: str, exc: BaseException) -> None:
            warnings.append(f"{what}: {_reason(exc)}")
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

    async def _send_listeners(self, channel: socket.socket, child: Child) -> None:
        entries = [NamedFd(name, 0, fd) for name, fd in self._held.items()]
        await _send(channel, FdState(entries), self.start_timeout, child, "the listeners")

    async def _await_ready(self, channel: socket.socket, child: Child) -> None:
        stream = Stream.from_fd(os.dup(channel.fileno()))
        line: bytes | None = None
        async with stream:
            with anyio.move_on_after(self.ready_timeout):
                try:
                    line = await BufferedByteReceiveStream(stream).receive_until(b"\n", 1 << 16)
                except (anyio.IncompleteRead, anyio.EndOfStream, anyio.BrokenResourceError):
                    line = b""  # it hung up: it is exiting, or gave up on us
                except anyio.DelimiterNotFound:
                    line = b"{}"
        if line is None:
            raise UpgradeFailed(
                f"the new generation (pid {child.pid}) was not ready within {self.ready_timeout} s"
            )
        if not line:
            raise UpgradeFailed(f"the new generation ({await _fate(child)}) hung up before ready")
        try:
            message = json.loads(line)
        except ValueError:
            message = {}
        if isinstance(message, dict) and message.get("ready") is True:
            return
        reason = message.get("failed") if isinstance(message, dict) else None
        raise UpgradeFailed(
            f"the new generation (pid {child.pid}) failed its start: "
            f"{reason if isinstance(reason, str) else 'an unreadable report'}"
        )

    async def _hand_over(self, channel: socket.socket, state: FdState, child: Child) -> None:
        await _send(channel, state, self.handover_timeout, child, "the handover")

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

    async def _upgrade_logged(self) -> None:
        try:
            await self.upgrade()
        except UpgradeError:
            pass  # upgrade() logged and recorded it
        except Exception:  # a trigger must not bring the server down
            log.exception("generation %d: the upgrade went wrong", self.generation)

    async def _serve_control(self, listener: Listener) -> None:
        async with listener:
            await listener.serve(self._answer)

    async def _answer(self, stream: Stream) -> None:
        """Answer one control request in a scope of its own: whatever goes wrong with
        one client (silence, a half or huge line, leaving, an error of ours) is
        logged, answered if the client is still there, and stays here."""
        self._replies += 1
        try:
            if self._replies > self.control_clients:
                reply: dict[str, Any] | None = _refusal(
                    f"too many control clients: at most {self.control_clients} at once"
                )
            else:
                reply = await self._reply(stream)
            if reply is not None:
                with anyio.move_on_after(self.control_timeout):
                    await stream.send(json.dumps(reply).encode() + b"\n")
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            log.warning("control socket: the client left before its answer: %s", _reason(exc))
        except Exception:
            log.exception("control socket: answering a request went wrong")
        finally:
            self._replies -= 1
            if not self._replies and self._quiet is not None:
                self._quiet.set()

    async def _reply(self, stream: Stream) -> dict[str, Any] | None:
        """The answer to the request on ``stream``; None when the client left."""
        request: bytes | None = None
        with anyio.move_on_after(self.control_timeout):
            try:
                request = await BufferedByteReceiveStream(stream).receive_until(
                    b"\n", _REQUEST_BYTES
                )
            except anyio.DelimiterNotFound:
                return _refusal(f"a request is one line, not longer than {_REQUEST_BYTES} bytes")
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
                log.warning("control socket: a client left without a request")
                return None
        if request is None:
            return _refusal(f"no request within {self.control_timeout} s")
        if request.strip() != b"upgrade":
            return _refusal("unknown request; send 'upgrade'")
        try:
            return (await self.upgrade()).as_json()
        except UpgradeBusy as exc:
            return {"ok": False, "busy": True, "error": str(exc)}
        except UpgradeError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # ours: logged, answered, and the server serves on
            log.exception("generation %d: the upgrade went wrong", self.generation)
            return {"ok": False, "error": f"the upgrade went wrong: {_reason(exc)}"}

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

    def _close_lineage(self) -> None:
        if self._lineage is not None:
            for fd in (self._lineage.control, self._lineage.handover):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._lineage = lineage_env.Lineage(-1, -1, -1, self._lineage.parent, 0)

    async def _close(self, failed: str | None) -> None:
        if self._phase == "closed":
            return
        if self._lineage is not None and self._lineage.control >= 0 and self._phase == "entered":
            await _report_failure(self._lineage.control, failed or "it exited before ready()")
        replaced = self._phase == "replaced"
        self._phase = "closed"
        if self._replies:  # let a control reply in flight go out
            self._quiet = anyio.Event()
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                await self._quiet.wait()
        if self._tasks is not None:
            self._tasks.cancel_scope.cancel()
        await self._exit.aclose()  # the task group: exited in the task that entered it
        with anyio.CancelScope(shield=True):
            for listener in self._given:
                await listener.aclose()
        self._given.clear()
        self._close_lineage()
        for fd in self._received.values():
            os.close(fd)
        self._received.clear()
        for fd in self._held.values():
            if not replaced:
                _unlink_if_ours(fd)  # the last generation leaves no socket file behind
            os.close(fd)
        self._held.clear()
        if not replaced and self.pidfile is not None:  # nor a pidfile naming it
            pidfiles.remove_pid(self.pidfile, os.getpid(), pidfiles.process_start(os.getpid()))


def _refusal(error: str) -> dict[str, Any]:
    """A control reply saying no, and why (logged: the client may be up to no good)."""
    log.warning("control socket: %s", error)
    return {"ok": False, "error": error}


def _reason(error: BaseException) -> str:
    """One line for what made a generation give up (task groups unwrapped)."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(_reason(e) for e in error.exceptions)
    return str(error) or type(error).__name__


async def _fate(child: Child) -> str:
    """What became of a child whose channel broke: it usually has just exited."""
    await child.wait(0.5)
    return child.describe()


async def _send(
    channel: socket.socket, state: FdState, timeout: float, child: Child, what: str
) -> None:
    """The old side of one cpr exchange with the new generation, on our end of a socketpair."""
    try:
        await send_cpr(f"fd:{channel.fileno()}", state, timeout=timeout)
    except FdChannelError as exc:
        raise UpgradeFailed(
            f"the new generation ({await _fate(child)}) did not take {what}: {exc}"
        ) from exc


async def _receive(fd: int, timeout: float, failure: str) -> ReceivedCpr:
    """The new side of one cpr exchange, on ``fd`` (ours from here on)."""
    source = Listener.from_fd(fd, policy=None)
    try:
        return await receive_cpr(source, timeout=timeout)
    except FdChannelError as exc:
        raise UpgradeFailed(f"{failure}: {exc}") from exc
    finally:
        await source.aclose()


@contextlib.contextmanager
def _old_generation(parent: int) -> Iterator[None]:
    """A link to the old generation breaking: it went away (exited, or was killed)."""
    try:
        yield
    except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
        raise UpgradeFailed(f"the old generation (pid {parent}) went away: {_reason(exc)}") from exc


async def _tell(control: int, message: dict[str, object]) -> None:
    """One JSON line to the old generation on the control link."""
    async with Stream.from_fd(os.dup(control)) as stream:
        await stream.send(json.dumps(message).encode() + b"\n")


async def _report_failure(control: int, reason: str) -> None:
    """Tell the old generation why this one will not be ready (best effort)."""
    quiet = contextlib.suppress(OSError, FdChannelError, anyio.BrokenResourceError)
    with anyio.CancelScope(shield=True), anyio.move_on_after(1), quiet:
        await _tell(control, {"failed": reason})


def _from_socket_activation(name: str, address: Address) -> int | None:
    """A duplicate of the descriptor systemd passed under ``name`` or bound to ``address``."""
    passed = inherited_fds()
    fd = passed.get(name)
    if fd is None:
        fd = next((f for f in passed.values() if _bound_to(f, address)), None)
    return None if fd is None else os.dup(fd)


def _bound_to(fd: int, address: Address) -> bool:
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return False
    with sock:
        try:
            local = sock.getsockname()
        except OSError:
            return False
    if isinstance(address, UnixAddress) and sock.family == socket.AF_UNIX:
        want = ("\0" + address.path) if address.abstract else address.path
        return isinstance(local, str | bytes) and os.fsdecode(local) == want
    if isinstance(address, TcpAddress) and sock.family in (socket.AF_INET, socket.AF_INET6):
        return str(local[1]) == address.port and _same_host(local[0], address.host)
    return False


def _same_host(bound: str, asked: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(bound) == ipaddress.ip_address(asked.strip("[]"))
    except ValueError:
        return False


async def _bind(address: Address, *, mode: int, backlog: int) -> int:
    """A new listening socket for ``address``; its descriptor is ours."""
    if isinstance(address, UnixAddress):
        sock, _ = bind_listening(address, mode=mode, backlog=backlog)
        return sock.detach()  # the socket file is removed by the last generation (_close)
    async with await listen(address) as listener:
        fd = listener.extra(FdAttribute.fileno, None)
        if fd is None:  # e.g. fd: naming a file or a connected stream
            raise UpgradeError(f"{address} is not a listening socket: it cannot be handed on")
        return os.dup(fd)


def _unlink_if_ours(fd: int) -> None:
    """Remove a unix listener's socket file if this very socket is bound to it."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    with sock:
        if sock.family != socket.AF_UNIX:
            return
        path = sock.getsockname()
        if not path or (isinstance(path, str) and path.startswith("\0")):
            return  # abstract or unnamed
        name = os.fsencode(path)
        with contextlib.suppress(OSError):
            found = bound_to_file(name, os.lstat(name))
            if found is not None and os.fstat(fd).st_ino in found.listening:
                os.unlink(name)
