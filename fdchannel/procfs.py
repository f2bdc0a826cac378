"""What /proc tells about other processes: command lines and listening unix sockets.

Reading /proc never disturbs the process looked at, which matters here: a
one-shot listener (QEMU's cpr channel, an ``Incoming``) takes the first
peer that connects as *the* peer, so a probe must not connect just to see
whether someone listens.
"""

from __future__ import annotations

import os

__all__ = ["command_line", "socket_owners"]


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
