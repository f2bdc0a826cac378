"""Start the next generation: ``posix_spawn`` with chosen descriptors, watched by a pidfd.

Not ``subprocess`` nor the event loop's process API: the next generation
must outlive us, and both of those kill (asyncio's transport on close) or
warn about (``Popen.__del__``) a child that is still running when they let
go of it.  A pidfd tells us, without reaping, when the child exits, and
works with every event loop's ``wait_readable``.

The child's stderr is a pipe until its upgrade is settled (``stderr.py``):
what it writes is relayed to ours, and its last lines are kept to tell why
it exited.

``posix_spawn`` cannot change the child's directory: a child that starts
in another one (a new release's) is started through a few lines of Python
that change directory and then execute the program, the same process (pid,
descriptors, signal dispositions) all along.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence

import anyio

from ..errors import UpgradeFailed
from .pidfile import process_start
from .process import Process
from .reasons import said
from .stderr import Relay
from .wait_status import status_text as exit_text

__all__ = ["Child", "exit_text", "said", "spawn"]

#: Signals whose handlers the parent may have set: the child starts with the defaults.
_DEFAULT_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE)


#: Run by this interpreter (``-I -S -c``) in a child that starts elsewhere: go there,
#: then be the program.  Python's locale coercion may have set LC_CTYPE in its
#: environment: the program gets the environment it was given.
_IN_DIRECTORY = (
    "import os, sys\n"
    "cwd, locale, program, *argv = sys.argv[1:]\n"
    "os.chdir(cwd)\n"
    "if locale == '0':\n"
    "    os.environ.pop('LC_CTYPE', None)\n"
    "os.execve(program, argv, os.environ)\n"
)


class Child(Process):
    """A started generation: its pid and a pidfd that turns readable when it exits;
    the relay of its stderr, if it was given a pipe for it."""

    def __init__(self, pid: int, relay: Relay | None = None) -> None:
        super().__init__(pid)
        self.relay = relay
        #: When it started (what the pidfile records with its pid); it is our
        #: child, not reaped yet, so the pid is still its own.
        self.start = process_start(pid)

    async def kill(self) -> None:
        """SIGKILL it and reap it (the rollback): through the pidfd, never by pid, which
        names another process once someone else has reaped this one."""
        if self.status is None and self._pidfd is not None:
            self.signal(signal.SIGKILL)
            with anyio.CancelScope(shield=True):
                await self.wait()
        self.release()

    def release(self) -> None:
        """Let it go (it serves now): close the pidfd; it is not ours to reap.  The
        relay of its stderr stops (what is in the pipe now relayed first)."""
        self.close()
        if self.relay is not None:
            self.relay.stop()

    def stderr(self) -> list[str]:
        """The last lines it wrote on stderr (none unless relayed), all read by now if
        it has exited."""
        if self.relay is None or self.relay.tail is None:
            return []
        if self.status is not None:
            self.relay.stop()
        return self.relay.tail.lines()

    def _said(self) -> str:
        return said(self.stderr())


def spawn(
    argv: Sequence[str],
    env: Mapping[str, str],
    keep: Sequence[int],
    stderr: int | None = None,
    cwd: str | None = None,
) -> Child:
    """Start ``argv`` with ``env`` (in ``cwd``, else here); the descriptors ``keep``
    stay open in it under the same numbers (everything else close-on-exec stays
    closed); ``stderr``, a pipe's write end, becomes its stderr."""
    if not argv:
        raise UpgradeFailed("no command to start the new generation with")
    program = argv[0] if "/" in argv[0] else shutil.which(argv[0])
    if program is None:
        raise UpgradeFailed(f"cannot start the new generation: {argv[0]!r} is not on PATH")
    if cwd is not None and not _here(cwd):
        if not (os.path.isfile(program) and os.access(program, os.X_OK)):
            raise UpgradeFailed(f"cannot start the new generation {program}: not an executable")
        interpreter = sys.executable if os.access(sys.executable, os.X_OK) else "/proc/self/exe"
        locale = "1" if "LC_CTYPE" in env else "0"
        argv = [interpreter, "-I", "-S", "-c", _IN_DIRECTORY, cwd, locale, program, *argv]
        program = interpreter
    # dup2 of a descriptor onto itself clears its close-on-exec flag in the child only
    # (POSIX 2024; glibc since 2.29, musl): nothing leaks into other children meanwhile.
    actions = [(os.POSIX_SPAWN_DUP2, fd, fd) for fd in keep]
    if stderr is not None:
        actions.append((os.POSIX_SPAWN_DUP2, stderr, 2))
    try:
        pid = os.posix_spawn(
            program,
            list(argv),
            dict(env),
            file_actions=actions,
            setsigdef=_DEFAULT_SIGNALS,
            setsigmask=(),
        )
    except OSError as exc:
        raise UpgradeFailed(
            f"cannot start the new generation {program}: {exc.strerror or exc}"
        ) from exc
    try:
        return Child(pid)
    except OSError:  # our unreaped child: the pid is its own until waitpid
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise


def _here(directory: str) -> bool:
    """Whether ``directory`` is the one this process is in."""
    try:
        return os.path.samefile(directory, ".")
    except OSError:
        return False
