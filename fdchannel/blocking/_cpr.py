"""The cpr exchange on one channel, blocking, each side in one call: ``send_cpr``, ``receive_cpr``.

As ``fdchannel.send_cpr`` and ``fdchannel.receive_cpr``, with the same
parameters and results: ``send_cpr`` connects (retrying while the
receiver is not listening yet), sends the state, half-closes and waits for
the close-as-ack; ``receive_cpr`` accepts one admitted peer and reads its
state, which the caller then ``accept()``s or ``reject(reason)``s.
``Outgoing`` and ``Incoming`` run the same exchange inside their steps.
"""

from __future__ import annotations

from collections.abc import Callable

from ..channel import Channel, Target
from ..codec_choice import Codec, check_qemu_target
from ..codecs.encoder import Encoder
from ..deadlines import now
from ..errors import ConnectionLostError, HandoffTimeout, PeerCredentialsError
from ..handoff.ack import Ack
from ..handoff.received import (
    Progress,
    ReceivedCprCore,
    cpr_channel,
    no_ack_within,
    no_state_within,
)
from ..state import DEFAULT_LIMITS, FdState, Limits
from ._deadline import Deadline, TransportTimeout
from ._handoff import accept_admitted, connect_retrying, log_refused
from ._listener import Listener
from ._open import listen
from ._stream import Stream
from ._transfer import await_verdict, receive_state_and_codec, send_with

__all__ = ["ReceivedCpr", "receive_cpr", "send_cpr"]

#: How long ``accept()`` and ``reject()`` called on their own may take to send
#: the STATUS frame (``Incoming`` passes its step's deadline instead).
ANSWER_TIMEOUT = 10.0


def _ignore(_: str) -> None:
    pass


def send_cpr(
    target: Target,
    state: FdState,
    *,
    codec: Codec = "native",
    qemu_target: str | None = None,
    timeout: float | None = 10,
    progress: Progress | None = None,
    attempts: list[str] | None = None,
) -> Ack:
    """As ``fdchannel.send_cpr``: hand ``state`` over on the cpr channel ``target``
    and wait for the close-as-ack, within ``timeout`` (HandoffTimeout)."""
    check_qemu_target(codec, qemu_target)
    try:
        return exchange_cpr(
            cpr_channel(target),
            state,
            codec,
            qemu_target,
            Deadline(timeout),
            progress or _ignore,
            attempts,
        )
    except TransportTimeout as exc:
        raise HandoffTimeout(no_ack_within(target, timeout)) from exc


def exchange_cpr(
    channel: Channel,
    state: FdState,
    codec: Codec,
    qemu_target: str | None,
    deadline: Deadline,
    report: Progress,
    attempts: list[str] | None = None,
) -> Ack:
    """``send_cpr`` under ``deadline``: a TransportTimeout when it passes."""
    started = now()
    with connect_retrying(channel, deadline, attempts) as stream:
        report("connected")
        encoder = Encoder(state, codec, qemu_target=qemu_target)
        send_with(stream, encoder, timeout=deadline.left())
        report("sent")
        kind = await_verdict(stream, encoder, deadline.left())
        report("acknowledged")
    return Ack(codec, len(state), now() - started, kind)


class ReceivedCpr(ReceivedCprCore[Stream]):
    """As ``fdchannel.ReceivedCpr``: ``accept()`` or ``reject(reason)``, once; each
    sends its STATUS frame (native) within ``ANSWER_TIMEOUT``, then closes."""

    def accept(self) -> str:
        """Acknowledge; "closed the connection", or "the sender had already hung up"."""
        return self._give("accepted", "", ANSWER_TIMEOUT)

    def reject(self, reason: str) -> str:
        """Refuse: a native sender reads ``reason``, a qemu sender sees the close."""
        return self._give("rejected", reason, ANSWER_TIMEOUT)

    def close(self) -> None:
        """Close without a status (a native sender reads that as a failure)."""
        self._closing()
        self.stream.close()

    def _give(self, verdict: str, reason: str, timeout: float | None) -> str:
        """Answer ``verdict`` (with ``reason``), its STATUS frame (if any) sent
        within ``timeout``, then close."""
        status = self._answer(verdict, reason)
        try:
            if status is not None:
                self.stream.send(status, timeout)
            outcome = "closed the connection"
        except ConnectionLostError:
            outcome = "the sender had already hung up"
        finally:
            self.close()
        return outcome


def receive_cpr(
    source: Target | Listener,
    *,
    timeout: float | None = 10,
    limits: Limits = DEFAULT_LIMITS,
    on_refused: Callable[[PeerCredentialsError], None] | None = None,
    progress: Progress | None = None,
    **listen_options: object,
) -> ReceivedCpr:
    """As ``fdchannel.receive_cpr``: accept one admitted peer on ``source`` (a cpr
    channel, or a listener already open) and read its state to EOF, within
    ``timeout`` (HandoffTimeout); on any error every descriptor received is closed."""
    deadline = Deadline(timeout)
    try:
        if isinstance(source, Listener):
            return take_cpr(source, deadline, limits, on_refused, progress)
        with listen(cpr_channel(source), **listen_options) as listener:
            return take_cpr(listener, deadline, limits, on_refused, progress)
    except TransportTimeout as exc:
        raise HandoffTimeout(no_state_within(timeout)) from exc


def take_cpr(
    listener: Listener,
    deadline: Deadline,
    limits: Limits = DEFAULT_LIMITS,
    on_refused: Callable[[PeerCredentialsError], None] | None = None,
    progress: Progress | None = None,
) -> ReceivedCpr:
    """``receive_cpr`` on a listener, under ``deadline`` (a TransportTimeout when
    it passes); the listener is closed once the peer is accepted."""
    report = progress or _ignore
    started = now()
    stream = accept_admitted(listener, deadline, on_refused or log_refused)
    # One peer per cpr channel: nobody else may queue up behind it.
    listener.close()
    accepted = now()
    report("accepted")
    try:
        state, codec = receive_state_and_codec(stream, limits=limits, timeout=deadline.left())
        report("received")
    except BaseException:
        stream.close()
        raise
    timings = {"accept": accepted - started, "receive": now() - accepted}
    return ReceivedCpr(state, codec, stream, str(listener.address), timings)
