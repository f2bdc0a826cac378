"""The probe's descriptor-passing self-test against ``fdchannel probe --listen``.

The protocol is the ordinary one, so the listener needs nothing special:
the probe connects, sends a native-codec state holding one sealed memfd
named ``fdchannel-probe`` (its bytes and the probe's pid in the metadata),
half-closes and waits for the close-as-ack (an "accepted" status, then the
close).  The listener prints what it received like any other state.
"""

from __future__ import annotations

import fcntl
import os
import time
from typing import Any

from ..address import UnixAddress
from ..channel import Channel, ChannelType
from ..errors import FdChannelError
from ..state import FdState, NamedFd
from ._outgoing import send_and_wait
from ._output import CliError, format_ms
from ._run import Interrupted, run_async

__all__ = ["MEMFD_NAME", "run"]

MEMFD_NAME = "fdchannel-probe"
PAYLOAD = b"fdchannel probe self-test\n"
# F_ADD_SEALS and the seal bits (linux/fcntl.h): the receiver can see them.
_F_ADD_SEALS = 1033
_SEALS = 0x01 | 0x02 | 0x04 | 0x08  # seal, shrink, grow, write


def _memfd() -> int:
    fd = os.memfd_create(MEMFD_NAME, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.write(fd, PAYLOAD)
        fcntl.fcntl(fd, _F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def run(addr: UnixAddress, timeout: float) -> dict[str, Any]:
    """Send one memfd to the listener on ``addr``; the verdict as plain data."""
    started = time.monotonic()
    memfd = _memfd()
    try:
        state = FdState(
            [NamedFd(MEMFD_NAME, 0, memfd)],
            metadata=f"fdchannel probe self-test from pid {os.getpid()}".encode(),
        )
        sent = run_async(send_and_wait, Channel(ChannelType.CPR, addr), state, "native", timeout)
    except Interrupted:
        raise
    except (CliError, FdChannelError, OSError) as exc:
        return {"ran": True, "ok": False, "detail": str(exc)}
    finally:
        os.close(memfd)
    total = time.monotonic() - started
    return {
        "ran": True,
        "ok": True,
        "detail": f"passed 1 sealed memfd (native codec); acknowledged after {format_ms(total)}",
        "connect_ms": round(sent.connect * 1000, 3),
        "send_ms": round(sent.send * 1000, 3),
        "ack_ms": round(sent.ack * 1000, 3),
    }
