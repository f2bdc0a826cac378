"""send_state and receive_state: the codecs driven over a stream.

The codec choice and its checks (``Codec``, ``check_qemu_target``) live in
``fdchannel.codec_choice`` and the room made for incoming descriptors
(``ensure_fd_room``) in ``fdchannel.fds``, where the blocking layer takes
them too; they can still be imported from here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import anyio

from .capabilities import Capability
from .codec_choice import Codec as Codec, check_qemu_target as check_qemu_target
from .codecs import Decoder, native
from .codecs.encoder import Encoder, Phase
from .errors import CapabilityError, ConnectionLostError, FdPassingError, HandoffError
from .fds import SCM_MAX_FD, ensure_fd_room as ensure_fd_room
from .state import DEFAULT_LIMITS, FdState, Limits
from .transports import Stream, UnixSocketStream

__all__ = [
    "await_verdict",
    "ensure_fd_room",
    "receive_state",
    "receive_state_and_codec",
    "send_state",
    "send_with",
]

_READ = 65536


@contextmanager
def _peer_loss_typed(stream: Stream, doing: str) -> Iterator[None]:
    """anyio's end-of-stream and broken-stream errors as ConnectionLostError."""
    try:
        yield
    except (anyio.BrokenResourceError, anyio.EndOfStream) as exc:
        detail = f": {exc}" if str(exc) else ""
        raise ConnectionLostError(
            f"{stream._describe()}: the peer hung up while {doing}{detail}", stream.address
        ) from exc


async def send_state(
    stream: Stream,
    state: FdState,
    codec: Codec = "native",
    *,
    window: int | None = None,
    eof: bool = True,
    qemu_target: str | None = None,
) -> None:
    """Send ``state`` on ``stream`` and, unless ``eof`` is False, half-close it.

    ``qemu_target`` (qemu codec only): the QEMU version that reads the state,
    e.g. "10.0" or "11.1" (see ``qemu.subsections_for``); None sends the
    state's own subsections, i.e. what the QEMU it came from sent.  The
    sender keeps its descriptors: the kernel passes copies.  A peer that
    hangs up first is a ConnectionLostError.
    """
    check_qemu_target(codec, qemu_target)
    encoder = Encoder(state, codec, window=window, qemu_target=qemu_target)
    await send_with(stream, encoder, eof=eof)


async def send_with(stream: Stream, encoder: Encoder, *, eof: bool = True) -> None:
    """Send what ``encoder`` holds, answering its waits for acknowledgements,
    then half-close unless ``eof`` is False; ``await_verdict`` follows."""
    if len(encoder.state) and Capability.FD_PASSING not in stream.capabilities:
        raise CapabilityError(f"{stream._describe()} cannot pass the state's descriptors")
    with _peer_loss_typed(stream, "we sent the state"):
        try:
            while True:
                # Every message up to the next acknowledgement due, in one call
                # (the stream's fast path).
                await stream.send_fds_many(encoder.data_to_send())
                if encoder.phase is not Phase.AWAITING_ACK:
                    break
                while encoder.phase is Phase.AWAITING_ACK:
                    encoder.receive_data(await stream.receive(_READ))
        except anyio.BrokenResourceError:
            # A receiver that rejects says why, then closes while we may still be
            # sending: its STATUS is waiting in our receive queue.
            reason = await _rejection(stream, encoder)
            if reason is not None:
                raise HandoffError(f"the receiver rejected the state: {reason}") from None
            raise
        if eof:
            await stream.send_eof()


async def await_verdict(stream: Stream, encoder: Encoder) -> str:
    """Wait for the receiver's close-as-ack: "closed" (qemu) or "accepted" (native).

    qemu: a bare close, as QEMU does it (a receiver that died with our bytes
    unread makes the kernel report ECONNRESET instead).  native: a STATUS
    frame first, so a rejection (with its reason) and a receiver that died
    before acknowledging are told apart from the ack.
    """
    with _peer_loss_typed(stream, "we waited for the acknowledgement"):
        if encoder.codec == "qemu":
            await stream.wait_peer_closed()
            encoder.receive_eof()
            return "closed"
        while True:
            try:
                data = await stream.receive(_READ)
            except anyio.EndOfStream:
                encoder.receive_eof()
                return "accepted"
            encoder.receive_data(data)
            if encoder.status_accepted:
                # Anything after the status is the peer's business: the close
                # is what we wait for (wait_peer_closed keeps stray bytes).
                await stream.wait_peer_closed()
                encoder.receive_eof()
                return "accepted"


async def _rejection(stream: Stream, encoder: Encoder) -> str | None:
    """The reason of a rejecting STATUS already received, if there is one."""
    with anyio.move_on_after(1):
        try:
            while True:
                reason = encoder.rejection(await stream.receive(_READ))
                if reason is not None:
                    return reason
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return None
    return None


async def _make_room(stream: Stream, count: int) -> None:
    """ensure_fd_room, telling a native sender why we refuse."""
    try:
        ensure_fd_room(count)
    except FdPassingError as exc:
        await stream.send(native.status_frame(False, str(exc)))
        raise


async def receive_state(stream: Stream, *, limits: Limits = DEFAULT_LIMITS) -> FdState:
    """Read a state to EOF; the codec is detected from its magic (``state.codec``).

    The returned state owns its descriptors.  On any error every descriptor
    received so far is closed.
    """
    state, _ = await receive_state_and_codec(stream, limits=limits)
    return state


async def receive_state_and_codec(
    stream: Stream, *, limits: Limits = DEFAULT_LIMITS
) -> tuple[FdState, Codec]:
    """``receive_state``, also telling which codec the sender used."""
    with _peer_loss_typed(stream, "we received the state"):
        return await _receive_state(stream, limits)


async def _receive_state(stream: Stream, limits: Limits) -> tuple[FdState, Codec]:
    fd_passing = Capability.FD_PASSING in stream.capabilities
    decoder = Decoder(limits)
    if isinstance(stream, UnixSocketStream):
        # Make room before the first read that could install descriptors.
        count = native.announced_count(await stream.peek(native.HEADER_SIZE))
        if count is not None:
            await _make_room(stream, min(count, limits.max_entries))
    try:
        while True:
            try:
                if isinstance(stream, UnixSocketStream):
                    data, fds = await stream.receive_fds_many(_READ, SCM_MAX_FD)
                elif fd_passing:
                    data, fds = await stream.receive_fds(_READ, SCM_MAX_FD)
                else:
                    data, fds = await stream.receive(_READ), []
            except anyio.EndOfStream:
                break
            decoder.feed(data, fds)
            for frame in decoder.take_outgoing():
                await stream.send(frame)
            if decoder.done and stream.at_eof:
                break  # the EOF came with the last read: no trip back for it
        state = decoder.finish()
        return state, "native" if state.codec == "native" else "qemu"
    except BaseException:
        decoder.close()
        raise
