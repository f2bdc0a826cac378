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

from ..deadlines import seconds, timeout_text
from ..errors import FdChannelError, HandoffError, HandoffTimeout
from ..transports import Stream
from .machine import Event, Machine

__all__ = ["discard", "step"]

log = logging.getLogger("fdchannel")


@asynccontextmanager
async def step(machine: Machine, what: str, timeout: float | None) -> AsyncIterator[None]:
    """Run one handoff step under a deadline; failures become HandoffError.

    The machine moves to FAILED on any error, ABORTED on cancellation.
    """
    try:
        with anyio.fail_after(seconds(timeout)):
            yield
    except TimeoutError as exc:
        machine.fire(Event.FAIL)
        raise HandoffTimeout(
            f"{machine.side} handoff: {what} did not finish within {timeout_text(timeout)}"
        ) from exc
    except HandoffError:
        machine.fire(Event.FAIL)
        raise
    except (FdChannelError, OSError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
        machine.fire(Event.FAIL)
        detail = str(exc) or type(exc).__name__
        raise HandoffError(f"{machine.side} handoff: {what} failed: {detail}") from exc
    except anyio.get_cancelled_exc_class():
        machine.fire(Event.ABORT)
        raise


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
