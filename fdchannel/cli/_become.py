"""Become CMD, and acknowledge the handoff only once CMD has started.

``recv`` must not acknowledge descriptors that then die because CMD could
not be executed (a ``#!`` naming a missing interpreter, ENOEXEC, EACCES):
the sender would report success and drop its own copies.  Nor may it fork
CMD: ``LISTEN_PID`` names the process that runs it, and supervisors track
recv's pid.  So recv execs CMD itself, and the acknowledgement is tied to
the exec by the kernel:

* A watcher process, forked twice so that nobody but init (or the nearest
  subreaper) has to reap it, keeps the connection to the sender and a
  close-on-exec pipe from recv.  Everything else it inherited it closes.
* recv writes one byte to the pipe and calls execve.  The kernel closes
  the pipe's write end only once the exec is past its point of no return.
  End of pipe after that byte: CMD runs, and the watcher acknowledges
  (native: an "accepted" status, then the close; qemu: the close).
* If execve fails, recv writes why, and the watcher refuses instead
  (native: a "rejected" status with the reason).  QEMU's protocol has no
  refusal: any close is an ack, so the watcher holds the connection, unacknowledged,
  until the sender gives up (or the hold limit passes).
* End of pipe without the byte: recv died first; that is a refusal too.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import shutil
import time
from collections.abc import Mapping

from ..codecs import native
from ._output import CliError

__all__ = [
    "HOLD_LIMIT",
    "Watcher",
    "describe_exec_error",
    "exec_acknowledging",
    "exec_environment",
    "find_program",
    "interpreter",
]

#: Seconds a watcher holds an unacknowledged qemu-codec connection at most.
HOLD_LIMIT = 3600.0
_GOING = b"!"  # written just before execve


class Watcher:
    """The connection to the sender and how to answer on it, above ``floor``."""

    def __init__(self, ack_fd: int, codec: str, floor: int, hold_limit: float) -> None:
        # Above the slots CMD's descriptors are moved into, close-on-exec.
        self.ack_fd = fcntl.fcntl(ack_fd, fcntl.F_DUPFD_CLOEXEC, floor)
        os.close(ack_fd)
        read, write = os.pipe2(os.O_CLOEXEC)
        self.read = fcntl.fcntl(read, fcntl.F_DUPFD_CLOEXEC, floor)
        self.write = fcntl.fcntl(write, fcntl.F_DUPFD_CLOEXEC, floor)
        os.close(read)
        os.close(write)
        self.codec = codec
        self.hold_limit = hold_limit
        # Built now: the watcher should do nothing after fork but system calls.
        self.accepted = native.status_frame(True)

    def start(self) -> None:
        """Fork the watcher (twice, reaping the middle process); keep only the write end."""
        middle = os.fork()
        if middle == 0:  # pragma: no cover (a forked child; its exit status is checked)
            try:
                if os.fork() == 0:
                    self._watch()
            finally:
                os._exit(0)
        os.waitpid(middle, 0)
        os.close(self.read)
        os.close(self.ack_fd)

    def close(self) -> None:
        """Without start(): give everything back (nothing was acknowledged)."""
        for fd in (self.read, self.write, self.ack_fd):
            os.close(fd)

    def _watch(self) -> None:  # pragma: no cover (runs in the forked watcher)
        # Its own session: a Ctrl-C meant for CMD's terminal must not end a
        # hold (for the qemu codec any close would read as the ack).
        os.setsid()
        keep = sorted((self.ack_fd, self.read))
        os.closerange(0, keep[0])
        os.closerange(keep[0] + 1, keep[1])
        os.closerange(keep[1] + 1, os.sysconf("SC_OPEN_MAX"))
        said = b""
        while chunk := os.read(self.read, 4096):
            said += chunk
        os.set_blocking(self.ack_fd, True)
        if said == _GOING:
            if self.codec == "native":
                _send_quietly(self.ack_fd, self.accepted)
            os._exit(0)  # the exit closes the connection: the acknowledgement
        reason = said[len(_GOING) :].decode(errors="replace") if said else ""
        reason = reason or "recv ended before the command could start"
        if self.codec == "native":
            _send_quietly(self.ack_fd, native.status_frame(False, reason))
            os._exit(0)
        _hold(self.ack_fd, self.hold_limit)
        os._exit(0)


def _send_quietly(fd: int, frame: bytes) -> None:  # pragma: no cover (in the watcher)
    with contextlib.suppress(OSError):  # the sender is gone already: nothing to tell
        os.write(fd, frame)


def _hold(fd: int, limit: float) -> None:  # pragma: no cover (in the watcher)
    """Wait until the sender hangs up (POLLHUP: it closed its side), or ``limit``."""
    poller = select.poll()
    poller.register(fd, 0)
    deadline = time.monotonic() + limit
    while (left := deadline - time.monotonic()) > 0:
        if poller.poll(int(min(left, 60) * 1000)):
            return


def exec_environment(additions: Mapping[str, str] | None = None) -> dict[bytes, bytes]:
    """What a command exec'd in our stead gets: our environment (as bytes: exact),
    plus ``additions`` (replacing variables of their names).

    The ``fdchannel`` program has put back the environment it was started with
    (see ``fdchannel.__main__``), undoing what Python changed at start-up.
    """
    environment = dict(os.environb)
    for name, value in (additions or {}).items():
        environment[os.fsencode(name)] = os.fsencode(value)
    return environment


def exec_acknowledging(
    program: str, argv: list[str], additions: Mapping[str, str], watcher: Watcher
) -> OSError:
    """execve with ``exec_environment(additions)``; the watcher acknowledges once it
    happened.  Returns only on failure.

    The watcher must have been started.  On failure the reason goes to the
    watcher, which refuses, and the error is returned for the caller to report.
    """
    environment = exec_environment(additions)
    try:
        os.write(watcher.write, _GOING)
        os.execve(program, argv, environment)
    except OSError as exc:
        error = exc
    with contextlib.suppress(OSError):  # the watcher is gone: nobody to tell
        os.write(watcher.write, _explain(program, error).encode())
    os.close(watcher.write)
    return error


def _explain(program: str, error: OSError) -> str:
    return f"could not start {program}: {describe_exec_error(program, error)}"


def interpreter(program: str) -> str | None:
    """The interpreter a ``#!`` line names, or None if the file has none."""
    try:
        with open(program, "rb") as file:
            head = file.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].split()
    return os.fsdecode(words[0]) if words else ""


def describe_exec_error(program: str, error: OSError) -> str:
    """Why execve of ``program`` failed, naming the file that is really at fault."""
    named = interpreter(program)
    if named is not None and error.errno in (errno.ENOENT, errno.EACCES, errno.ENOEXEC):
        return (
            f"its #! line names the interpreter {named!r}, which cannot be run ({error.strerror})"
        )
    if error.errno == errno.ENOEXEC:
        return "not a format this machine can run (no #! line, and not a binary for it)"
    return error.strerror or str(error)


def find_program(command: list[str]) -> str:
    """CMD's executable, searched in PATH as execvp would, and a ``#!`` line's
    interpreter checked, so that a typo fails before anything is received."""
    name = command[0]
    found = name if "/" in name else shutil.which(name)
    if found is None or not os.access(found, os.X_OK) or os.path.isdir(found):
        raise CliError(f"cannot run {name!r}: no such executable (PATH is searched)")
    named = interpreter(found)
    if named is not None and not (
        named.startswith("/") and os.access(named, os.X_OK) and not os.path.isdir(named)
    ):
        raise CliError(
            f"cannot run {found!r}: its #! line names the interpreter {named!r}, "
            "which is not an executable file"
        )
    return found
