"""What an Outgoing and an Incoming both are, in either layer, and the rule for a failed step.

The channels, checked before anything opens, and the state machine that
says where the handoff stands (``Side``); each side's steps are drivers
(``outgoing_side``, ``incoming_side``), which each layer runs under the
step's deadline, and ``fail_step`` is the one rule for a step that did not
finish.  Nothing here waits or opens anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar, NoReturn

from ..channel import Channel, parse_channel, validate_channels
from ..deadlines import timeout_text
from ..errors import FdChannelError, HandoffError, HandoffTimeout
from ..registry import load_transports
from .machine import Event, Machine, State, Table

__all__ = ["Side", "fail_step"]

#: The machine's event for each step ``send_cpr`` and ``receive_cpr`` report.
_REPORTED = {
    "connected": Event.CPR_CONNECTED,
    "sent": Event.STATE_SENT,
    "acknowledged": Event.ACK,
    "accepted": Event.PEER_ACCEPTED,
    "received": Event.STATE_RECEIVED,
}


def fail_step(
    machine: Machine,
    exc: BaseException,
    what: str,
    timeout: float | None,
    *,
    timed_out: bool,
    lost: bool,
) -> NoReturn:
    """A handoff step that did not finish, in either layer (called while ``exc`` is
    handled): the machine moves to FAILED (ABORTED when cancelled or
    interrupted), and ``exc`` is raised again, or the HandoffError it becomes.

    ``timed_out``: the layer's deadline for the step passed; ``lost``: the
    layer's own word for a connection that went (anyio's end-of-stream).
    """
    if timed_out:
        machine.fire(Event.FAIL)
        detail = f" ({exc})" if str(exc) else ""
        raise HandoffTimeout(
            f"{machine.side} handoff: {what} did not finish within {timeout_text(timeout)}{detail}"
        ) from exc
    if isinstance(exc, HandoffError):
        machine.fire(Event.FAIL)
        raise exc
    if lost or isinstance(exc, FdChannelError | OSError):
        machine.fire(Event.FAIL)
        detail = str(exc) or type(exc).__name__
        raise HandoffError(f"{machine.side} handoff: {what} failed: {detail}") from exc
    machine.fire(Event.ABORT)  # cancelled, interrupted, or a bug: the step is over
    raise exc


def _parse_channels(channels: Iterable[Channel | str]) -> tuple[Channel, Channel]:
    """Parse and validate a main and a cpr channel for cpr-transfer."""
    main, cpr = validate_channels([parse_channel(c) for c in channels], mode="cpr-transfer")
    assert cpr is not None  # cpr-transfer mode guarantees it
    return main, cpr


class Side:
    """What both sides are: the channels, the machine, the events their steps report."""

    #: Import the channels' transports when made, not at their first use in
    #: the middle of the handoff (the async layer, which loads them lazily).
    _load_transports: ClassVar[bool] = False

    def __init__(self, channels: Iterable[Channel | str], table: Table, side: str) -> None:
        self.main, self.cpr = _parse_channels(channels)
        if self._load_transports:
            load_transports(self.main.addr, self.cpr.addr)
        self._machine = Machine(table, side)

    @property
    def state(self) -> State:
        """Where the handoff stands."""
        return self._machine.state

    def _progress(self, what: str) -> None:
        """What ``send_cpr`` or ``receive_cpr`` reports as it goes, as the machine's event:
        either layer's side passes this as their ``progress``."""
        self._machine.fire(_REPORTED[what])
