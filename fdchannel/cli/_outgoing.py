"""The outgoing side on one channel: connect, send the state, wait for the close-as-ack.

``send`` and the probe's self-test use it.  It is the first half of
``Outgoing.send_cpr`` without a main channel, and it says which step a
deadline caught: nobody listening is not the same problem as a receiver
that holds the connection.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import anyio

from ..channel import Channel
from ..codec_choice import Codec
from ..errors import ConnectionLostError
from ..handoff.cpr import send_cpr
from ..state import FdState
from ._output import CliError

__all__ = ["Sent", "send_and_wait"]


@dataclass(frozen=True)
class Sent:
    """How the state went over, step by step (seconds)."""

    codec: str
    descriptors: int
    connect: float
    send: float
    ack: float
    #: "accepted" (native: the receiver's status, then its close) or "closed" (qemu).
    ack_kind: str


async def send_and_wait(
    channel: Channel, state: FdState, codec: Codec, timeout: float | None
) -> Sent:
    """Connect ``channel`` (retrying until ``timeout``), send, half-close, wait for the ack.

    The caller keeps its descriptors whatever happens.
    """
    attempts: list[str] = []
    steps = {
        "connected": "sending the state",
        "sent": "waiting for the receiver to acknowledge (by closing)",
    }
    step = f"connecting to {channel.addr}"
    marks = [time.monotonic()]

    def progress(what: str) -> None:
        nonlocal step
        marks.append(time.monotonic())
        step = steps.get(what, step)

    try:
        with anyio.fail_after(timeout):
            ack = await send_cpr(
                channel, state, codec=codec, timeout=None, progress=progress, attempts=attempts
            )
    except TimeoutError:
        why = f" (last attempt: {attempts[-1]})" if len(marks) == 1 and attempts else ""
        if len(marks) == 1:
            raise CliError(f"nobody accepted on {channel.addr} within {timeout} s{why}") from None
        raise CliError(f"timed out after {timeout} s {step}") from None
    except (anyio.BrokenResourceError, anyio.EndOfStream, ConnectionLostError) as exc:
        raise CliError(f"the receiver hung up while {step}: {exc or 'connection reset'}") from exc
    ack_kind = ack.kind
    return Sent(
        codec,
        len(state.fds),
        marks[1] - marks[0],
        marks[2] - marks[1],
        marks[3] - marks[2],
        ack_kind,
    )
