"""The new process's side: receive the state, then acknowledge by closing."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import anyio.abc

from ..channel import Channel
from ..codecs.main import MainReader
from ..deadlines import seconds
from ..errors import HandoffError
from ..state import FdState
from ..transports import Listener, Stream, check_options, listen
from ..transports.retrying import accept_admitted
from .cpr import ReceivedCpr, receive_cpr
from .machine import Event, State
from .sides import IncomingSide
from .steps import discard, step

__all__ = ["Incoming"]

log = logging.getLogger("fdchannel")


def _log_refused(exc: Exception) -> None:
    log.warning("%s", exc)


class Incoming(IncomingSide, anyio.abc.AsyncResource):
    """Drive the incoming side of a cpr-transfer handoff, in QEMU's order.

    ``receive_cpr`` listens on the cpr channel (first of all), accepts one
    peer that passes the credential policy and reads the state to EOF.
    ``listen_main`` starts the main listener and *then* closes the cpr
    connection: that close tells the old process "I am listening".
    ``reject`` closes without listening (native codec: with a reason).
    The state is answered once: a second answer is a VerdictGiven.
    The channels' transports are loaded when the Incoming is made, not in
    the middle of the handoff.
    """

    _load_transports = True
    _cpr_listener: Listener | None = None
    _received: ReceivedCpr | None = None
    _main_listener: Listener | None = None
    _main_stream: Stream | None = None

    @staticmethod
    def _check_listen_options(channel: Channel, options: dict[str, Any]) -> None:
        check_options("listen", channel, options)

    async def listen_cpr(self) -> Listener:
        """Start listening on the cpr channel (``receive_cpr`` does it if needed)."""
        self._machine.fire(Event.LISTEN)
        async with step(self._machine, "listening on the cpr channel", None):
            self._cpr_listener = await listen(self.cpr, **self._cpr_options)
        return self._cpr_listener

    async def receive_cpr(self, timeout: float | None = 10) -> FdState:
        """Accept one peer on the cpr channel and read its state to EOF.

        The state owns its descriptors: the caller takes them over.
        """
        if self._machine.state is State.IDLE:
            await self.listen_cpr()
        listener = self._cpr_listener
        if listener is None:
            raise HandoffError(f"incoming handoff: cannot receive while {self.state.value}")
        async with step(self._machine, "receiving the state on the cpr channel", timeout):
            self._received = await receive_cpr(
                listener,
                timeout=None,  # the step's deadline
                limits=self.limits,
                on_refused=_log_refused,
                progress=self._progress,
            )
            self.codec = self._received.codec
        return self._received.state

    async def listen_main(self, timeout: float | None = 10) -> Listener:
        """Listen on the main channel, then close cpr: the acknowledgement.

        ``timeout`` bounds sending the native codec's STATUS frame.
        """
        self._answer(Event.LISTEN_MAIN)
        async with step(self._machine, "listening on the main channel", timeout):
            self._main_listener = await listen(self.main, **self._main_options)
            received, self._received = self._received, None
            if received is not None and await received.accept() != "closed the connection":
                raise HandoffError("the old process hung up before the acknowledgement")
            await self._close_cpr()
        return self._main_listener

    async def accept_main(self, timeout: float | None = 10) -> Stream:
        """Accept the old process on the main channel."""
        listener = self._main_listener
        if listener is None:
            raise HandoffError(f"incoming handoff: cannot accept main while {self.state.value}")
        async with step(self._machine, "accepting the main channel", timeout):
            self._main_stream = await accept_admitted(listener, _log_refused)
            self._machine.fire(Event.MAIN_ACCEPTED)
        return self._main_stream

    async def receive_main(self, timeout: float | None = 10, limit: int = 1 << 30) -> bytes:
        """Accept main and read what ``Outgoing.send_main`` sent, then close: the handoff is done.

        The data is length-prefixed, so an old process that died half-way
        is an error, not a short read.  At most ``limit`` bytes are accepted.
        """
        stream = self._main_stream or await self.accept_main(timeout)
        try:
            async with step(self._machine, "reading the main channel", timeout):
                reader = MainReader(limit)
                while not reader.done:
                    try:
                        reader.feed(await stream.receive(min(reader.wanted, 1 << 20)))
                    except anyio.EndOfStream:
                        break
                data = reader.finish()
                # Closing belongs to the step: what it reports (an exec:
                # command's exit status) fails the handoff as a HandoffError.
                self._main_stream = None
                with anyio.CancelScope(shield=True):
                    await stream.aclose()
                self._machine.fire(Event.COMPLETE)
        finally:
            await self._close_main()
        return data

    async def reject(self, reason: str, timeout: float | None = 10) -> None:
        """Refuse the received state: close cpr without listening on main.

        ``timeout`` bounds sending the reason (native codec): a sender already
        gone, or not reading, needs none.
        """
        self._answer(Event.REJECT)
        received, self._received = self._received, None
        if received is not None:
            with anyio.move_on_after(seconds(timeout)):
                await received.reject(reason)
        await self._close_cpr()

    async def _close_listener(self) -> None:
        if self._cpr_listener is not None:
            listener, self._cpr_listener = self._cpr_listener, None
            with anyio.CancelScope(shield=True):
                await listener.aclose()

    async def _close_cpr(self) -> None:
        await self._close_listener()
        if self._received is not None:
            received, self._received = self._received, None
            await received.aclose()

    async def _close_main(self) -> None:
        """Close what is left of main: a stream still here belongs to a handoff that stopped."""
        if self._main_stream is not None:
            stream, self._main_stream = self._main_stream, None
            await discard(stream)
        if self._main_listener is not None:
            listener, self._main_listener = self._main_listener, None
            with anyio.CancelScope(shield=True):
                await listener.aclose()

    async def abort(self) -> None:
        """Give up at any step and close everything; safe to call more than once."""
        self._machine.fire(Event.ABORT)
        await self._close_cpr()
        await self._close_main()

    async def aclose(self) -> None:
        """``abort``: leaving ``async with`` gives up whatever is not finished."""
        await self.abort()
