"""The old process's side as drivers (h11's shape), for either layer.

``OutgoingSide`` holds the channels, the codec and the machine; each step
(send the state, connect main, send main, abort) is a driver that fires the
machine's events itself and yields the I/O it needs (``actions``); the
layer's ``Outgoing`` runs it under the step's deadline.  Nothing here waits.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..channel import Channel
from ..codec_choice import Codec, check_qemu_target
from ..state import FdState
from . import exchange
from .ack import Ack
from .actions import Close, Connect, Discard, Driver, Send, SendEof, Step, WaitPeerClosed
from .machine import OUTGOING, Event, State
from .main_framing import header
from .side import Side

__all__ = ["OutgoingSide"]


class OutgoingSide(Side):
    """The old process's side: the channels, the codec and the QEMU it sends for.

    ``qemu_target`` (codec "qemu" only) is the QEMU version of the new
    process, e.g. "10.0" or "11.1": the state is encoded for it (QEMU 10.0
    fails on the subsections 10.1 and later send).  None sends what the
    state carries, i.e. what the QEMU it came from sent.  An unknown
    version is a StateError here, before anything is connected.
    """

    def __init__(
        self,
        channels: Iterable[Channel | str],
        *,
        codec: Codec = "native",
        qemu_target: str | None = None,
    ) -> None:
        super().__init__(channels, OUTGOING, "outgoing")
        self.codec = codec
        self.qemu_target = check_qemu_target(codec, qemu_target)
        #: The main channel's stream, from its connect until it is closed.
        self._main_stream: Any = None

    # Each step's driver; the layer's ``send_cpr`` and the rest run them.

    def _sending_cpr(self, state: FdState) -> Step[Ack]:
        self._machine.fire(Event.START)
        driver = exchange.sending(self.cpr, state, self.codec, self.qemu_target, self._progress)
        return Step("sending the state on the cpr channel", driver)

    @property
    def _main_due(self) -> bool:
        """``send_main`` connects main first (``connect_main`` was not called)."""
        return self._machine.state is State.ACKED

    def _connecting_main(self) -> Step[Any]:
        self._machine.fire(Event.FINISH)
        return Step("connecting the main channel", self._connect_main())

    def _connect_main(self) -> Driver[Any]:
        self._main_stream = yield Connect(self.main)
        self._machine.fire(Event.MAIN_CONNECTED)
        return self._main_stream

    def _sending_main(self, data: bytes) -> Step[None]:
        stream = self._main_stream
        if stream is None or self._machine.state is not State.MAIN_OPEN:
            self._machine.fire(Event.COMPLETE)  # raises: not allowed here
            raise AssertionError  # pragma: no cover
        return Step("sending the main stream", self._send_main(stream, data))

    def _send_main(self, stream: Any, data: bytes) -> Driver[None]:
        try:
            # A length first, so the new process tells our death from the end.
            yield Send(stream, header(len(data)))
            yield Send(stream, data)
            yield SendEof(stream)
            yield WaitPeerClosed(stream)
            # Closing belongs to the step: what it reports (a file's delayed
            # write error) fails the handoff as a HandoffError.
            self._main_stream = None
            yield Close(stream)
        except BaseException:
            # Failed or cancelled: no graceful close (a command that stopped
            # reading would be waited for, and its status raised over ours).
            self._main_stream = None
            yield Discard(stream)
            raise
        self._machine.fire(Event.COMPLETE)

    def _aborting(self) -> Driver[None]:
        self._machine.fire(Event.ABORT)
        if self._main_stream is not None:
            stream, self._main_stream = self._main_stream, None
            yield Discard(stream)
