"""The cpr exchange on one channel, each side in one call: ``send_cpr``, ``receive_cpr``.

``send_cpr`` connects (retrying while the receiver is not listening yet),
sends the state, half-closes and waits for the close-as-ack.
``receive_cpr`` accepts one peer that passes the credential policy and
reads its state to EOF; the caller then ``accept()``s (the close that is
the acknowledgement, after an "accepted" status for a native sender) or
``reject(reason)``s it.  ``Outgoing``, ``Incoming`` and the command line
are built on these; the exchange is written once, as drivers
(``exchange``, ``received.ReceivedCprCore.answering``) that
``fdchannel.blocking``'s namesakes run too, so these only wait.
"""

from __future__ import annotations

from collections.abc import Callable

from ..codec_choice import Codec
from ..errors import PeerCredentialsError
from ..protocol import exchange
from ..protocol.ack import Ack
from ..protocol.actions import Listen
from ..protocol.exchange import Progress, cpr_channel, log_refused, no_ack_within, no_state_within
from ..protocol.received import ReceivedCprCore
from ..state import DEFAULT_LIMITS, FdState, Limits
from ..transports import Listener, Stream, Target
from .steps import bounded, drive

__all__ = ["Ack", "ReceivedCpr", "receive_cpr", "send_cpr"]


async def send_cpr(
    target: Target,
    state: FdState,
    *,
    codec: Codec = "native",
    qemu_target: str | None = None,
    timeout: float | None = 10,
    progress: Progress | None = None,
    attempts: list[str] | None = None,
) -> Ack:
    """Hand ``state`` over on the cpr channel ``target`` and wait for the close-as-ack.

    The caller keeps its descriptors whatever happens (the kernel passed
    copies).  ``timeout`` bounds the whole exchange (HandoffTimeout);
    ``progress`` hears each step as it ends; ``attempts`` collects why the
    connects that were retried failed.
    """
    sending = exchange.sending(target, state, codec, qemu_target, progress, attempts)
    return await bounded(sending, timeout, no_ack_within(target, timeout))


class ReceivedCpr(ReceivedCprCore[Stream]):
    """A state received on a cpr channel, its connection still open: ``accept()``
    (the acknowledgement) or ``reject(reason)``, once (a second answer, or one after
    ``aclose()``, is a VerdictGiven).  The state owns its descriptors."""

    async def accept(self) -> str:
        """Acknowledge: an "accepted" status for a native sender, then the close.

        Returns what happened: "closed the connection", or "the sender had
        already hung up".  VerdictGiven if the state was answered already.
        """
        return await drive(self.answering("accepted"))

    async def reject(self, reason: str) -> str:
        """Refuse: a native sender reads ``reason``; QEMU's protocol has no
        refusal, so a qemu sender sees the close (its own QEMU then fails to
        connect the main channel and keeps running)."""
        return await drive(self.answering("rejected", reason))

    async def aclose(self) -> None:
        """Close without a status (a native sender reads that as a failure)."""
        await drive(self.closing())


async def receive_cpr(
    source: Target | Listener,
    *,
    timeout: float | None = 10,
    limits: Limits = DEFAULT_LIMITS,
    on_refused: Callable[[PeerCredentialsError], None] | None = None,
    progress: Progress | None = None,
    **listen_options: object,
) -> ReceivedCpr:
    """Accept one admitted peer on ``source`` and read its state to EOF.

    ``source`` is a cpr channel to listen on, or a listener already open;
    either is closed once the peer is accepted (a cpr channel serves one).  ``timeout`` bounds
    the wait for the peer and the reading of its state (HandoffTimeout).
    Refused peers are closed unread and reported to ``on_refused`` (logged
    by default); ``progress`` hears "accepted", then "received".  On any
    error every descriptor received is closed.
    """
    opened = source if isinstance(source, Listener) else Listen(cpr_channel(source), listen_options)
    receiving = exchange.receiving(opened, limits, on_refused or log_refused, ReceivedCpr, progress)
    return await bounded(receiving, timeout, no_state_within(timeout))
