"""The async layer's loop under the handoff's drivers: their I/O, each step under its deadline.

``drive`` runs a driver (``actions``), doing each request on anyio streams
and listeners; ``run_step`` runs one step of a side (send the state, connect
main, ...) under its timeout and moves the side's state machine to FAILED or
ABORTED when the step does not finish (``protocol.side.fail_step``, the blocking
layer's rule too); ``discard`` closes a stream such a step leaves behind.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

import anyio

from ..deadlines import seconds, timeout_text
from ..errors import ConnectionLostError, FdChannelError, HandoffTimeout, TransportTimeout
from ..protocol import actions as do
from ..protocol.machine import Machine
from ..protocol.side import fail_step
from ..transfer import await_verdict, receive_state_and_codec, send_with
from ..transports import Stream, UnixSocketStream, listen
from ..transports.retrying import accept_admitted, connect_retrying

__all__ = ["bounded", "discard", "drive", "run_step", "step"]

log = logging.getLogger("fdchannel")

T = TypeVar("T")


class _AnyioIO:
    """Each request of a driver, done on anyio streams and listeners."""

    async def connect(self, r: do.Connect) -> Stream:
        return await connect_retrying(r.channel, r.attempts)

    async def listen(self, r: do.Listen) -> Any:
        return await listen(r.channel, **r.options)

    async def accept(self, r: do.Accept) -> Stream:
        return await accept_admitted(r.listener, r.on_refused)

    async def send_state(self, r: do.SendState) -> None:
        await send_with(r.stream, r.encoder)

    async def await_verdict(self, r: do.AwaitVerdict) -> str:
        return await await_verdict(r.stream, r.encoder)

    async def receive_state(self, r: do.ReceiveState) -> Any:
        return await receive_state_and_codec(r.stream, limits=r.limits)

    async def send(self, r: do.Send) -> None:
        with _typed(r.stream, r.timeout, "sending"):
            await r.stream.send(r.data)

    async def send_fds(self, r: do.SendFds) -> None:
        with _typed(r.stream, None, "sending"):
            await r.stream.send_fds(r.data, r.fds)

    async def send_eof(self, r: do.SendEof) -> None:
        await r.stream.send_eof()

    async def wait_peer_closed(self, r: do.WaitPeerClosed) -> None:
        await r.stream.wait_peer_closed()

    async def receive(self, r: do.Receive) -> bytes:
        try:
            with _typed(r.stream, r.timeout, "receiving"):
                data: bytes = await r.stream.receive(r.max_bytes)
        except anyio.EndOfStream:
            return b""
        return data

    async def adopt(self, r: do.Adopt) -> Stream:
        return UnixSocketStream(r.sock, None)

    async def wait_readable(self, r: do.WaitReadable) -> bool:
        with anyio.move_on_after(seconds(r.timeout)):
            await anyio.wait_readable(r.fd)
            return True
        return False

    async def sleep(self, r: do.Sleep) -> None:
        await anyio.sleep(r.seconds)

    async def close(self, r: do.Close) -> None:
        with anyio.CancelScope(shield=True):
            await r.resource.aclose()

    async def discard(self, r: do.Discard) -> None:
        await discard(r.stream)


_IO = _AnyioIO()


@contextmanager
def _typed(stream: Stream, timeout: float | None, doing: str) -> Iterator[None]:
    """A request on ``stream`` within its own ``timeout``: a broken connection is a
    ConnectionLostError and the time up a TransportTimeout, as in the blocking layer."""
    try:
        with anyio.fail_after(seconds(timeout)):
            yield
    except anyio.BrokenResourceError as exc:
        raise ConnectionLostError(f"{stream._describe()}: {exc}", stream.address) from exc
    except TimeoutError as exc:
        raise TransportTimeout(
            f"{stream._describe()}: {doing} did not finish within {timeout_text(timeout)}",
            stream.address,
        ) from exc


async def drive(driver: do.Driver[T]) -> T:
    """Run ``driver`` to its end: what it returns, or what it raises."""
    driving = do.Driving(driver)
    for request in driving:
        # Once cancelled, the driver's clean-up must still run (each of its
        # requests is bounded by a timeout of its own).
        with driving.catching(), anyio.CancelScope(shield=driving.unwinding):
            driving.done(await getattr(_IO, request.verb)(request))
    return driving.result


async def bounded(driver: do.Driver[T], timeout: float | None, late: str) -> T:
    """``drive`` within ``timeout``: a HandoffTimeout saying ``late`` once it passed."""
    try:
        with anyio.fail_after(seconds(timeout)):
            return await drive(driver)
    except TimeoutError as exc:
        raise HandoffTimeout(late) from exc


async def run_step(machine: Machine, step_: do.Step[T], timeout: float | None) -> T:
    """Run one step of a side under its deadline: ``step``."""
    async with step(machine, step_.what, timeout):
        return await drive(step_.driver)


@asynccontextmanager
async def step(machine: Machine, what: str, timeout: float | None) -> AsyncIterator[None]:
    """Run one handoff step under a deadline; failures become HandoffError.

    The machine moves to FAILED on any error, ABORTED on cancellation
    (``protocol.side.fail_step``, the blocking layer's rule too).
    """
    try:
        with anyio.fail_after(seconds(timeout)):
            yield
    except BaseException as exc:
        cut = isinstance(exc, anyio.BrokenResourceError | anyio.EndOfStream)
        fail_step(machine, exc, what, timeout, timed_out=isinstance(exc, TimeoutError), lost=cut)


async def discard(stream: Stream) -> None:
    """Close a stream a failed or abandoned handoff leaves behind: at once, quietly.

    An exec: command is killed instead of being given its grace period to
    finish (it may never read again), and whatever closing reports (a
    command's exit status, a file's delayed write error) is logged, not
    raised over the error that brought us here.
    """
    with anyio.CancelScope(shield=True):
        try:
            await stream.abort()
        except (FdChannelError, OSError, anyio.BrokenResourceError) as exc:
            log.debug("closing the stream to %s after the handoff stopped: %s", stream.address, exc)
