"""The cpr exchange on one channel, blocking, each side in one call: ``send_cpr``, ``receive_cpr``.

As ``fdchannel.send_cpr`` and ``fdchannel.receive_cpr``, with the same
parameters and results: ``send_cpr`` connects (retrying while the
receiver is not listening yet), sends the state, half-closes and waits for
the close-as-ack; ``receive_cpr`` accepts one admitted peer and reads its
state, which the caller then ``accept()``s or ``reject(reason)``s.
Both layers run the same drivers (``fdchannel.handoff.exchange``);
``Outgoing`` and ``Incoming`` run them inside their steps.
"""

from __future__ import annotations

from collections.abc import Callable

from ..channel import Target
from ..codec_choice import Codec
from ..errors import PeerCredentialsError
from ..protocol import exchange
from ..protocol.ack import Ack
from ..protocol.actions import Listen
from ..protocol.exchange import Progress, cpr_channel, log_refused, no_ack_within, no_state_within
from ..protocol.received import ReceivedCprCore
from ..state import DEFAULT_LIMITS, FdState, Limits
from ._handoff import bounded, drive
from ._listener import Listener
from ._stream import Stream

__all__ = ["ReceivedCpr", "receive_cpr", "send_cpr"]

#: How long ``accept()`` and ``reject()`` called on their own may take to send
#: the STATUS frame (``Incoming`` passes its step's deadline instead).
ANSWER_TIMEOUT = 10.0


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
    sending = exchange.sending(target, state, codec, qemu_target, progress, attempts)
    return bounded(sending, timeout, no_ack_within(target, timeout))


class ReceivedCpr(ReceivedCprCore[Stream]):
    """As ``fdchannel.ReceivedCpr``: ``accept()`` or ``reject(reason)``, once; each
    sends its STATUS frame (native) within ``ANSWER_TIMEOUT``, then closes."""

    def accept(self) -> str:
        """Acknowledge; "closed the connection", or "the sender had already hung up"."""
        return drive(self.answering("accepted", "", ANSWER_TIMEOUT))

    def reject(self, reason: str) -> str:
        """Refuse: a native sender reads ``reason``, a qemu sender sees the close."""
        return drive(self.answering("rejected", reason, ANSWER_TIMEOUT))

    def close(self) -> None:
        """Close without a status (a native sender reads that as a failure)."""
        drive(self.closing())


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
    opened = source if isinstance(source, Listener) else Listen(cpr_channel(source), listen_options)
    receiving = exchange.receiving(opened, limits, on_refused or log_refused, ReceivedCpr, progress)
    return bounded(receiving, timeout, no_state_within(timeout))
