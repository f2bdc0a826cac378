"""send_state and receive_state: the transfer drivers looped over an async stream.

What to send and read, and every rule of the exchange, is
``fdchannel.transfer_driver``'s (the blocking layer loops over the same
drivers); this module only does the I/O they ask for.

The codec choice and its checks (``Codec``, ``check_qemu_target``) live in
``fdchannel.codec_choice`` and the room made for incoming descriptors
(``ensure_fd_room``) in ``fdchannel.fds``, where the blocking layer takes
them too; they can still be imported from here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress

import anyio

from . import transfer_driver as driver
from .capabilities import Capability
from .codec_choice import Codec as Codec, check_qemu_target as check_qemu_target
from .codecs.encoder import Encoder
from .deadlines import seconds, timeout_text
from .errors import ConnectionLostError, TransportTimeout
from .fds import Fds, ensure_fd_room as ensure_fd_room
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

#: A connection that can tell us nothing more.
_GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)
#: anyio's errors for a peer that hung up (a ConnectionLostError here).
_HUNG_UP = (anyio.BrokenResourceError, anyio.EndOfStream)


def _lost(stream: Stream, doing: str, exc: Exception) -> ConnectionLostError:
    """anyio's end-of-stream or broken-stream error ``exc`` as a ConnectionLostError."""
    detail = f": {exc}" if str(exc) else ""
    return ConnectionLostError(
        f"{stream._describe()}: the peer hung up while {doing}{detail}", stream.address
    )


async def send_state(
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

    ``qemu_target`` (qemu codec only): the QEMU version that reads the state,
    e.g. "10.0" or "11.1" (see ``qemu.subsections_for``); None sends the
    state's own subsections, i.e. what the QEMU it came from sent.  The
    sender keeps its descriptors: the kernel passes copies.  A peer that
    hangs up first is a ConnectionLostError.  ``timeout`` bounds the whole
    state, the native codec's acknowledgements included (TransportTimeout).
    """
    encoder = Encoder(state, codec, window=window, qemu_target=qemu_target)
    if timeout is None:
        await send_with(stream, encoder, eof=eof)  # no cancel scope to set up
        return
    with _within(stream, timeout, "sending the state"):
        await send_with(stream, encoder, eof=eof)


@contextmanager
def _within(stream: Stream, timeout: float, doing: str) -> Iterator[None]:
    """Bound what runs inside by ``timeout``: a TransportTimeout, as a blocking
    stream's deadline raises it."""
    try:
        with anyio.fail_after(seconds(timeout)):
            yield
    except TimeoutError as exc:
        raise TransportTimeout(
            f"{stream._describe()}: {doing} did not finish within {timeout_text(timeout)}",
            stream.address,
        ) from exc


async def send_with(stream: Stream, encoder: Encoder, *, eof: bool = True) -> None:
    """Send what ``encoder`` holds, answering its waits for acknowledgements,
    then half-close unless ``eof`` is False; ``await_verdict`` follows."""
    sending = driver.Sending.on(stream, encoder, eof=eof)
    try:
        await _drive(stream, sending)
    except anyio.BrokenResourceError as exc:
        with anyio.move_on_after(sending.broken()), suppress(*_GONE):
            await _drive(stream, sending)  # a HandoffError if it said why
        raise _lost(stream, "we sent the state", exc) from exc
    except anyio.EndOfStream as exc:
        raise _lost(stream, "we sent the state", exc) from exc


async def await_verdict(stream: Stream, encoder: Encoder) -> str:
    """Wait for the receiver's close-as-ack: "closed" (qemu) or "accepted" (native).

    qemu: a bare close, as QEMU does it (a receiver that died with our bytes
    unread makes the kernel report ECONNRESET instead).  native: a STATUS
    frame first, so a rejection (with its reason) and a receiver that died
    before acknowledging are told apart from the ack.
    """
    try:
        return await _drive(stream, driver.Sending(encoder, eof=False))
    except _HUNG_UP as exc:
        raise _lost(stream, "we waited for the acknowledgement", exc) from exc


async def _drive(stream: Stream, sending: driver.Sending) -> str:
    """Do what ``sending`` asks until the state is sent (returns "") or the
    verdict came (returns it)."""
    while True:
        action = sending.next_action()
        if isinstance(action, driver.SendMessages):
            await stream.send_fds_many(action.messages)
        elif isinstance(action, driver.Receive):
            try:
                data = await stream.receive(action.max_bytes)
            except anyio.EndOfStream:
                data = b""
            sending.receive_data(data)
        elif isinstance(action, driver.HalfClose):
            await stream.send_eof()
        elif isinstance(action, driver.WaitPeerClosed):
            await stream.wait_peer_closed()
            sending.peer_closed()
        elif isinstance(action, driver.Verdict):
            return action.kind
        else:
            return ""


async def receive_state(
    stream: Stream, *, limits: Limits = DEFAULT_LIMITS, timeout: float | None = None
) -> FdState:
    """Read a state to EOF; the codec is detected from its magic (``state.codec``).

    The returned state owns its descriptors.  On any error every descriptor
    received so far is closed.  ``timeout`` bounds the whole state
    (TransportTimeout).
    """
    state, _ = await receive_state_and_codec(stream, limits=limits, timeout=timeout)
    return state


async def receive_state_and_codec(
    stream: Stream, *, limits: Limits = DEFAULT_LIMITS, timeout: float | None = None
) -> tuple[FdState, Codec]:
    """``receive_state``, also telling which codec the sender used."""
    if timeout is None:
        return await _receive_state(stream, limits)
    with _within(stream, timeout, "receiving the state"):
        return await _receive_state(stream, limits)


async def _receive_state(stream: Stream, limits: Limits) -> tuple[FdState, Codec]:
    receiving = driver.Receiving(limits, peek=isinstance(stream, UnixSocketStream))
    fd_passing = Capability.FD_PASSING in stream.capabilities
    fds: Fds
    try:
        while True:
            action = receiving.next_action()
            if isinstance(action, driver.Receive):
                try:
                    if isinstance(stream, UnixSocketStream):
                        data, fds = await stream._receive_fd_array(action.max_bytes, action.max_fds)
                    elif fd_passing:
                        data, fds = await stream.receive_fds(action.max_bytes, action.max_fds)
                    else:
                        data, fds = await stream.receive(action.max_bytes), []
                except anyio.EndOfStream:
                    data, fds = b"", []
                receiving.receive_data(data, fds, at_eof=stream.at_eof)
            elif isinstance(action, driver.Reply):
                await stream.send(action.frame)
            elif isinstance(action, driver.Peek):
                assert isinstance(stream, UnixSocketStream)
                receiving.peeked(await stream.peek(action.size))
            else:
                return action.state, action.codec
    except _HUNG_UP as exc:
        receiving.close()
        raise _lost(stream, "we received the state", exc) from exc
    except BaseException:
        receiving.close()
        raise
