"""send_state and receive_state without an event loop: the same transfer drivers.

``fdchannel.transfer_driver``'s ``Sending`` and ``Receiving`` (the async
layer loops over them too) hold every rule of the exchange; this module
only does the I/O they ask for over a blocking stream, under one deadline
for the whole state.
"""

from __future__ import annotations

from contextlib import suppress

from .. import transfer_driver as driver
from ..capabilities import Capability
from ..codec_choice import Codec
from ..codecs.encoder import Encoder
from ..errors import ConnectionLostError, TransportError
from ..fds import Fds
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
    send_with(
        stream,
        Encoder(state, codec, window=window, qemu_target=qemu_target),
        eof=eof,
        timeout=timeout,
    )


def send_with(
    stream: Stream, encoder: Encoder, *, eof: bool = True, timeout: float | None = None
) -> None:
    """Send what ``encoder`` holds, answering its waits for acknowledgements,
    then half-close unless ``eof`` is False; ``await_verdict`` follows."""
    sending = driver.Sending.on(stream, encoder, eof=eof)
    try:
        _drive(stream, sending, Deadline(timeout))
    except ConnectionLostError:
        # A HandoffError if it said why; gone for good, or said nothing in
        # time: what broke stands.
        with suppress(TransportError):
            _drive(stream, sending, Deadline(sending.broken()))
        raise


def await_verdict(stream: Stream, encoder: Encoder, timeout: float | None = None) -> str:
    """Wait for the receiver's close-as-ack: "closed" (qemu) or "accepted" (native).

    qemu: a bare close, as QEMU does it.  native: a STATUS frame first, so a
    rejection (with its reason) and a receiver that died before
    acknowledging are told apart from the ack.
    """
    return _drive(stream, driver.Sending(encoder, eof=False), Deadline(timeout))


def _drive(stream: Stream, sending: driver.Sending, deadline: Deadline) -> str:
    """Do what ``sending`` asks until the state is sent (returns "") or the
    verdict came (returns it)."""
    while True:
        action = sending.next_action()
        if isinstance(action, driver.SendMessages):
            stream.send_fds_many(action.messages, deadline.left())
        elif isinstance(action, driver.Receive):
            sending.receive_data(stream.receive(action.max_bytes, deadline.left()))
        elif isinstance(action, driver.HalfClose):
            stream.send_eof()
        elif isinstance(action, driver.WaitPeerClosed):
            stream.wait_peer_closed(deadline.left())
            sending.peer_closed()
        elif isinstance(action, driver.Verdict):
            return action.kind
        else:
            return ""


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
    fd_passing = Capability.FD_PASSING in stream.capabilities
    # A blocking stream that passes descriptors is a unix socket: it can peek.
    receiving = driver.Receiving(limits, peek=fd_passing)
    deadline = Deadline(timeout)
    fds: Fds
    try:
        while True:
            action = receiving.next_action()
            if isinstance(action, driver.Receive):
                if fd_passing:
                    data, fds = stream._receive_fd_array(
                        action.max_bytes, action.max_fds, timeout=deadline.left()
                    )
                else:
                    data, fds = stream.receive(action.max_bytes, deadline.left()), []
                receiving.receive_data(data, fds, at_eof=stream.at_eof)
            elif isinstance(action, driver.Reply):
                stream.send(action.frame, deadline.left())
            elif isinstance(action, driver.Peek):
                receiving.peeked(stream.peek(action.size, deadline.left()))
            else:
                return action.state, action.codec
    except BaseException:
        receiving.close()
        raise
