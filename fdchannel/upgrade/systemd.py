"""systemd's notification protocol (sd_notify): READY, RELOADING, MAINPID, STATUS.

A datagram of ``KEY=VALUE`` lines to the AF_UNIX socket named by
``NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract namespace).  Without
the variable every call is a no-op, as sd_notify is: the program is not
under systemd, or its unit is not ``Type=notify``.

systemd obeys every line, from whatever a value holds: a newline in a
status (a failed upgrade's reason is the new generation's exception text)
would start a line of its own, ``STOPPING=1`` or ``MAINPID=``, obeyed as the
main process's word.  So each value is sent as one line, with what a
reader or terminal would act on escaped, and only variable names are keys.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time

from ..text import printable

__all__ = ["notify", "notify_socket"]

log = logging.getLogger("fdchannel.upgrade")

#: systemd ignores a longer datagram whole (NOTIFY_BUFFER_MAX, PIPE_BUF), READY=1 with it.
MAX_MESSAGE = 4096
_NAME = re.compile("[A-Z0-9_]+")
_CUT = b"..."


def notify_socket() -> bytes | None:
    """The address to notify, as bytes for ``sendto`` (None: not under systemd)."""
    name = os.environb.get(b"NOTIFY_SOCKET")
    if not name or name[:1] not in (b"/", b"@"):
        return None  # vsock notification sockets are not ours to speak to
    return b"\0" + name[1:] if name[:1] == b"@" else name


def notify(**fields: object) -> bool:
    """Send one notification, e.g. ``notify(READY=1, STATUS="serving")``.

    ``RELOADING=1`` is sent with the ``MONOTONIC_USEC`` systemd requires
    beside it.  Each value is one line (controls, line separators and bytes
    that were not UTF-8 escaped), cut if the notification would be too long
    for systemd to read; a key that is no variable name is left out.  A
    failure is logged, not raised: a service must not fail because its
    supervisor went away.  Returns whether it was sent.
    """
    address = notify_socket()
    if address is None:
        return False
    lines: list[tuple[str, str]] = []
    for key, value in fields.items():
        if not _NAME.fullmatch(key):
            log.warning("not telling systemd %r: not a variable name", key)
            continue
        lines.append((key, printable(str(value))))
        if key == "RELOADING" and "MONOTONIC_USEC" not in fields:
            lines.append(
                ("MONOTONIC_USEC", str(time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000))
            )
    if not lines:
        return False
    message = _datagram(lines)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, address)
    except OSError as exc:
        log.warning("could not notify systemd (%s): %s", printable(message.decode()), exc)
        return False
    return True


def _datagram(lines: list[tuple[str, str]]) -> bytes:
    """``KEY=VALUE`` lines, the longest value cut (by whole characters) until they fit."""
    keys = [key.encode() + b"=" for key, _ in lines]
    values = [value.encode() for _, value in lines]
    while (excess := sum(map(len, keys + values)) + len(lines) - 1 - MAX_MESSAGE) > 0:
        longest = max(range(len(values)), key=lambda i: len(values[i]))
        value = values[longest]
        if len(value) <= len(_CUT):
            break  # nothing left to cut: only a flood of fields gets here
        # Decoding drops a character the cut split in half.
        kept = value[: max(len(value) - excess - len(_CUT), 0)]
        values[longest] = kept.decode(errors="ignore").encode() + _CUT
    return b"\n".join(key + value for key, value in zip(keys, values, strict=True))
