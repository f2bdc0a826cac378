"""What /proc tells: other processes' command lines and listening unix sockets,
and the environment this process was started with.

Reading /proc never disturbs the process looked at, which matters here: a
one-shot listener (QEMU's cpr channel, an ``Incoming``) takes the first
peer that connects as *the* peer, so a probe must not connect just to see
whether someone listens.
"""

from __future__ import annotations

import os

__all__ = ["command_line", "socket_owners", "started_environment"]


def command_line(pid: int) -> tuple[list[str] | None, str | None]:
    """The process's argv, or None and why it could not be read."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            raw = file.read()
    except FileNotFoundError:
        return None, "the process has exited"
    except OSError as exc:
        return None, f"unreadable: {exc.strerror}"
    if not raw:
        return None, "empty (a kernel thread or a zombie)"
    return [os.fsdecode(arg) for arg in raw.rstrip(b"\0").split(b"\0")], None


def started_environment() -> dict[bytes, bytes]:
    """The environment this process was started with, as the kernel keeps it.

    Not ``os.environ``: Python changes its own at start-up (without a locale
    it sets ``LC_CTYPE=C.UTF-8``, PEP 538), and a program exec'd in our stead
    is owed what we were given.  As ``getenv`` and ``os.environ`` read it, the
    first entry of a name counts and one without a name is left out (execve
    takes no such entry from a mapping).  Without /proc, ``os.environ`` is the
    best there is.
    """
    try:
        # The strings execve copied onto our stack; setenv never writes there.
        with open("/proc/self/environ", "rb") as file:
            raw = file.read()
    except OSError:
        return dict(os.environb)
    environment: dict[bytes, bytes] = {}
    for entry in raw.split(b"\0"):
        name, equals, value = entry.partition(b"=")
        if name and equals:
            environment.setdefault(name, value)
    return environment


def socket_owners(inodes: list[int], among: list[int] | None = None) -> list[int]:
    """Pids holding a descriptor to one of the socket ``inodes`` (those we may look
    at), looking at the processes ``among`` only if given."""
    targets = {f"socket:[{inode}]" for inode in inodes}
    owners = []
    for entry in map(str, among) if among is not None else os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue  # another user's process, or gone
        for fd in fds:
            try:
                if os.readlink(f"/proc/{entry}/fd/{fd}") in targets:
                    owners.append(int(entry))
                    break
            except OSError:
                continue
    return sorted(owners)
