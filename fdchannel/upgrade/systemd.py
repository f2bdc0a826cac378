"""systemd's notification protocol (sd_notify): READY, RELOADING, MAINPID, STATUS.

A datagram of ``KEY=VALUE`` lines to the AF_UNIX socket named by
``NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract namespace).  Without
the variable every call is a no-op, as sd_notify is: the program is not
under systemd, or its unit is not ``Type=notify``.
"""

from __future__ import annotations

import logging
import os
import socket
import time

__all__ = ["notify", "notify_socket"]

log = logging.getLogger("fdchannel.upgrade")


def notify_socket() -> bytes | None:
    """The address to notify, as bytes for ``sendto`` (None: not under systemd)."""
    name = os.environb.get(b"NOTIFY_SOCKET")
    if not name or name[:1] not in (b"/", b"@"):
        return None  # vsock notification sockets are not ours to speak to
    return b"\0" + name[1:] if name[:1] == b"@" else name


def notify(**fields: object) -> bool:
    """Send one notification, e.g. ``notify(READY=1, STATUS="serving")``.

    ``RELOADING=1`` is sent with the ``MONOTONIC_USEC`` systemd requires
    beside it.  A failure is logged, not raised: a service must not fail
    because its supervisor went away.  Returns whether it was sent.
    """
    address = notify_socket()
    if address is None:
        return False
    lines = []
    for key, value in fields.items():
        lines.append(f"{key}={value}")
        if key == "RELOADING" and "MONOTONIC_USEC" not in fields:
            lines.append(f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
    message = "\n".join(lines).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, address)
    except OSError as exc:
        log.warning("could not notify systemd (%s): %s", message.decode(), exc)
        return False
    return True
