"""The old process's side: hand the state over, learn that the new one is ready."""

from __future__ import annotations

import warnings

import anyio.abc

from ..protocol.ack import Ack
from ..protocol.outgoing_side import OutgoingSide
from ..state import FdState
from ..transports import Stream
from .steps import drive, run_step

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

    async def send_cpr(self, state: FdState, timeout: float | None = 10) -> Ack:
        """Send ``state`` on the cpr channel and wait for the close-as-ack."""
        return await run_step(self._machine, self._sending_cpr(state), timeout)

    async def connect_main(self, timeout: float | None = 10) -> Stream:
        """Connect the main channel (after the ack) and return its stream."""
        stream: Stream = await run_step(self._machine, self._connecting_main(), timeout)
        return stream

    async def send_main(self, data: bytes = b"", timeout: float | None = 10) -> None:
        """Send ``data`` on main, half-close, and wait until the new process closed it.

        Calls ``connect_main`` first if it was not called.  The main stream is
        closed afterwards; failures become HandoffError, and a main stream
        that failed is closed at once (an ``exec:`` command is killed).
        """
        if self._main_due:
            await self.connect_main(timeout)
        await run_step(self._machine, self._sending_main(data), timeout)

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
        await drive(self._aborting())

    async def aclose(self) -> None:
        """``abort``: leaving ``async with`` gives up whatever is not finished."""
        await self.abort()


def _renamed(old: str, new: str) -> None:
    warnings.warn(
        f"Outgoing.{old} is deprecated: it is Outgoing.{new} now", DeprecationWarning, stacklevel=3
    )
