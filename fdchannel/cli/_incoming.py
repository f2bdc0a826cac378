"""The incoming side on one channel: listen, accept one peer, receive, acknowledge.

``probe --listen`` and ``recv`` use it.  As ``Incoming.receive_cpr``: the
listener is closed once one peer passed the credential check; the ack is
the close (preceded, for the native codec, by an "accepted" status the
sender can read).
"""

from __future__ import annotations

import select
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread

from .. import procfs as _proc
from ..channel import Channel
from ..codec_choice import Codec
from ..handoff.cpr import ReceivedCpr, receive_cpr
from ..state import FdState
from ..transports import SocketStream, Stream, UnixSocketStream, listen
from ._output import CliError, Output

__all__ = ["Received", "hold", "receive_one"]


@dataclass
class Received:
    """A state and where it came from; the state owns its descriptors."""

    state: FdState
    codec: Codec
    #: The connection to the peer, open until the ack.
    stream: Stream
    listened_on: str
    #: How to acknowledge or refuse it (see fdchannel.handoff.cpr).
    cpr: ReceivedCpr
    peer: dict[str, Any] = field(default_factory=dict)
    #: Seconds spent waiting for the peer, then reading its state.
    accept: float = 0.0
    receive: float = 0.0


def describe_peer(stream: Stream) -> dict[str, Any]:
    """The peer's pid, uid, gid and command line (unix), or its address."""
    if isinstance(stream, UnixSocketStream):
        pid, uid, gid = stream.peer_credentials
        argv, why = _proc.command_line(pid)
        return {"pid": pid, "uid": uid, "gid": gid, "argv": argv, "argv_error": why}
    if isinstance(stream, SocketStream):
        try:
            name = stream.socket.getpeername()
        except OSError:
            name = None
        return {"address": name if not isinstance(name, tuple) else f"{name[0]}:{name[1]}"}
    return {}


async def receive_one(channel: Channel, timeout: float | None, out: Output) -> Received:
    """Listen on ``channel``, announce it on stderr, and receive one peer's state.

    ``timeout`` bounds the wait for the peer and the reading of its state.
    On success the connection is left open: the caller acks or holds.
    """
    steps: list[object] = []
    try:
        with anyio.fail_after(timeout):
            async with await listen(channel) as listener:
                out.notice(f"listening on {listener.address}")
                # receive_cpr closes the listener once the peer is in.
                received = await receive_cpr(
                    listener,
                    timeout=None,
                    on_refused=lambda exc: out.notice(str(exc)),
                    progress=steps.append,
                )
    except TimeoutError:
        if steps:
            raise CliError(
                f"the peer did not finish sending its state within {timeout} s"
            ) from None
        raise CliError(f"no peer connected to {channel.addr} within {timeout} s") from None
    return Received(
        received.state,
        received.codec,
        received.stream,
        received.listened_on,
        received,
        describe_peer(received.stream),
        received.timings["accept"],
        received.timings["receive"],
    )


def _hung_up(fd: int, wait_ms: int) -> bool:
    # POLLHUP is reported whatever the events asked for: the sender closed
    # its side completely, not only half-closed it (which it did already).
    poller = select.poll()
    poller.register(fd, 0)
    return bool(poller.poll(wait_ms))


async def hold(stream: Stream) -> float:
    """Keep the connection open, unacknowledged, until the sender hangs up.

    Returns how long it was held; a signal ends it too (the caller closes).
    """
    started = time.monotonic()
    fd = stream.fileno()
    # A worker thread polls in short slices so a cancellation is honoured quickly.
    while not await anyio.to_thread.run_sync(_hung_up, fd, 200):
        pass
    return time.monotonic() - started
