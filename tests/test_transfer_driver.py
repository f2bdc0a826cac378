"""send_state and receive_state written once: the sans-I/O drivers, and both layers over them.

First the drivers alone (``fdchannel.transfer_driver``): what they ask the
I/O loop to do, in order, for a native state sent in windows, and a
receiver that cannot make room for the descriptors.  Then each layer over
a real socket: the same ``timeout`` and the same error when a receiver
closes (without a reset) while the sender waits for an acknowledgement.
"""

from __future__ import annotations

import array
import functools
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.to_thread
import pytest

import fdchannel
from fdchannel import FdPassingError, FdState, NamedFd, blocking
from fdchannel.capabilities import Capability
from fdchannel.codecs import native
from fdchannel.codecs.encoder import Encoder
from fdchannel.errors import CapabilityError, ProtocolError, TransportTimeout
from fdchannel.fds import SCM_MAX_FD, FdRoom
from fdchannel.transfer_driver import (
    REJECTION_GRACE,
    HalfClose,
    Peek,
    Receive,
    Receiving,
    Reply,
    Sending,
    SendMessages,
    Sent,
    Verdict,
    WaitPeerClosed,
)
from fdchannel.transports._socket import UnixSocketStream

from .conftest import close_fds as close

#: Bounds a wait that must time out.
SHORT = 0.2
#: Two windows of SCM_MAX_FD descriptors: an acknowledgement travels between them.
COUNT = 300
LAYERS = ["async", "blocking"]


@contextmanager
def memfds(count: int) -> Iterator[FdState]:
    fds = [os.memfd_create(f"m{i}", os.MFD_CLOEXEC) for i in range(count)]
    with FdState([NamedFd("m", i, fd) for i, fd in enumerate(fds)], b"meta") as state:
        yield state


def test_the_sender_driver_asks_for_each_step_in_order() -> None:
    """Two windows, the ack between them, the half-close, then the verdict."""
    with memfds(COUNT) as state:
        sending = Sending(Encoder(state, "native", window=SCM_MAX_FD))
        steps: list[str] = []
        replies = [native.ack_frame(SCM_MAX_FD), native.status_frame(True)]
        while not isinstance(action := sending.next_action(), Verdict):
            steps.append(type(action).__name__)
            if isinstance(action, Receive):
                sending.receive_data(replies.pop(0))
            elif isinstance(action, WaitPeerClosed):
                sending.peer_closed()
        assert action == Verdict("accepted")
    assert steps == [
        SendMessages.__name__,
        Receive.__name__,
        SendMessages.__name__,
        HalfClose.__name__,
        Sent.__name__,
        Receive.__name__,
        WaitPeerClosed.__name__,
    ]


def test_a_broken_senders_driver_finds_the_reason() -> None:
    """After the connection broke, what the receiver said before it went is the error,
    looked for within the grace the driver gives."""
    with memfds(1) as state:
        sending = Sending(Encoder(state, "native"))
        assert isinstance(sending.next_action(), SendMessages)
        assert sending.broken() == REJECTION_GRACE
        assert sending.next_action() == Receive()
        with pytest.raises(fdchannel.HandoffError, match="rejected the state: no room"):
            sending.receive_data(native.status_frame(False, "no room"))
        sending.broken()
        sending.receive_data(b"")  # went without one: what broke stands
        assert sending.next_action() == Sent()


class _NoPassing:
    """A stream of either layer that cannot pass descriptors (TCP, say)."""

    capabilities = Capability.HALF_CLOSE

    def _describe(self) -> str:
        return "TcpStream(test)"


@pytest.mark.parametrize("count", [0, 1])
def test_the_sender_driver_checks_the_stream_before_anything_is_sent(count: int) -> None:
    """A state with descriptors needs a stream that passes them; an empty one does not."""
    with memfds(count) as state:
        encoder = Encoder(state)
        if count:
            with pytest.raises(CapabilityError, match=r"TcpStream\(test\) cannot pass"):
                Sending.on(_NoPassing(), encoder)
        else:
            assert isinstance(Sending.on(_NoPassing(), encoder).next_action(), SendMessages)


def test_a_receiver_without_room_says_why_then_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusal goes to the sender first (a Reply), then the driver raises it."""

    def no_room(room: FdRoom, count: int) -> None:
        raise FdPassingError(f"no room for {count}")

    monkeypatch.setattr(FdRoom, "ensure", no_room)
    receiving = Receiving(peek=True)
    assert receiving.next_action() == Peek(native.HEADER_SIZE)
    with memfds(3) as state:
        header = Encoder(state).data_to_send()[0][0][: native.HEADER_SIZE]
    receiving.peeked(header)
    assert receiving.next_action() == Reply(native.status_frame(False, "no room for 3"))
    with pytest.raises(FdPassingError, match="no room for 3"):
        receiving.next_action()
    receiving.close()


# --- both layers over a real socket -----------------------------------------------------


async def run(layer: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Await an async call; run a blocking one in a worker thread (bounded by its timeout)."""
    if layer == "async":
        return await call(*args, **kwargs)
    return await anyio.to_thread.run_sync(functools.partial(call, *args, **kwargs))


def stream(layer: str, sock: socket.socket) -> Any:
    return UnixSocketStream(sock, None) if layer == "async" else blocking.Stream(sock, None)


async def close_stream(layer: str, s: Any) -> None:
    await (s.aclose() if layer == "async" else anyio.to_thread.run_sync(s.close))


MODULES: dict[str, Any] = {"async": fdchannel, "blocking": blocking}


@pytest.mark.anyio
@pytest.mark.parametrize("direction", ["send", "receive"])
@pytest.mark.parametrize("layer", LAYERS)
async def test_the_same_timeout_for_a_whole_state(layer: str, direction: str) -> None:
    """A silent peer: the receiver gets nothing, the sender no acknowledgement."""
    ours, theirs = socket.socketpair()
    s = stream(layer, ours)
    module = MODULES[layer]
    try:
        with anyio.fail_after(10), memfds(COUNT) as state:
            call = (
                functools.partial(module.send_state, s, state, window=SCM_MAX_FD, timeout=SHORT)
                if direction == "send"
                else functools.partial(module.receive_state, s, timeout=SHORT)
            )
            with pytest.raises(TransportTimeout):
                await run(layer, call)
    finally:
        await close_stream(layer, s)
        theirs.close()


@pytest.mark.anyio
@pytest.mark.parametrize("layer", LAYERS)
async def test_a_received_state_holds_its_descriptors_as_c_ints(layer: str) -> None:
    """The receiver drains into an ``array('i')`` and the state keeps it: no Python
    int per descriptor (10,000 of them cost 150 to 300 us), the same descriptors."""
    ours, theirs = socket.socketpair()
    sender, receiver = stream(layer, ours), stream(layer, theirs)
    try:
        with anyio.fail_after(10), memfds(COUNT) as state:
            async with anyio.create_task_group() as tg:
                tg.start_soon(run, layer, MODULES[layer].send_state, sender, state)
                received = await run(layer, MODULES[layer].receive_state, receiver, timeout=10)
            with received:
                column = received.columns()[2]
                assert isinstance(column, array.array)
                inodes = [os.fstat(fd).st_ino for fd in column]
                assert inodes == [os.fstat(fd).st_ino for _, _, fd in state.fds]
    finally:
        await close_stream(layer, sender)
        await close_stream(layer, receiver)


def _drain_then_half_close(sock: socket.socket) -> None:
    """Take the first window (closing its descriptors), then half-close, unread nothing."""
    sock.settimeout(10)
    data, fds, _, _ = socket.recv_fds(sock, 65536, 253)
    close(fds)
    assert data
    sock.shutdown(socket.SHUT_WR)


@pytest.mark.anyio
@pytest.mark.parametrize("layer", LAYERS)
async def test_a_receiver_that_ends_before_an_ack_is_the_same_error(layer: str) -> None:
    """The receiver ends its side (a close, not a reset) while the sender waits for
    an acknowledgement: a ProtocolError in either layer (the Encoder's rule)."""
    ours, theirs = socket.socketpair()
    s = stream(layer, ours)
    try:
        with anyio.fail_after(10), memfds(COUNT) as state:
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.to_thread.run_sync, _drain_then_half_close, theirs)
                send = functools.partial(
                    MODULES[layer].send_state, s, state, window=SCM_MAX_FD, timeout=10
                )
                with pytest.raises(ProtocolError, match="acknowledgement"):
                    await run(layer, send)
    finally:
        await close_stream(layer, s)
        theirs.close()
