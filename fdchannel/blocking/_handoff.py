"""The blocking loop under the handoff's drivers: their I/O, each step under one deadline.

``drive`` runs a driver (``fdchannel.handoff.actions``), doing each
request on blocking streams and listeners, every wait drawing from one
``Deadline``; ``run_step`` runs one step of a side under its timeout, and
moves the side's machine to FAILED or ABORTED when the step does not
finish (``protocol.side.fail_step``, the async layer's rule too).
"""

from __future__ import annotations

import time
from typing import Any, TypeVar

from ..channel import Channel
from ..errors import ConnectError, HandoffTimeout, PeerCredentialsError
from ..protocol import actions as do
from ..protocol.machine import Machine
from ..protocol.side import fail_step
from ..retry import delays, worth_retrying
from ._deadline import READABLE, Deadline, TransportTimeout, wait_ready
from ._listener import Listener
from ._open import connect, listen
from ._stream import Stream
from ._transfer import await_verdict, receive_state_and_codec, send_with

__all__ = ["bounded", "connect_retrying", "drive", "run_step"]

T = TypeVar("T")


def _sooner(left: float | None, timeout: float | None) -> float | None:
    """The shorter of two waits (None: no limit)."""
    if left is None:
        return timeout
    return left if timeout is None else min(left, timeout)


class _BlockingIO:
    """Each request of a driver, done on blocking streams and listeners by ``deadline``."""

    __slots__ = ("deadline",)

    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline

    def connect(self, r: do.Connect) -> Stream:
        return connect_retrying(r.channel, self.deadline, r.attempts)

    def listen(self, r: do.Listen) -> Any:
        return listen(r.channel, **r.options)

    def accept(self, r: do.Accept) -> Stream:
        listener: Listener = r.listener
        while True:
            try:
                return listener.accept(self.deadline.left())
            except PeerCredentialsError as exc:
                r.on_refused(exc)  # closed unread by the listener: wait for the next

    def send_state(self, r: do.SendState) -> None:
        send_with(r.stream, r.encoder, timeout=self.deadline.left())

    def await_verdict(self, r: do.AwaitVerdict) -> str:
        return await_verdict(r.stream, r.encoder, self.deadline.left())

    def receive_state(self, r: do.ReceiveState) -> Any:
        return receive_state_and_codec(r.stream, limits=r.limits, timeout=self.deadline.left())

    def send(self, r: do.Send) -> None:
        r.stream.send(r.data, _sooner(self.deadline.left(), r.timeout))

    def send_eof(self, r: do.SendEof) -> None:
        r.stream.send_eof()

    def wait_peer_closed(self, r: do.WaitPeerClosed) -> None:
        r.stream.wait_peer_closed(self.deadline.left())

    def receive(self, r: do.Receive) -> bytes:
        data: bytes = r.stream.receive(r.max_bytes, _sooner(self.deadline.left(), r.timeout))
        return data

    def send_fds(self, r: do.SendFds) -> None:
        r.stream.send_fds(r.data, r.fds, self.deadline.left())

    def adopt(self, r: do.Adopt) -> Stream:
        return Stream(r.sock, None)

    def wait_readable(self, r: do.WaitReadable) -> bool:
        left = self.deadline.left()
        try:
            wait_ready(r.fd, READABLE, Deadline(_sooner(left, r.timeout)), f"descriptor {r.fd}")
        except TransportTimeout:
            if self.deadline.left() == 0:
                raise  # the step's deadline, not the request's
            return False
        return True

    def sleep(self, r: do.Sleep) -> None:
        left = self.deadline.left()
        time.sleep(r.seconds if left is None else min(r.seconds, left))

    def close(self, r: do.Close) -> None:
        r.resource.close()

    def discard(self, r: do.Discard) -> None:
        r.stream.close()  # a blocking stream is a socket: closing is at once and quiet


def drive(driver: do.Driver[T], deadline: Deadline | None = None) -> T:
    """Run ``driver`` to its end by ``deadline``: what it returns, or what it raises."""
    io = _BlockingIO(deadline or Deadline(None))
    driving = do.Driving(driver)
    for request in driving:
        with driving.catching():
            driving.done(getattr(io, request.verb)(request))
    return driving.result


def bounded(driver: do.Driver[T], timeout: float | None, late: str) -> T:
    """``drive`` within ``timeout``: a HandoffTimeout saying ``late`` once it passed."""
    try:
        return drive(driver, Deadline(timeout))
    except TransportTimeout as exc:
        raise HandoffTimeout(late) from exc


def run_step(machine: Machine, step: do.Step[T], timeout: float | None) -> T:
    """Run one step of a side under a deadline; failures become HandoffError.

    The machine moves to FAILED on any error, ABORTED on an interruption
    (KeyboardInterrupt, SystemExit): ``protocol.side.fail_step``, the async rule too.
    """
    deadline = Deadline(timeout)
    try:
        return drive(step.driver, deadline)
    except BaseException as exc:
        late = isinstance(exc, TransportTimeout)  # the step's deadline passed
        fail_step(machine, exc, step.what, timeout, timed_out=late, lost=False)


def connect_retrying(
    channel: Channel, deadline: Deadline, attempts: list[str] | None = None
) -> Stream:
    """Connect, retrying while the peer's socket is missing or refuses, until the deadline.

    QEMU does not retry; a new process that is still starting is normal for
    us, so we back off briefly (as the async side does) until the deadline.
    Each failed attempt's reason is appended to ``attempts`` if given.
    """
    pauses = delays()
    while True:
        try:
            return connect(channel, timeout=deadline.left())
        except ConnectError as exc:
            cause = worth_retrying(exc, attempts)
            left = deadline.left()
            if left == 0:
                raise TransportTimeout(
                    f"{channel.addr} never accepted a connection (last: {cause.strerror})",
                    channel.addr,
                ) from exc
        delay = next(pauses)
        time.sleep(delay if left is None else min(delay, left))
