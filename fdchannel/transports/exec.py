"""Commands: ``exec:CMD`` (``/bin/sh -c CMD``) or an explicit argv.

The outgoing side writes to the command's stdin, the incoming side reads its
stdout; the other standard stream is /dev/null and stderr is ours, as in
QEMU's io/channel-command.c.  argv[0] is run as given, without a PATH
search (a name without a slash is relative to the working directory, as
``execv`` treats it).

The command's fate is never a silent EOF: an exit status other than 0, or
death by a signal, is raised as TransportError naming the command — by
``receive`` at EOF, ``wait_peer_closed``, ``send`` when the command stopped
reading, ``send_eof`` when it had already failed, and ``aclose`` when nobody
was told yet.  To wait for a command to finish, ``send_eof`` then
``wait_peer_closed``.

The child is always reaped: ``aclose`` gives it ``grace`` seconds to finish
after its pipe closed, then kills it with SIGKILL (and says so, for a writer
or a reader that had reached EOF: the command did not finish).  A cancelled
close kills at once; leaving ``async with`` by an exception closes the same
way but does not raise the command's status over the exception; ``abort``
kills at once.  The exit is awaited through a pidfd: no thread, no SIGCHLD
handler.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import signal
import subprocess
import warnings
from types import TracebackType

import anyio
import anyio.lowlevel

from ..address import ExecAddress
from ..errors import AddressError, TransportError
from ..sockets import DEFAULT_RECEIVE
from ._one_stream import OneStreamListener
from ._open_error import open_error
from ._pipe import PipeStream

__all__ = ["KILL_GRACE", "ExecStream", "connect", "listen"]

#: Seconds a command may take to finish after its stream was closed.
KILL_GRACE = 5.0
#: Seconds ``send`` waits, after EPIPE, for the command's exit status.  An
#: exiting command's descriptors close (the EPIPE) just before the kernel
#: makes it reapable; one still running after this closed its stdin itself,
#: and its status is left to ``aclose``.
EPIPE_EXIT_WAIT = 0.5
#: Larger pipes mean fewer wake-ups per megabyte (the kernel caps unprivileged
#: users at /proc/sys/fs/pipe-max-size, 1 MiB by default).
PIPE_SIZE = 1024 * 1024


class _Child:
    """A spawned command, its pidfd, and its exit status once reaped."""

    def __init__(self, process: subprocess.Popen[bytes], command: str) -> None:
        self.process = process
        self.command = command
        # The child is ours and not yet reaped, so its pid cannot be reused
        # before pidfd_open; from here on the pidfd names exactly this process.
        self._pidfd = os.pidfd_open(process.pid)
        self._lock = anyio.Lock()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def poll(self) -> int | None:
        """Reap the child if it has exited, without waiting."""
        return self.process.poll()

    async def wait(self) -> int:
        """Wait for the child to exit and reap it."""
        # One waiter at a time: two readiness waits on one descriptor would
        # replace each other (asyncio) or be refused (trio).
        async with self._lock:
            while self.process.poll() is None:
                await anyio.wait_readable(self._pidfd)
                # Readable means it has exited: this wait returns at once.
                self.process.wait()
            self._close_pidfd()
        returncode = self.process.returncode
        assert returncode is not None
        return returncode

    def kill(self) -> None:
        if self.process.returncode is not None:
            return  # reaped: its pid and group id may belong to someone else now
        # /bin/sh may fork the command instead of exec'ing it: kill the whole
        # process group the child leads.  The leader is not reaped yet, so
        # the group id is still ours.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        # Through the pidfd too: the signal cannot reach a reused pid.
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    def __del__(self) -> None:
        # A stream dropped without aclose: leave neither a zombie nor a stray command.
        if self.process.returncode is None:
            with contextlib.suppress(OSError):
                self.kill()
                self.process.wait()  # short: SIGKILL cannot be ignored
            warnings.warn(
                f"command {self.command!r} (pid {self.pid}) was never closed; it was killed",
                ResourceWarning,
                source=self,
                stacklevel=1,
            )
        self._close_pidfd()

    def _close_pidfd(self) -> None:
        fd, self._pidfd = self._pidfd, -1
        if fd >= 0:
            os.close(fd)

    def failure(self) -> str | None:
        """What went wrong, if the child exited with a failure."""
        code = self.process.returncode
        if code is None or code == 0:
            return None
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"command {self.command!r} was killed by signal {-code} ({name})"
        return f"command {self.command!r} exited with status {code}"


class ExecStream(PipeStream):
    """The stream to a command's stdin (outgoing) or from its stdout (incoming)."""

    def __init__(self, fd: int, address: ExecAddress, child: _Child, *, grace: float) -> None:
        super().__init__(fd, address, name=f"command {child.command!r}")
        self._child = child
        self._grace = grace
        self._reported = False
        self._finished = False

    @property
    def pid(self) -> int:
        """The command's process id."""
        return self._child.pid

    @property
    def returncode(self) -> int | None:
        """The command's exit status once reaped (negative: the signal that killed it)."""
        return self._child.returncode

    def _raise_failure(self, cause: BaseException | None = None) -> None:
        message = self._child.failure()
        if message is not None:
            self._reported = True
            raise TransportError(message, self.address) from cause

    async def _wait_exit(self) -> None:
        await self._child.wait()
        self._raise_failure()

    async def receive(self, max_bytes: int = DEFAULT_RECEIVE) -> bytes:
        if not self._can_read:
            # Nothing comes back from a command's stdin: EOF when it exits.
            self._check_open()
            await self._wait_exit()
            raise anyio.EndOfStream
        try:
            return await super().receive(max_bytes)
        except anyio.EndOfStream:
            await self._wait_exit()
            raise

    async def wait_peer_closed(self) -> None:
        """Wait for the command to exit; raise TransportError if it failed."""
        self._check_open()
        if self._can_read:
            await super().wait_peer_closed()
        await self._wait_exit()

    async def send(self, item: bytes) -> None:
        try:
            await super().send(item)
        except anyio.BrokenResourceError as exc:
            # EPIPE: the command closed its stdin, usually by exiting.
            with anyio.move_on_after(min(self._grace, EPIPE_EXIT_WAIT)):
                await self._child.wait()
            self._raise_failure(exc)
            raise anyio.BrokenResourceError(
                f"{self._describe()} stopped reading its input"
            ) from exc

    async def send_eof(self) -> None:
        """Close the command's stdin; raise if the command has already failed."""
        await super().send_eof()
        if self._child.poll() is not None:
            self._raise_failure()

    async def aclose(self) -> None:
        await self._close(report=True)

    async def abort(self) -> None:
        """Close the stream and kill the command at once, reporting nothing."""
        self._close_now()
        self._child.kill()
        with anyio.CancelScope(shield=True):
            await self._child.wait()
        self._finished = True
        await anyio.lowlevel.checkpoint()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        # Leaving on an exception: clean up, but do not hide it behind the
        # command's status.
        await self._close(report=exc_type is None)

    async def _close(self, *, report: bool) -> None:
        if self._finished:
            await anyio.lowlevel.checkpoint()
            return
        # Did the command reach its normal end from its own point of view?
        # Closing stdin is how a writer ends; a reader ends at EOF.
        ended = not self._can_read or self._eof_seen
        self._close_now()
        killed = False
        try:
            if self._child.poll() is None:
                with anyio.move_on_after(self._grace):
                    await self._child.wait()
                if self._child.returncode is None:
                    killed = True
                    self._child.kill()
            # Reaps (SIGKILL cannot be caught or ignored, so this is short) and
            # releases the pidfd, whichever way the child ended.
            with anyio.CancelScope(shield=True):
                await self._child.wait()
        except anyio.get_cancelled_exc_class():
            self._child.kill()
            with anyio.CancelScope(shield=True):
                await self._child.wait()
            raise
        finally:
            self._finished = self._child.returncode is not None
        if report and ended and not self._reported:
            if killed:
                self._reported = True
                raise TransportError(
                    f"{self._describe()} was still running {self._grace:g} s after its "
                    "stream was closed and was killed",
                    self.address,
                )
            self._raise_failure()
        await anyio.lowlevel.checkpoint()


def _command(address: ExecAddress) -> tuple[list[str], str, str]:
    """argv, the executable to run and the command text for messages."""
    args = list(address.args)
    if not args or not args[0]:
        raise AddressError("exec needs a command: args must not be empty", str(address))
    # No PATH search, as QEMU: a bare name is a file in the working directory.
    executable = args[0] if "/" in args[0] else os.path.join(".", args[0])
    return args, executable, shlex.join(args)


def _enlarge(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)


def _spawn(address: ExecAddress, *, outgoing: bool, grace: float) -> ExecStream:
    args, executable, command = _command(address)
    # Both ends close-on-exec; Popen dup2()s the child's end onto 0 or 1, which
    # clears the flag there only, and close_fds shuts everything else of ours.
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    ours, theirs = (write_end, read_end) if outgoing else (read_end, write_end)
    try:
        _enlarge(ours)
        try:
            # Synchronous: fork/exec takes milliseconds, and running it in a
            # thread would let a cancellation lose a started child.
            process = subprocess.Popen(
                args,
                executable=executable,
                stdin=theirs if outgoing else subprocess.DEVNULL,
                stdout=subprocess.DEVNULL if outgoing else theirs,
                stderr=None,
                close_fds=True,
                pass_fds=(),
                # Its own process group, so that killing it reaches what it started.
                process_group=0,
            )
        except OSError as exc:
            hint = "" if "/" in args[0] else " (no PATH search is done: give a path)"
            error = open_error(exc, "run", f"command {command!r}{hint}", address, outgoing=outgoing)
            raise error from exc
    except BaseException:
        os.close(ours)
        raise
    finally:
        os.close(theirs)
    try:
        return ExecStream(ours, address, _Child(process, command), grace=grace)
    except BaseException:
        os.close(ours)
        process.kill()
        process.wait()
        raise


async def connect(address: ExecAddress, *, grace: float = KILL_GRACE) -> ExecStream:
    """Run the command and return a stream writing to its stdin: the outgoing side."""
    await anyio.lowlevel.checkpoint_if_cancelled()
    stream = _spawn(address, outgoing=True, grace=grace)
    await anyio.lowlevel.cancel_shielded_checkpoint()
    return stream


async def listen(address: ExecAddress, *, grace: float = KILL_GRACE) -> OneStreamListener:
    """Run the command; the listener yields one stream reading its stdout."""
    await anyio.lowlevel.checkpoint_if_cancelled()
    stream = _spawn(address, outgoing=False, grace=grace)
    await anyio.lowlevel.cancel_shielded_checkpoint()
    return OneStreamListener(stream, address)
