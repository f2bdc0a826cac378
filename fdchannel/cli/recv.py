"""``fdchannel recv URI -- CMD ARGS...``: receive descriptors, then become CMD.

Listen on URI, accept one peer, receive its state (either codec), then
exec CMD with the descriptors set up for socket activation as systemd does
it: descriptors 3, 4, ... in the order sent, ``LISTEN_FDS`` (how many),
``LISTEN_FDNAMES`` (their names joined by ``:``) and ``LISTEN_PID`` (this
pid, which exec keeps).  Any socket-activated server can so be handed
sockets.  The acknowledgement comes once CMD has started, never before
(see _become.py): a CMD that cannot be executed leaves the sender owning
its descriptors.  recv's own report goes to stderr: stdout is CMD's.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import anyio

from ..channel import Channel, ChannelType, parse_channel
from ..fds import close_all
from ._become import HOLD_LIMIT, Watcher, describe_exec_error, exec_acknowledging, find_program
from ._incoming import receive_one
from ._output import CliError, Output, UsageError, plural, printable
from ._run import run_async

__all__ = ["SD_LISTEN_FDS_START", "run"]

#: The first descriptor of socket activation (sd-daemon.h).
SD_LISTEN_FDS_START = 3


@dataclass
class _Handed:
    """What arrived: descriptors (ours until exec), the unacknowledged
    connection to the sender, and the report on them."""

    fds: list[int]
    names: list[str]
    ack_fd: int
    codec: str
    report: dict[str, Any] = field(default_factory=dict)


def _program(command: list[str]) -> str:
    """CMD's executable, found now so that a typo fails before anyone sends."""
    if not command:
        raise UsageError("recv needs a command: recv URI -- CMD ARGS...")
    return find_program(command)


async def _receive(channel: Channel, options: argparse.Namespace, out: Output) -> _Handed:
    received = await receive_one(channel, options.timeout, out)
    state = received.state
    try:
        names = [entry.name for entry in state.fds]
        bad = [name for name in names if ":" in name]
        if bad:
            raise CliError(
                f"descriptor name {bad[0]!r} contains ':', which LISTEN_FDNAMES uses "
                "as its separator"
            )
        # Our own copy of the connection: closing the stream does not close
        # it (no shutdown), so the sender waits on until CMD has started.
        ack_fd = os.dup(received.stream.fileno())
    except BaseException:
        state.close()
        with anyio.CancelScope(shield=True):
            await received.stream.aclose()
        raise
    await received.stream.aclose()
    report = {
        "ok": True,
        "listened_on": received.listened_on,
        "peer": received.peer,
        "codec": received.codec,
        "descriptors": [{"name": e.name, "id": e.id} for e in state.fds],
        "metadata_size": len(state.metadata),
        "ack": "when the command has started (the connection closes at exec)",
    }
    return _Handed([entry.fd for entry in state.fds], names, ack_fd, received.codec, report)


def _move_to_activation_slots(fds: list[int]) -> None:
    """Put ``fds`` at 3, 4, ... without close-on-exec; nothing else is touched."""
    first_free = SD_LISTEN_FDS_START + len(fds)
    # Move every descriptor above the target range first, so no target
    # overwrites a descriptor that still has to move.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, first_free) for fd in fds]
    close_all(fds)
    for slot, fd in enumerate(high, SD_LISTEN_FDS_START):
        os.dup2(fd, slot, inheritable=True)
        os.close(fd)


def run(options: argparse.Namespace, out: Output) -> int:
    """Receive, then exec CMD; returns only if something failed, unacknowledged."""
    program = _program(options.command)
    address = parse_channel(options.uri).addr
    handed = run_async(_receive, Channel(ChannelType.CPR, address), options, out)
    count = len(handed.fds)
    try:
        watcher = Watcher(
            handed.ack_fd, handed.codec, SD_LISTEN_FDS_START + count, options.timeout or HOLD_LIMIT
        )
    except BaseException:
        close_all([*handed.fds, handed.ack_fd])
        raise
    # Added to the environment recv was started with (see exec_environment).
    environment = {
        "LISTEN_FDS": str(count),
        "LISTEN_FDNAMES": ":".join(handed.names),
        "LISTEN_PID": str(os.getpid()),
    }
    handed.report["exec"] = {
        "argv": options.command,
        "program": program,
        "LISTEN_FDS": count,
        "LISTEN_FDNAMES": environment["LISTEN_FDNAMES"],
        "LISTEN_PID": os.getpid(),
    }
    last = SD_LISTEN_FDS_START + count - 1
    slots = f"fd {SD_LISTEN_FDS_START}-{last}" if count > 1 else f"fd {last}" if count else "none"
    text = (
        f"{out.prog}: received {plural(count, 'descriptor')} ({handed.codec} codec); "
        "acknowledging once the command has started\n"
        f"{out.prog}: exec {printable(program)} with LISTEN_FDS={count} "
        f"LISTEN_FDNAMES={printable(environment['LISTEN_FDNAMES'])} ({slots})"
    )
    out.result(handed.report, text, file=sys.stderr)
    try:
        _move_to_activation_slots(handed.fds)
        watcher.start()
    except BaseException:
        watcher.close()
        close_all(handed.fds)
        raise
    sys.stdout.flush()
    error = exec_acknowledging(program, options.command, environment, watcher)
    # Still here: CMD did not start.  The watcher refuses on our behalf.
    refused = (
        "the sender was told (rejected)"
        if handed.codec == "native"
        else "not acknowledged: the connection is held until the sender gives up"
    )
    raise CliError(f"cannot run {program!r}: {describe_exec_error(program, error)}; {refused}")
