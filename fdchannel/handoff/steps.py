"""The async handoff's steps: each under a deadline, its failures typed, its leftovers closed.

``step`` runs one step of a side (send the state, connect main, ...) under
its timeout and moves the side's state machine to FAILED or ABORTED when
the step does not finish; ``discard`` closes a stream such a step leaves
behind.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from ..deadlines import seconds
from ..errors import FdChannelError
from ..transports import Stream
from .machine import Machine
from .sides import fail_step

__all__ = ["discard", "step"]

log = logging.getLogger("fdchannel")


@asynccontextmanager
async def step(machine: Machine, what: str, timeout: float | None) -> AsyncIterator[None]:
    """Run one handoff step under a deadline; failures become HandoffError.

    The machine moves to FAILED on any error, ABORTED on cancellation
    (``sides.fail_step``, the blocking layer's rule too).
    """
    try:
        with anyio.fail_after(seconds(timeout)):
            yield
    except BaseException as exc:
        cut = isinstance(exc, anyio.BrokenResourceError | anyio.EndOfStream)
        fail_step(machine, exc, what, timeout, timed_out=isinstance(exc, TimeoutError), lost=cut)


async def discard(stream: Stream) -> None:
    """Close a stream a failed or abandoned handoff leaves behind: at once, quietly.

    An exec: command is killed instead of being given its grace period to
    finish (it may never read again), and whatever closing reports (a
    command's exit status, a file's delayed write error) is logged, not
    raised over the error that brought us here.
    """
    with anyio.CancelScope(shield=True):
        try:
            await stream.abort()
        except (FdChannelError, OSError, anyio.BrokenResourceError) as exc:
            log.debug("closing the stream to %s after the handoff stopped: %s", stream.address, exc)
