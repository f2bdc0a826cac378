"""The cpr exchange on one channel, each side in one call: ``send_cpr``, ``receive_cpr``.

``send_cpr`` connects (retrying while the receiver is not listening yet),
sends the state, half-closes and waits for the close-as-ack.
``receive_cpr`` accepts one peer that passes the credential policy and
reads its state to EOF; the caller then ``accept()``s (the close that is
the acknowledgement, after an "accepted" status for a native sender) or
``reject(reason)``s it.  ``Outgoing``, ``Incoming`` and the command line
are built on these; the rules of the exchange are the transfer drivers'
(``fdchannel.transfer_driver``) and ``received.ReceivedCprCore``'s, shared
with ``fdchannel.blocking``'s namesakes, so these only move bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio

from ..codec_choice import Codec, check_qemu_target
from ..codecs.encoder import Encoder
from ..deadlines import now, seconds
from ..errors import HandoffTimeout, PeerCredentialsError
from ..state import DEFAULT_LIMITS, FdState, Limits
from ..transfer import await_verdict, receive_state_and_codec, send_with
from ..transports import Listener, Stream, Target, listen
from ..transports.retrying import accept_admitted, connect_retrying
from .ack import Ack
from .received import Progress, ReceivedCprCore, cpr_channel, no_ack_within, no_state_within

__all__ = ["Ack", "ReceivedCpr", "receive_cpr", "send_cpr"]

log = logging.getLogger("fdchannel")


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
    check_qemu_target(codec, qemu_target)
    report = progress or (lambda _: None)
    started = now()
    try:
        with anyio.fail_after(seconds(timeout)):
            stream = await connect_retrying(cpr_channel(target), attempts)
            report("connected")
            async with stream:
                encoder = Encoder(state, codec, qemu_target=qemu_target)
                await send_with(stream, encoder)
                report("sent")
                kind = await await_verdict(stream, encoder)
                report("acknowledged")
    except TimeoutError as exc:
        raise HandoffTimeout(no_ack_within(target, timeout)) from exc
    return Ack(codec, len(state), now() - started, kind)


class ReceivedCpr(ReceivedCprCore[Stream]):
    """A state received on a cpr channel, its connection still open: ``accept()``
    (the acknowledgement) or ``reject(reason)``, once (a second answer, or one after
    ``aclose()``, is a VerdictGiven).  The state owns its descriptors."""

    async def accept(self) -> str:
        """Acknowledge: an "accepted" status for a native sender, then the close.

        Returns what happened: "closed the connection", or "the sender had
        already hung up".  VerdictGiven if the state was answered already.
        """
        return await self._close(self._answer("accepted"))

    async def reject(self, reason: str) -> str:
        """Refuse: a native sender reads ``reason``; QEMU's protocol has no
        refusal, so a qemu sender sees the close (its own QEMU then fails to
        connect the main channel and keeps running)."""
        return await self._close(self._answer("rejected", reason))

    async def aclose(self) -> None:
        """Close without a status (a native sender reads that as a failure)."""
        self._closing()
        with anyio.CancelScope(shield=True):
            await self.stream.aclose()

    async def _close(self, status: bytes | None) -> str:
        try:
            if status is not None:
                await self.stream.send(status)
            outcome = "closed the connection"
        except anyio.BrokenResourceError:
            outcome = "the sender had already hung up"
        finally:
            await self.aclose()
        return outcome


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
    report = progress or (lambda _: None)
    refused = on_refused or (lambda exc: log.warning("%s", exc))
    started = now()
    try:
        with anyio.fail_after(seconds(timeout)):
            if isinstance(source, Listener):
                listener = source
                stream = await accept_admitted(listener, refused)
                # One peer per cpr channel: nobody else may queue up behind it.
                with anyio.CancelScope(shield=True):
                    await listener.aclose()
            else:
                async with await listen(cpr_channel(source), **listen_options) as listener:
                    stream = await accept_admitted(listener, refused)
            accepted = now()
            report("accepted")
            try:
                state, codec = await receive_state_and_codec(stream, limits=limits)
                report("received")
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await stream.aclose()
                raise
    except TimeoutError as exc:
        raise HandoffTimeout(no_state_within(timeout)) from exc
    timings = {"accept": accepted - started, "receive": now() - accepted}
    return ReceivedCpr(state, codec, stream, str(listener.address), timings)
