"""The old process's side: hand the state over, learn that the new one is ready."""

from __future__ import annotations

import warnings

import anyio
import anyio.abc

from ..codecs import main as main_channel
from ..state import FdState
from ..transports import Stream
from ..transports.retrying import connect_retrying
from . import cpr
from .ack import Ack
from .machine import Event, State
from .sides import OutgoingSide
from .steps import discard, step

__all__ = ["Ack", "Outgoing"]


class Outgoing(OutgoingSide, anyio.abc.AsyncResource):
    """Drive the outgoing side of a cpr-transfer handoff.

    ``send_cpr`` connects the cpr channel (retrying until the new process
    listens), sends the state, half-closes and waits for the new process to
    close: that close is the acknowledgement.  ``connect_main`` then connects the
    main channel.  Whatever fails, the descriptors in the state stay the
    caller's and open: the old process keeps running (the rollback).
    The channels' transports are loaded when the Outgoing is made, not in
    the middle of the handoff.

    ``codec`` and ``qemu_target``: see ``OutgoingSide``.
    """

    _load_transports = True
    _main_stream: Stream | None = None

    async def send_cpr(self, state: FdState, timeout: float | None = 10) -> Ack:
        """Send ``state`` on the cpr channel and wait for the close-as-ack."""
        self._machine.fire(Event.START)
        async with step(self._machine, "sending the state on the cpr channel", timeout):
            return await cpr.send_cpr(
                self.cpr,
                state,
                codec=self.codec,
                qemu_target=self.qemu_target,
                timeout=None,  # the step's deadline
                progress=self._progress,
            )

    async def connect_main(self, timeout: float | None = 10) -> Stream:
        """Connect the main channel (after the ack) and return its stream."""
        self._machine.fire(Event.FINISH)
        async with step(self._machine, "connecting the main channel", timeout):
            stream = await connect_retrying(self.main)
            self._main_stream = stream
            self._machine.fire(Event.MAIN_CONNECTED)
        return stream

    async def send_main(self, data: bytes = b"", timeout: float | None = 10) -> None:
        """Send ``data`` on main, half-close, and wait until the new process closed it.

        Calls ``connect_main`` first if it was not called.  The main stream is
        closed afterwards; failures become HandoffError, and a main stream
        that failed is closed at once (an ``exec:`` command is killed).
        """
        if self._machine.state is State.ACKED:
            await self.connect_main(timeout)
        stream = self._main_stream
        if stream is None or self._machine.state is not State.MAIN_OPEN:
            self._machine.fire(Event.COMPLETE)  # raises: not allowed here
            raise AssertionError  # pragma: no cover
        try:
            async with step(self._machine, "sending the main stream", timeout):
                # A length first, so the new process tells our death from the end.
                await stream.send(main_channel.header(len(data)))
                await stream.send(data)
                await stream.send_eof()
                await stream.wait_peer_closed()
                # Closing belongs to the step: what it reports (a file's delayed
                # write error) fails the handoff as a HandoffError.
                self._main_stream = None
                with anyio.CancelScope(shield=True):
                    await stream.aclose()
                self._machine.fire(Event.COMPLETE)
        except BaseException:
            # Failed or cancelled: no graceful close (a command that stopped
            # reading would be waited for, and its status raised over ours).
            self._main_stream = None
            await discard(stream)
            raise

    # The names before 0.2, kept for one release.

    async def start(self, state: FdState, timeout: float | None = 10) -> Ack:
        """Deprecated: ``send_cpr``."""
        _renamed("start", "send_cpr")
        return await self.send_cpr(state, timeout)

    async def finish(self, timeout: float | None = 10) -> Stream:
        """Deprecated: ``connect_main``."""
        _renamed("finish", "connect_main")
        return await self.connect_main(timeout)

    async def complete(self, data: bytes = b"", timeout: float | None = 10) -> None:
        """Deprecated: ``send_main``."""
        _renamed("complete", "send_main")
        await self.send_main(data, timeout)

    async def abort(self) -> None:
        """Give up at any step; safe to call more than once."""
        self._machine.fire(Event.ABORT)
        if self._main_stream is not None:
            stream, self._main_stream = self._main_stream, None
            await discard(stream)

    async def aclose(self) -> None:
        """``abort``: leaving ``async with`` gives up whatever is not finished."""
        await self.abort()


def _renamed(old: str, new: str) -> None:
    warnings.warn(
        f"Outgoing.{old} is deprecated: it is Outgoing.{new} now", DeprecationWarning, stacklevel=3
    )
