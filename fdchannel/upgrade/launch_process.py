"""The server a ``fdchannel serve`` generation runs: started with its sockets at 3, 4, ...,
watched through a pidfd, signalled, stopped, and its stderr relayed with a tail kept.

The server is forked and exec'd here rather than spawned, because three
things must happen in the child between the two, and ``posix_spawn`` can
do none of them:

* ``LISTEN_PID`` must name the server's own pid (sd_listen_fds ignores the
  descriptors otherwise), known only once forked;
* ``PR_SET_PDEATHSIG``: when the generation dies without stopping its
  server (it is SIGKILLed, by the old generation rolling an upgrade back or
  by anyone), the kernel sends the server its stop signal, so no server
  outlives its generation unwatched;
* the descriptors move to 3, 4, ... whatever numbers they have here.

The child runs only system calls through ``os`` (and one ``prctl``) before
``execve``: every signal blocked across the fork (so no handler of ours runs
in it, and none writes to the event loop's wake-up descriptor that it
shares), dispositions reset, then unblocked just before ``execve``; the
garbage collector off across the fork.  The server leads a process group of
its own: signals reach it only through the generation, once, and what is
left of its group when it exits (workers of a killed master) is killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import gc
import os
import signal
from collections.abc import Callable, Mapping, Sequence

import anyio

from .process import Process
from .stderr import Tail
from .wait_status import UNKNOWN, exit_code

__all__ = ["SD_LISTEN_FDS_START", "ServerProcess", "StderrTail", "exit_code", "start_server"]

#: The first descriptor of socket activation (sd-daemon.h).
SD_LISTEN_FDS_START = 3
_PR_SET_PDEATHSIG = 1
#: Every signal whose disposition the child resets (SIGKILL and SIGSTOP have none).
_RESETTABLE = tuple(s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP))
#: How long an exec failure takes to be reported at most (the child is ours, and quick).
_EXEC_REPORT_TIMEOUT = 10.0


class ServerProcess(Process):
    """A started server: its pid (also its process group) and a pidfd for its exit."""

    def exited(self) -> bool:
        """Whether it has exited; if so its group's stragglers are killed and it is reaped."""
        if self.status is not None:
            return True
        try:
            # WNOWAIT: still a zombie, so its pid and process group are not reused yet.
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            self.status = UNKNOWN
            return True
        if info is None:
            return False
        self._kill_group()
        _, self.status = os.waitpid(self.pid, 0)
        return True

    async def stop(self, signum: int, timeout: float) -> bool:
        """``signum``, then up to ``timeout`` for it to exit, then SIGKILL to its whole
        group.  Returns whether it stopped by itself."""
        self.signal(signum)
        if await self.wait(timeout):
            return True
        await self.kill()
        return False

    async def kill(self) -> None:
        """SIGKILL its whole process group, and reap it."""
        if self.status is None:
            self._kill_group()
            with anyio.CancelScope(shield=True):
                await self.wait()

    def _kill_group(self) -> None:
        # Only while the leader is not reaped: the group's id is its pid, not reusable yet.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)


class StderrTail:
    """Relays the server's stderr (a pipe) to ours, keeping its last lines for a reason."""

    def __init__(self, fd: int, lines: int = 5, width: int = 300) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self._tail = Tail(lines, width)
        self.closed = anyio.Event()

    def last_lines(self) -> list[str]:
        """The last complete lines (and an unfinished one), each cut to ``width``, with
        control characters and bytes that are no UTF-8 escaped (a reason's words)."""
        return self._tail.lines()

    async def relay(self) -> None:
        """Copy until the end of the pipe (the server and all that inherited it exited)."""
        try:
            while True:
                try:
                    chunk = os.read(self.fd, 65536)
                except BlockingIOError:
                    await anyio.wait_readable(self.fd)
                    continue
                if not chunk:
                    return
                _write_all(2, chunk)
                self._tail.feed(chunk)
        finally:
            self.closed.set()

    def close(self) -> None:
        os.close(self.fd)


def _write_all(fd: int, data: bytes) -> None:
    """Write to our stderr; a stderr that is gone or blocks loses the text, nothing else."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except InterruptedError:
            continue
        except OSError:
            return
        view = view[written:]


def start_server(
    program: str,
    argv: Sequence[str],
    env: Mapping[bytes, bytes],
    slots: Sequence[int],
    *,
    listen_pid: bool,
    death_signal: int,
    stderr: int,
) -> ServerProcess:
    """Fork and exec ``program`` with ``slots`` at 3, 4, ... (inheritable), ``stderr`` as
    its stderr, in a process group of its own; ``LISTEN_PID`` set to its pid if
    ``listen_pid``.  OSError if it could not be exec'd (its errno, from the child)."""
    count = len(slots)
    # Above every slot, close-on-exec: no slot overwrites a descriptor still to be moved.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, SD_LISTEN_FDS_START + count) for fd in slots]
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    try:
        environment = dict(env)
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
        parent = os.getpid()
        enabled = gc.isenabled()
        gc.disable()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            pid = os.fork()
            if pid == 0:  # pragma: no cover (the child; its outcome is tested)
                _child(
                    program,
                    argv,
                    environment,
                    high,
                    stderr,
                    report_w,
                    prctl,
                    parent,
                    death_signal,
                    listen_pid,
                )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            if enabled:
                gc.enable()
        os.close(report_w)
        report_w = -1
        failed = _read_report(report_r)
        if failed is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            raise OSError(failed, os.strerror(failed), program)
        return ServerProcess(pid)
    finally:
        for fd in (*high, report_r, report_w):
            if fd >= 0:
                os.close(fd)


def _read_report(fd: int) -> int | None:
    """The child's errno if its execve failed; None at the end of the pipe (it exec'd).

    Read blocking: the child does a few system calls before exec, nothing that waits.
    """
    said = b""
    while chunk := os.read(fd, 64):
        said += chunk
    if not said:
        return None
    try:
        return int(said)
    except ValueError:
        return errno.EINVAL


def _child(  # pragma: no cover (runs between fork and exec)
    program: str,
    argv: Sequence[str],
    env: dict[bytes, bytes],
    high: Sequence[int],
    stderr: int,
    report: int,
    prctl: Callable[..., int],
    parent: int,
    death_signal: int,
    listen_pid: bool,
) -> None:
    code = errno.EINVAL
    try:
        for signum in _RESETTABLE:
            with contextlib.suppress(OSError, ValueError):
                signal.signal(signum, signal.SIG_DFL)
        prctl(_PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
        if os.getppid() != parent:  # the generation died before the line above: no server
            os._exit(1)
        os.setpgid(0, 0)
        os.dup2(stderr, 2)
        for slot, fd in enumerate(high, SD_LISTEN_FDS_START):
            os.dup2(fd, slot)  # inheritable: dup2's copy is not close-on-exec
        if listen_pid:
            env[b"LISTEN_PID"] = str(os.getpid()).encode()
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        os.execve(program, list(argv), env)
    except OSError as exc:
        code = exc.errno or errno.EINVAL
    except BaseException:
        pass
    finally:
        with contextlib.suppress(OSError):
            os.write(report, str(code).encode())
        os._exit(127)
