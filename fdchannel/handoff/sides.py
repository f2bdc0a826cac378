"""What an Outgoing and an Incoming are, in either layer (async or blocking).

The channels, the options checked before anything opens, and the state
machine that says where the handoff stands.  Nothing here waits or opens
anything: each layer's class adds its steps.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar, NoReturn

from ..channel import Channel, parse_channel, validate_channels
from ..codec_choice import Codec, check_qemu_target
from ..deadlines import timeout_text
from ..errors import FdChannelError, HandoffError, HandoffTimeout, VerdictGiven
from ..registry import load_transports
from ..state import DEFAULT_LIMITS, Limits
from .machine import INCOMING, OUTGOING, Event, Machine, State, Table

__all__ = ["IncomingSide", "OutgoingSide", "fail_step"]

#: The incoming states in which the received state was answered, and how.
_ANSWERED = {
    State.LISTENING_MAIN: "accepted",
    State.MAIN_OPEN: "accepted",
    State.DONE: "accepted",
    State.REJECTED: "rejected",
}

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


class _Side:
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


class OutgoingSide(_Side):
    """The old process's side: the channels, the codec and the QEMU it sends for.

    ``qemu_target`` (codec "qemu" only) is the QEMU version of the new
    process, e.g. "10.0" or "11.1": the state is encoded for it (QEMU 10.0
    fails on the subsections 10.1 and later send).  None sends what the
    state carries, i.e. what the QEMU it came from sent.  An unknown
    version is a StateError here, before anything is connected.
    """

    def __init__(
        self,
        channels: Iterable[Channel | str],
        *,
        codec: Codec = "native",
        qemu_target: str | None = None,
    ) -> None:
        super().__init__(channels, OUTGOING, "outgoing")
        self.codec = codec
        self.qemu_target = check_qemu_target(codec, qemu_target)


class IncomingSide(_Side):
    """The new process's side: the channels, the limits on what it accepts, and
    each channel's ``listen`` options.

    ``cpr_options`` and ``main_options`` go to each channel's ``listen``
    (e.g. ``mode``, ``policy`` for a unix socket); ``listen_options`` to
    both.  An option a channel's transport does not take is an AddressError
    here, not in the middle of the handoff.
    """

    #: The codec the old process used (known once the state arrived).
    codec: Codec | None = None

    def __init__(
        self,
        channels: Iterable[Channel | str],
        *,
        limits: Limits = DEFAULT_LIMITS,
        cpr_options: dict[str, Any] | None = None,
        main_options: dict[str, Any] | None = None,
        listen_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(channels, INCOMING, "incoming")
        self.limits = limits
        self._cpr_options = {**(listen_options or {}), **(cpr_options or {})}
        self._main_options = {**(listen_options or {}), **(main_options or {})}
        self._check_listen_options(self.cpr, self._cpr_options)
        self._check_listen_options(self.main, self._main_options)

    @staticmethod
    def _check_listen_options(channel: Channel, options: dict[str, Any]) -> None:
        """AddressError unless the layer's ``listen`` on ``channel`` takes ``options``."""
        raise NotImplementedError

    def _answer(self, event: Event) -> None:
        """Fire the answer to the received state (LISTEN_MAIN accepts it, or REJECT);
        VerdictGiven, the handoff left as it is, if it was answered already."""
        verdict = _ANSWERED.get(self.state)
        if verdict is not None:
            raise VerdictGiven(f"{self._machine.side} handoff: the received state", verdict)
        self._machine.fire(event)
