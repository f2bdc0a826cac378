"""send_state and receive_state without an event loop: the same sans-I/O codecs.

The ``Encoder`` (sending: messages, acknowledgements, the verdict) and the
``Decoder`` (receiving) do all the format work; this module only moves
their bytes and descriptors over a blocking stream, under one deadline
for the whole state.
"""

from __future__ import annotations

from ..capabilities import Capability
from ..codec_choice import Codec, check_qemu_target
from ..codecs import Decoder, native
from ..codecs.encoder import Encoder, Phase
from ..errors import (
    CapabilityError,
    ConnectionLostError,
    FdPassingError,
    HandoffError,
    TransportError,
)
from ..fds import SCM_MAX_FD, ensure_fd_room
from ..state import DEFAULT_LIMITS, FdState, Limits
from ._deadline import Deadline
from ._stream import Stream

__all__ = [
    "await_verdict",
    "receive_state",
    "receive_state_and_codec",
    "send_state",
    "send_with",
]

_READ = 65536
#: How long a sender whose receiver hung up looks for the receiver's reason.
_REJECTION_GRACE = 1.0


def send_state(
    stream: Stream,
    state: FdState,
    codec: Codec = "native",
    *,
    window: int | None = None,
    eof: bool = True,
    qemu_target: str | None = None,
    timeout: float | None = None,
) -> None:
    """Send ``state`` on ``stream`` and, unless ``eof`` is False, half-close it.

    As ``fdchannel.send_state``; ``timeout`` bounds the whole state (the
    native codec's acknowledgements included).  The sender keeps its
    descriptors: the kernel passes copies.
    """
    check_qemu_target(codec, qemu_target)
    encoder = Encoder(state, codec, window=window, qemu_target=qemu_target)
    send_with(stream, encoder, eof=eof, timeout=timeout)


def send_with(
    stream: Stream, encoder: Encoder, *, eof: bool = True, timeout: float | None = None
) -> None:
    """Send what ``encoder`` holds, answering its waits for acknowledgements,
    then half-close unless ``eof`` is False; ``await_verdict`` follows."""
    if len(encoder.state) and Capability.FD_PASSING not in stream.capabilities:
        raise CapabilityError(f"{stream._describe()} cannot pass the state's descriptors")
    deadline = Deadline(timeout)
    try:
        while True:
            # Every message up to the next acknowledgement due, in one call.
            stream.send_fds_many(encoder.data_to_send(), deadline.left())
            if encoder.phase is not Phase.AWAITING_ACK:
                break
            while encoder.phase is Phase.AWAITING_ACK:
                _feed(encoder, stream.receive(_READ, deadline.left()))
    except ConnectionLostError:
        # A receiver that rejects says why, then closes while we may still be
        # sending: its STATUS is waiting in our receive queue.
        reason = _rejection(stream, encoder)
        if reason is not None:
            raise HandoffError(f"the receiver rejected the state: {reason}") from None
        raise
    if eof:
        stream.send_eof()


def _feed(encoder: Encoder, data: bytes) -> None:
    """What a receive gave: bytes for the encoder, or (empty) the receiver's close."""
    if data:
        encoder.receive_data(data)
    else:
        encoder.receive_eof()


def await_verdict(stream: Stream, encoder: Encoder, timeout: float | None = None) -> str:
    """Wait for the receiver's close-as-ack: "closed" (qemu) or "accepted" (native).

    qemu: a bare close, as QEMU does it.  native: a STATUS frame first, so a
    rejection (with its reason) and a receiver that died before
    acknowledging are told apart from the ack.
    """
    deadline = Deadline(timeout)
    if encoder.codec == "qemu":
        stream.wait_peer_closed(deadline.left())
        encoder.receive_eof()
        return "closed"
    while not encoder.status_accepted:
        data = stream.receive(_READ, deadline.left())
        _feed(encoder, data)
        if not data:
            return "accepted"
    # Anything after the status is the peer's business: the close is what we
    # wait for (wait_peer_closed keeps stray bytes).
    stream.wait_peer_closed(deadline.left())
    encoder.receive_eof()
    return "accepted"


def _rejection(stream: Stream, encoder: Encoder) -> str | None:
    """The reason of a rejecting STATUS already received, if there is one."""
    deadline = Deadline(_REJECTION_GRACE)
    try:
        while data := stream.receive(_READ, deadline.left()):
            reason = encoder.rejection(data)
            if reason is not None:
                return reason
    except TransportError:  # gone for good, or said nothing in time
        return None
    return None


def receive_state(
    stream: Stream, *, limits: Limits = DEFAULT_LIMITS, timeout: float | None = None
) -> FdState:
    """Read a state to EOF; the codec is detected from its magic (``state.codec``).

    The returned state owns its descriptors.  On any error every descriptor
    received so far is closed.  ``timeout`` bounds the whole state.
    """
    state, _ = receive_state_and_codec(stream, limits=limits, timeout=timeout)
    return state


def receive_state_and_codec(
    stream: Stream, *, limits: Limits = DEFAULT_LIMITS, timeout: float | None = None
) -> tuple[FdState, Codec]:
    """``receive_state``, also telling which codec the sender used."""
    deadline = Deadline(timeout)
    fd_passing = Capability.FD_PASSING in stream.capabilities
    if fd_passing:
        # Make room before the first read that could install descriptors.
        count = native.announced_count(stream.peek(native.HEADER_SIZE, deadline.left()))
        if count is not None:
            _make_room(stream, min(count, limits.max_entries), deadline)
    decoder = Decoder(limits)
    try:
        while True:
            if fd_passing:
                data, fds = stream.receive_fds_many(_READ, SCM_MAX_FD, timeout=deadline.left())
            else:
                data, fds = stream.receive(_READ, deadline.left()), []
            if not data and not fds:
                break  # EOF
            decoder.feed(data, fds)
            for frame in decoder.take_outgoing():
                stream.send(frame, deadline.left())
            if decoder.done and stream.at_eof:
                break  # the EOF came with the last read: no trip back for it
        state = decoder.finish()
        return state, "native" if state.codec == "native" else "qemu"
    except BaseException:
        decoder.close()
        raise


def _make_room(stream: Stream, count: int, deadline: Deadline) -> None:
    """ensure_fd_room, telling a native sender why we refuse."""
    try:
        ensure_fd_room(count)
    except FdPassingError as exc:
        stream.send(native.status_frame(False, str(exc)), deadline.left())
        raise
