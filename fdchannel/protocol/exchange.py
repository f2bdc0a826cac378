"""The cpr exchange as drivers, for ``send_cpr``, ``receive_cpr`` and the sides in either layer.

``sending`` connects (retrying while the receiver is not listening yet),
sends the state, half-closes and waits for the close-as-ack; ``receiving``
accepts one admitted peer and reads its state to EOF, for the caller to
answer (``ReceivedCprCore.answering``).  They report each step as it ends
(``progress``), which the sides turn into their machine's events.  The
layers run them (``actions``); nothing here waits or imports an event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from ..channel import Channel, ChannelType, Target, resolve_target
from ..codec_choice import Codec, check_qemu_target
from ..codecs.encoder import Encoder
from ..deadlines import now, timeout_text
from ..errors import PeerCredentialsError
from ..state import FdState, Limits
from .ack import Ack
from .actions import (
    Accept,
    AwaitVerdict,
    Close,
    Connect,
    Discard,
    Driver,
    Listen,
    ReceiveState,
    SendState,
)

__all__ = [
    "Progress",
    "cpr_channel",
    "log_refused",
    "no_ack_within",
    "no_state_within",
    "receiving",
    "sending",
]

#: What sending reports as it goes: "connected", "sent", "acknowledged";
#: receiving: "accepted", "received".
Progress = Callable[[str], object]

R = TypeVar("R")

log = logging.getLogger("fdchannel")


def _ignore(_: str) -> None:
    pass


def log_refused(exc: PeerCredentialsError) -> None:
    """What becomes of a peer the credential policy refused, unless the caller says."""
    log.warning("%s", exc)


def cpr_channel(target: Target) -> Channel:
    """The channel to use: a Channel as it is, anything else as a cpr channel."""
    if isinstance(target, Channel):
        return target
    address, _ = resolve_target(target)
    return Channel(ChannelType.CPR, address)


def no_ack_within(target: Target, timeout: float | None) -> str:
    """send_cpr's HandoffTimeout."""
    return f"no acknowledgement on {cpr_channel(target).addr} within {timeout_text(timeout)}"


def no_state_within(timeout: float | None) -> str:
    """receive_cpr's HandoffTimeout."""
    return f"no state arrived within {timeout_text(timeout)}"


def sending(
    target: Target,
    state: FdState,
    codec: Codec,
    qemu_target: str | None,
    progress: Progress | None = None,
    attempts: list[str] | None = None,
) -> Driver[Ack]:
    """Hand ``state`` over on the cpr channel ``target``: the receiver's Ack.

    The options are checked now (a StateError for an unknown QEMU version),
    before anything connects.  The caller keeps its descriptors whatever
    happens: the kernel passes copies.
    """
    check_qemu_target(codec, qemu_target)
    return _send(cpr_channel(target), state, codec, qemu_target, progress or _ignore, attempts)


def _send(
    channel: Channel,
    state: FdState,
    codec: Codec,
    qemu_target: str | None,
    report: Progress,
    attempts: list[str] | None,
) -> Driver[Ack]:
    started = now()
    stream = yield Connect(channel, attempts)
    try:
        report("connected")
        # Encoded once connected, as ever: what a state the target cannot take
        # raises (a StateError) comes after the connect, inside the exchange.
        encoder = Encoder(state, codec, qemu_target=qemu_target)
        yield SendState(stream, encoder)
        report("sent")
        kind = yield AwaitVerdict(stream, encoder)
        report("acknowledged")
    except BaseException:
        yield Discard(stream)
        raise
    yield Close(stream)
    return Ack(codec, len(state), now() - started, kind)


#: What ``receiving`` makes of a received state: the layer's ReceivedCpr, from the
#: state, its codec, the open stream, the address listened on and the timings.
Make = Callable[[FdState, Codec, Any, str, dict[str, float]], R]


def receiving(
    source: Listen | Any,
    limits: Limits,
    on_refused: Callable[[PeerCredentialsError], None],
    make: Make[R],
    progress: Progress | None = None,
) -> Driver[R]:
    """Accept one admitted peer and read its state to EOF; on any error every
    descriptor received is closed.

    ``source`` is a listener already open, or the ``Listen`` that opens one;
    either is closed once the peer is accepted (a cpr channel serves one),
    and one opened here is closed on failure too.
    """
    report = progress or _ignore
    started = now()
    opened = isinstance(source, Listen)
    listener: Any = (yield source) if opened else source
    try:
        stream = yield Accept(listener, on_refused)
    except BaseException:
        if opened:
            yield Close(listener)
        raise
    # One peer per cpr channel: nobody else may queue up behind it.
    yield Close(listener)
    accepted = now()
    report("accepted")
    try:
        state, codec = yield ReceiveState(stream, limits)
        report("received")
    except BaseException:
        yield Close(stream)
        raise
    timings = {"accept": accepted - started, "receive": now() - accepted}
    return make(state, codec, stream, str(listener.address), timings)
