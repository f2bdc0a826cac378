"""What an Outgoing and an Incoming are, in either layer (async or blocking).

The channels, the options checked before anything opens, and the state
machine that says where the handoff stands.  Nothing here waits or opens
anything: each layer's class adds its steps.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from ..channel import Channel, parse_channel, validate_channels
from ..codec_choice import Codec, check_qemu_target
from ..errors import VerdictGiven
from ..registry import load_transports
from ..state import DEFAULT_LIMITS, Limits
from .machine import INCOMING, OUTGOING, Event, Machine, State, Table

__all__ = ["IncomingSide", "OutgoingSide"]

#: The incoming states in which the received state was answered, and how.
_ANSWERED = {
    State.LISTENING_MAIN: "accepted",
    State.MAIN_OPEN: "accepted",
    State.DONE: "accepted",
    State.REJECTED: "rejected",
}


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
