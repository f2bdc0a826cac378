"""A first process that stays: ``fdchannel run -- CMD`` for servers that upgrade in a container.

The first process of a PID namespace (a container's PID 1) is its init: when
it exits, the kernel kills every other process in the namespace.  A server
that upgrades itself replaces its first generation by a child of it, and the
first generation then exits: as PID 1, that would take the new generation,
and the service, with it.  So a small supervisor stays PID 1 instead (or,
outside a PID namespace, makes itself a child subreaper), starts CMD as the
first generation and follows the service's main process the way systemd
does:

* It makes a notification socket of its own and exports ``NOTIFY_SOCKET``
  to CMD; each generation already sends ``READY=1``, ``RELOADING=1``,
  ``STATUS=`` and, once an upgrade commits, ``MAINPID=<new pid>`` from the
  old generation.  A datagram is believed only from a process of ours (a
  descendant) running as our user or root, and ``MAINPID=`` only for a
  live descendant.
* Signals meant for the service (``SIGTERM``, ``SIGINT``, ``SIGHUP``, the
  upgrade trigger, ``SIGUSR1``, ``SIGUSR2``, ``SIGQUIT``) go to the current
  main process.
* Every process that ends up its child is reaped; generations that exit
  after handing over are just that.
* When the main process exits without having named a successor, the
  service is over: what is left gets SIGTERM, SIGKILL after a grace, and
  the supervisor exits with the main process's status (its exit code, or
  128 + the signal that killed it).

``MainProcess`` holds who the main process is, fed with datagrams, exits
and signals and answering with what to do (no I/O: tests/upgrade/
test_supervisor.py runs it through a table).  ``Supervisor`` is the
blocking loop around it: ``poll`` on the notification socket, a signal
wakeup pipe and a pidfd of the main process.  It imports no event loop,
and CMD inherits none of its descriptors.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import select
import shlex
import shutil
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Protocol

from ..errors import FdChannelError
from ..text import printable
from .wait_status import exit_code, status_text

__all__ = [
    "FORWARDED",
    "CannotRun",
    "Follow",
    "Forward",
    "Hurry",
    "Log",
    "MainProcess",
    "Processes",
    "ProcTree",
    "Stop",
    "Supervisor",
    "SupervisorError",
    "exit_code",
    "status_text",
]

#: Signals passed on to the main process (SIGHUP asks an Upgrader to upgrade).
FORWARDED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGQUIT,
)
#: Once the service is over, one of these again ends the grace at once.
_HURRY = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
#: systemd reads at most this much of a notification, and ignores a longer one whole.
MAX_DATAGRAM = 4096
#: After SIGKILL, processes are waited for this long at most (one in D state may linger).
KILL_WAIT = 5.0
_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid
_PR_SET_CHILD_SUBREAPER = 36


class SupervisorError(FdChannelError):
    """The supervisor cannot work here (no /proc of its PID namespace, no subreaper)."""


class CannotRun(FdChannelError):
    """CMD could not be started; ``exit_status`` is a shell's: 127 when there is no
    such program, 126 when it is there but cannot be run (a bad ``#!`` line too)."""

    def __init__(self, program: str, error: OSError, *, found: bool) -> None:
        super().__init__(f"cannot run {program!r}: {error.strerror or error}")
        self.program = program
        self.error = error
        self.exit_status = 126 if found else 127


# ----------------------------------------------------------------------
# Who the main process is: no I/O.


@dataclass(frozen=True)
class Log:
    """A line for whoever watches; ``important`` ones are shown even when quiet."""

    text: str
    important: bool = False


@dataclass(frozen=True)
class Follow:
    """``pid`` is the main process now: watch it."""

    pid: int


@dataclass(frozen=True)
class Forward:
    """Send ``signum`` to the main process ``pid``."""

    pid: int
    signum: int


@dataclass(frozen=True)
class Stop:
    """The main process exited: the service is over, stop what is left."""


@dataclass(frozen=True)
class Hurry:
    """Asked to stop again while stopping: SIGKILL what is left now."""


Effect = Log | Follow | Forward | Stop | Hurry


class Processes(Protocol):
    """What the supervisor may ask about a process (``ProcTree`` reads /proc)."""

    def descendant(self, pid: int) -> bool:
        """Whether ``pid`` exists (a zombie too) and is ours: a child, grandchild, ..."""
        ...

    def alive(self, pid: int) -> bool:
        """Whether ``pid`` runs (exists and has not exited)."""
        ...


class MainProcess:
    """Who the service's main process is, fed with what happens; answers with effects.

    ``pid`` starts as CMD's.  ``datagram`` takes a notification (sender pid
    and uid from its credentials, the raw bytes), ``exited`` a process's
    exit (its wait status, None when someone else reaped it), ``signalled``
    a signal to pass on.  Once the main process exits without having named
    a successor, ``ended`` is set and ``status`` is its wait status.
    """

    def __init__(self, pid: int, *, uid: int, me: int) -> None:
        self.pid = pid
        #: Our (effective) uid: a notification from any other uid but root is ignored.
        self.uid = uid
        #: Our own pid (1 in a container): never the main process.
        self.me = me
        #: Pids that were the main process once: their exits are just reaped.
        self.former: set[int] = set()
        self.ready = False
        self.text: str | None = None  # the last STATUS=
        self.ended = False
        self.status: int | None = None
        #: A stop signal passed on (SIGTERM, SIGINT, SIGQUIT): it follows the main
        #: process to a successor named later (an upgrade on probation keeps the old
        #: generation main until the probation ends; the new one must stop too).
        self.stopping: int | None = None

    @property
    def exit_code(self) -> int:
        """What the supervisor exits with: the main process's code, or 128 + its signal."""
        return exit_code(self.status)

    def datagram(self, sender: int, uid: int, payload: bytes, processes: Processes) -> list[Effect]:
        """A notification from pid ``sender`` running as ``uid``."""
        if self.ended:
            return []
        why = self._refuse(sender, uid, payload, processes)
        if why is not None:
            return [Log(f"ignored a notification from pid {sender}: {why}", important=True)]
        fields = _fields(payload)
        effects: list[Effect] = []
        said: list[str] = []
        if "MAINPID" in fields:
            effects += self._main_pid(sender, fields["MAINPID"], processes, said)
        if fields.get("RELOADING") == "1":
            self.ready = False
            said.append("reloading")
        if fields.get("STOPPING") == "1":
            said.append("stopping")
        if fields.get("READY") == "1" and not self.ready:
            self.ready = True
            said.append("ready")
        status = fields.get("STATUS")
        if status is not None and status != self.text:
            self.text = status
            said.append(f"status: {printable(status)}")
        if said:
            effects.insert(0, Log(f"pid {sender}: {'; '.join(said)}"))
        return effects

    def _refuse(self, sender: int, uid: int, payload: bytes, processes: Processes) -> str | None:
        """Why a notification is not believed, or None."""
        if uid not in (self.uid, 0):
            return f"it runs as uid {uid}, not as ours ({self.uid}) or root"
        if sender <= 0 or sender == self.me or not processes.descendant(sender):
            return "it is not one of our processes"
        if len(payload) > MAX_DATAGRAM:
            return f"longer than {MAX_DATAGRAM} bytes"
        return None

    def _main_pid(
        self, sender: int, value: str, processes: Processes, said: list[str]
    ) -> list[Effect]:
        try:
            pid = int(value, 10)
        except ValueError:
            pid = 0
        why: str | None = None
        if pid <= 0 or pid == self.me:
            why = "not a pid it can name"
        elif pid == self.pid:
            return []
        elif not processes.alive(pid):
            why = f"pid {pid} is not running"
        elif not processes.descendant(pid):
            why = f"pid {pid} is not one of our processes"
        if why is not None:
            text = f"ignored MAINPID={printable(value)} from pid {sender}: {why}"
            return [Log(text, important=True)]
        said.append(f"main process pid {self.pid} -> pid {pid}")
        self.former.add(self.pid)
        self.former.discard(pid)
        self.pid = pid
        if self.stopping is not None:
            name = signal.Signals(self.stopping).name
            return [Follow(pid), Forward(pid, self.stopping), Log(f"{name} -> pid {pid} too")]
        return [Follow(pid)]

    def exited(self, pid: int, status: int | None) -> list[Effect]:
        """``pid`` exited; ``status`` is its wait status if we reaped it."""
        if pid == self.pid and not self.ended:
            self.ended = True
            self.status = status
            text = f"main process pid {pid} exited ({status_text(status)})"
            return [Log(text, important=True), Stop()]
        if pid == self.pid and self.status is None and status is not None:
            self.status = status  # it was not our child; its parent left it to us
            return [Log(f"main process pid {pid}: {status_text(status)}")]
        if pid in self.former:
            self.former.discard(pid)
            return [Log(f"pid {pid} (replaced) exited ({status_text(status)})")]
        return []

    def signalled(self, signum: int) -> list[Effect]:
        """A signal for the service arrived."""
        name = signal.Signals(signum).name
        if not self.ended:
            if signum in _HURRY:
                self.stopping = signum
            return [Forward(self.pid, signum), Log(f"{name} -> pid {self.pid}")]
        if signum in _HURRY:
            return [Hurry(), Log(f"{name} again: not waiting for what is left", important=True)]
        return []


def _fields(payload: bytes) -> dict[str, str]:
    """``KEY=VALUE`` lines (the first of a key counts); other lines are skipped."""
    fields: dict[str, str] = {}
    for line in payload.decode(errors="replace").split("\n"):
        key, equals, value = line.partition("=")
        if equals:
            fields.setdefault(key, value)
    return fields


# ----------------------------------------------------------------------
# The process tree, as /proc shows it.


class ProcTree:
    """``Processes`` from /proc: the ancestors of a pid, up to ``root`` (us)."""

    def __init__(self, root: int) -> None:
        self.root = root

    @staticmethod
    def stat(pid: int) -> tuple[str, int] | None:
        """(state, parent pid) of ``pid``, None if there is no such process."""
        try:
            with open(f"/proc/{pid}/stat", "rb") as file:
                text = file.read()
        except (FileNotFoundError, ProcessLookupError):
            return None
        # Field 2, the command name in parentheses, may hold spaces and ")".
        fields = text[text.rindex(b")") + 2 :].split()
        return fields[0].decode(), int(fields[1])

    def descendant(self, pid: int) -> bool:
        seen: set[int] = set()
        while pid > 0 and pid not in seen:
            seen.add(pid)
            found = self.stat(pid)
            if found is None:
                return False
            pid = found[1]
            if pid == self.root:
                return True
        return False

    def alive(self, pid: int) -> bool:
        found = self.stat(pid)
        return found is not None and found[0] not in ("Z", "X", "x")

    def descendants(self) -> list[int]:
        """Every process under ``root``, deepest last."""
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                found = self.stat(int(entry))
                if found is not None:
                    children.setdefault(found[1], []).append(int(entry))
        found_all: list[int] = []
        level = [self.root]
        while level:
            level = [child for parent in level for child in children.get(parent, ())]
            found_all += level
        return found_all


def check_proc(me: int) -> None:
    """/proc must be our PID namespace's: the descendant checks read it."""
    try:
        shown = os.readlink("/proc/self")
    except OSError as exc:
        raise SupervisorError(f"/proc is not readable ({exc.strerror}): mount it") from None
    if shown != str(me):
        raise SupervisorError(
            f"/proc belongs to another PID namespace (it calls us {shown}, we are {me}): "
            "mount /proc for this one (unshare --pid --fork --mount-proc)"
        )


def become_subreaper() -> None:
    """Adopt every orphaned descendant (prctl PR_SET_CHILD_SUBREAPER), as init would."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        number = ctypes.get_errno()
        raise SupervisorError(f"cannot become a child subreaper: {os.strerror(number)}")


# ----------------------------------------------------------------------
# The loop's parts.


_Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None


class _Signals:
    """Signals as bytes on a pipe (``signal.set_wakeup_fd``), for ``poll``."""

    def __init__(self, signums: Sequence[int]) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.signums = list(signums)
        self._previous: dict[int, _Handler] = {}
        self._wakeup = -1

    def __enter__(self) -> _Signals:
        self._wakeup = signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)
        for signum in self.signums:
            # A Python handler (doing nothing) makes the C handler write the
            # number to the pipe; and PID 1 gets no signal it has no handler for.
            self._previous[signum] = signal.signal(signum, _ignore)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        signal.set_wakeup_fd(self._wakeup)
        os.close(self.read_fd)
        os.close(self.write_fd)

    def read(self) -> list[int]:
        """The signals that arrived since the last call, in order."""
        data = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.read_fd, 512):
                data += chunk
        return list(data)


def _ignore(signum: int, frame: FrameType | None) -> None:
    """The wakeup pipe carries the signal; nothing else to do here."""


class _NotifySocket:
    """Our NOTIFY_SOCKET: an abstract datagram socket that learns each sender's credentials."""

    def __init__(self) -> None:
        flags = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
        self.sock = socket.socket(socket.AF_UNIX, flags)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            # Abstract: nothing to remove, nothing others can replace.  Anyone in
            # the network namespace may send to it: the credentials decide.
            name = f"fdchannel-run/{os.getpid()}/{secrets.token_hex(8)}"
            self.sock.bind(b"\0" + name.encode())
        except BaseException:
            self.sock.close()
            raise
        #: What NOTIFY_SOCKET says.
        self.address = "@" + name

    def close(self) -> None:
        self.sock.close()

    def receive(self) -> Iterator[tuple[int, int, bytes]]:
        """(sender pid, uid, bytes) for each datagram waiting; of one longer than
        MAX_DATAGRAM, the first MAX_DATAGRAM + 1 bytes (too long, so refused)."""
        space = socket.CMSG_SPACE(_UCRED.size)
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(MAX_DATAGRAM + 1, space)
            except (BlockingIOError, InterruptedError):
                return
            pid = uid = -1
            for level, kind, body in ancillary:
                if level != socket.SOL_SOCKET:
                    continue
                if kind == socket.SCM_CREDENTIALS and len(body) >= _UCRED.size:
                    pid, uid, _ = _UCRED.unpack_from(body)
                elif kind == socket.SCM_RIGHTS:  # descriptors nobody asked for
                    usable = len(body) - len(body) % 4
                    for (fd,) in struct.iter_unpack("i", body[:usable]):
                        os.close(fd)
            if pid >= 0:
                yield pid, uid, data


class _Pidfd:
    """A pidfd of the main process: readable once it has exited."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fd: int | None
        try:
            self.fd = os.pidfd_open(pid)  # close-on-exec
        except ProcessLookupError:
            self.fd = None  # gone (and reaped) already

    def exited(self) -> bool:
        if self.fd is None:
            return True
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        return bool(poller.poll(0))

    def send(self, signum: int) -> None:
        if self.fd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.fd, signum)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class _Terminal:
    """The controlling terminal, when our process group is its foreground and ours
    alone: CMD gets the foreground.

    CMD runs in a process group of its own.  Given the foreground, a Ctrl-C on
    the terminal reaches the service's processes once, not the supervisor too
    (which would pass it on a second time); at the end the foreground comes
    back.  A supervisor sharing its group (started by a script without job
    control) keeps the terminal: taking it would stop the script at its next
    read of it; the terminal's signals then reach the supervisor, which passes
    them on.
    """

    def __init__(self) -> None:
        self.fd: int | None = None
        if os.getpgrp() != os.getpid():
            return
        try:
            fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError:
            return  # no controlling terminal (a container, a service)
        try:
            if os.tcgetpgrp(fd) == os.getpgrp():
                self.fd = fd
                return
        except OSError:
            pass
        os.close(fd)

    def take_back(self, group: int) -> None:
        if self.fd is None:
            return
        try:
            if os.tcgetpgrp(self.fd) == group:
                # A background process group may not take the terminal unless it
                # ignores SIGTTOU (tcsetpgrp(3)).
                previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
                try:
                    os.tcsetpgrp(self.fd, os.getpgrp())
                finally:
                    signal.signal(signal.SIGTTOU, previous)
        except OSError:
            pass
        finally:
            os.close(self.fd)
            self.fd = None


def find_program(name: str, environment: Mapping[bytes, bytes]) -> str:
    """CMD's executable, searched in the PATH it will have, as execvp does."""
    if "/" in name:
        return name
    path = environment.get(b"PATH")
    found = shutil.which(name, path=os.fsdecode(path) if path is not None else os.defpath)
    if found is None:
        error = FileNotFoundError(errno.ENOENT, "no such command (PATH searched)")
        raise CannotRun(name, error, found=False)
    return found


def start(
    argv: Sequence[str],
    environment: Mapping[bytes, bytes],
    terminal: int | None,
    reset: Sequence[int],
) -> int:
    """Fork and exec ``argv`` in a process group of its own; its pid.

    CannotRun if the exec failed (the child told us through a close-on-exec
    pipe, which closing at exec would have said nothing on).  ``terminal``:
    the child takes the foreground of it before exec.  ``reset``: signals
    whose handling the child must not inherit (Python ignores SIGPIPE).
    """
    program = find_program(argv[0], environment)
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    # Blocked across fork: no handler of ours runs in the child.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child, until exec)
            _exec_child(program, argv, environment, terminal, reset, write_end)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    os.close(write_end)
    try:
        said = b""
        while chunk := os.read(read_end, 64):
            said += chunk
    finally:
        os.close(read_end)
    if not said:
        return pid
    os.waitpid(pid, 0)  # it exited at once: 127
    number = int.from_bytes(said[:4], "little") if len(said) >= 4 else errno.EIO
    found = number != errno.ENOENT or os.path.lexists(program)  # ENOENT: or its #! interpreter
    raise CannotRun(program, OSError(number, os.strerror(number)), found=found)


def _exec_child(  # pragma: no cover (runs in the forked child)
    program: str,
    argv: Sequence[str],
    environment: Mapping[bytes, bytes],
    terminal: int | None,
    reset: Sequence[int],
    report: int,
) -> None:
    try:
        signal.set_wakeup_fd(-1)
        for signum in reset:
            signal.signal(signum, signal.SIG_DFL)
        os.setpgid(0, 0)
        if terminal is not None:
            signal.signal(signal.SIGTTOU, signal.SIG_IGN)
            with contextlib.suppress(OSError):
                os.tcsetpgrp(terminal, os.getpid())
            signal.signal(signal.SIGTTOU, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        os.execve(program, list(argv), dict(environment))
    except BaseException as exc:  # anything but an exec: the parent must hear of it
        number = (exc.errno if isinstance(exc, OSError) else None) or errno.EIO
        with contextlib.suppress(OSError):
            os.write(report, number.to_bytes(4, "little"))
    finally:
        os._exit(127)


# ----------------------------------------------------------------------
# The loop.


class Supervisor:
    """Run ``command`` as the first generation and supervise it; ``run()`` returns
    the exit status.  ``grace``: how long what is left after the main process
    exits has between SIGTERM and SIGKILL.  ``log`` gets each line to show
    (``quiet``: only the important ones)."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        grace: float = 10.0,
        log: Callable[[str], object] = print,
        quiet: bool = False,
        environment: Mapping[bytes, bytes] | None = None,
    ) -> None:
        if not command:
            raise ValueError("no command to run")
        self.command = list(command)
        self.grace = grace
        self._log = log
        self.quiet = quiet
        self.environment = dict(os.environb if environment is None else environment)
        self.me = os.getpid()
        #: PID 1 of its namespace: kill(-1) reaches every other process in it.
        self.init = self.me == 1
        self.tree = ProcTree(self.me)
        self._watch: _Pidfd | None = None
        self._hurry = False

    def log(self, effect: Log) -> None:
        if effect.important or not self.quiet:
            self._log(effect.text)

    def run(self) -> int:
        check_proc(self.me)
        if not self.init:
            become_subreaper()
        reset = [*FORWARDED, signal.SIGCHLD, signal.SIGPIPE, signal.SIGXFSZ]
        notify = _NotifySocket()
        terminal = _Terminal()
        group = 0
        try:
            with _Signals([*FORWARDED, signal.SIGCHLD]) as signals:
                environment = {**self.environment, b"NOTIFY_SOCKET": notify.address.encode()}
                pid = group = start(self.command, environment, terminal.fd, reset)
                self.log(Log(f"pid {pid} started: {printable(shlex.join(self.command))}"))
                main = MainProcess(pid, uid=os.geteuid(), me=self.me)
                self._watch = _Pidfd(pid)
                while not main.ended:
                    self._turn(main, signals, notify)
                return self._finish(main, signals, notify)
        finally:
            if self._watch is not None:
                self._watch.close()
            notify.close()
            terminal.take_back(group)

    def _apply(self, main: MainProcess, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Log):
                self.log(effect)
            elif isinstance(effect, Follow):
                if self._watch is not None:
                    self._watch.close()
                self._watch = _Pidfd(effect.pid)
            elif isinstance(effect, Forward):
                if self._watch is not None and self._watch.pid == effect.pid:
                    self._watch.send(effect.signum)
            elif isinstance(effect, Hurry):
                self._hurry = True
            # Stop: main.ended says it, and the loop ends.

    def _turn(self, main: MainProcess, signals: _Signals, notify: _NotifySocket) -> None:
        """Wait for something to happen, then take it in the one order that is right."""
        watch = self._watch
        assert watch is not None
        fds = [notify.sock.fileno(), signals.read_fd]
        if watch.fd is not None:
            fds.append(watch.fd)
        _wait(fds, None if watch.fd is not None else 0)
        # 1. Whether the main process has exited, seen before the datagrams are
        #    read: a datagram is queued before its sender's exit, so whatever the
        #    main process said before exiting (MAINPID=) is read in 2.
        gone = watch.pid if watch.exited() else None
        # 2. The datagrams, before reaping: a zombie sender can still be checked.
        for sender, uid, payload in notify.receive():
            self._apply(main, main.datagram(sender, uid, payload, self.tree))
        # 3. Signals for the service (SIGCHLD only woke us: reaping is next).
        for signum in signals.read():
            if signum != signal.SIGCHLD:
                self._apply(main, main.signalled(signum))
        # 4. Reap; the main process only if its exit was seen in 1.
        self._reap(main, safe=gone)
        # 5. A main process that was not our child: its parent has its status.
        if gone is not None and gone == main.pid and not main.ended:
            self._apply(main, main.exited(gone, None))

    def _reap(self, main: MainProcess, safe: int | None) -> None:
        while True:
            try:
                found = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if found is None or found.si_pid == 0:
                return
            pid = found.si_pid
            if pid == main.pid and not main.ended and pid != safe:
                return  # it exited after step 1: its datagrams first, next turn
            reaped, status = os.waitpid(pid, os.WNOHANG)
            if reaped != pid:
                return
            self._apply(main, main.exited(pid, status))

    def _reap_all(self, main: MainProcess) -> bool:
        """Reap what has exited; whether any child is left."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True
            self._apply(main, main.exited(pid, status))

    def _signal_all(self, signum: int) -> None:
        """``signum`` to every process of ours (as PID 1: every other one of the namespace)."""
        if self.init:
            with contextlib.suppress(ProcessLookupError):
                os.kill(-1, signum)
            return
        for pid in self.tree.descendants():
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            try:
                # Still ours once the pidfd is open: the pid was not reused meanwhile.
                if self.tree.descendant(pid):
                    with contextlib.suppress(ProcessLookupError):
                        signal.pidfd_send_signal(pidfd, signum)
            finally:
                os.close(pidfd)

    def _wait_children(
        self,
        main: MainProcess,
        signals: _Signals,
        notify: _NotifySocket,
        seconds: float,
        *,
        hurried: bool,
    ) -> bool:
        """Reap until no child is left (True), or ``seconds`` pass or, if ``hurried``
        counts, a stopping signal comes again (False)."""
        deadline = time.monotonic() + seconds
        while self._reap_all(main):
            left = deadline - time.monotonic()
            if left <= 0 or (hurried and self._hurry):
                return False
            _wait([notify.sock.fileno(), signals.read_fd], left)
            for _ in notify.receive():
                pass  # the service is over; read, so that no sender blocks on a full queue
            for signum in signals.read():
                if signum != signal.SIGCHLD:
                    self._apply(main, main.signalled(signum))
        return True

    def _finish(self, main: MainProcess, signals: _Signals, notify: _NotifySocket) -> int:
        """The main process exited: SIGTERM what is left, SIGKILL after the grace."""
        if self._reap_all(main):
            self.log(Log(f"stopping what is left: SIGTERM, SIGKILL after {self.grace:g} s"))
            self._signal_all(signal.SIGTERM)
            if not self._wait_children(main, signals, notify, self.grace, hurried=True):
                self.log(Log("SIGKILL to what is left", important=True))
                self._signal_all(signal.SIGKILL)
                if not self._wait_children(main, signals, notify, KILL_WAIT, hurried=False):
                    self.log(Log(f"processes still left after {KILL_WAIT:g} s", important=True))
        if main.status is None:
            text = f"pid {main.pid} was not our child: its exit status is unknown"
            self.log(Log(text, important=True))
        code = main.exit_code
        self.log(Log(f"exit status {code}"))
        return code


def _wait(fds: list[int], timeout: float | None) -> None:
    """Until one of ``fds`` is readable or ``timeout`` seconds pass (None: no limit)."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    poller.poll(None if timeout is None else max(timeout, 0) * 1000)
