"""What /proc tells about other processes: command lines and listening unix sockets.

Reading /proc never disturbs the process looked at, which matters here: a
one-shot listener (QEMU's cpr channel, an ``Incoming``) takes the first
peer that connects as *the* peer, so a probe must not connect just to see
whether someone listens.
"""

from __future__ import annotations

import os

__all__ = ["command_line", "socket_owners", "unix_listeners"]

#: __SO_ACCEPTCON in /proc/net/unix's Flags column: the socket listens.
_ACCEPTCON = 0x10000
_SOCK_STREAM = 1


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


def unix_listeners(name: str) -> list[int] | None:
    """Inodes of listening unix stream sockets bound to ``name`` (``@x`` for abstract).

    None when /proc/net/unix cannot be read.
    """
    try:
        with open("/proc/net/unix", "rb") as file:
            lines = file.read().splitlines()[1:]
    except OSError:
        return None
    wanted = os.fsencode(name)
    found = []
    for line in lines:
        # Num RefCount Protocol Flags Type St Inode Path (the path may hold spaces)
        fields = line.split(maxsplit=7)
        if len(fields) < 8 or fields[7] != wanted:
            continue
        if int(fields[3], 16) & _ACCEPTCON and int(fields[4], 16) == _SOCK_STREAM:
            found.append(int(fields[6]))
    return found


def socket_owners(inodes: list[int]) -> list[int]:
    """Pids holding a descriptor to one of the socket ``inodes`` (those we may look at)."""
    targets = {f"socket:[{inode}]" for inode in inodes}
    owners = []
    for entry in os.listdir("/proc"):
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
