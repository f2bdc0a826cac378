"""The new process's side as drivers (h11's shape), for either layer.

``IncomingSide`` holds the channels, the limits on what it accepts, each
channel's ``listen`` options and the machine; each step (listen on cpr,
receive the state, listen on main and acknowledge, accept and read main,
reject, abort) is a driver that fires the machine's events itself and
yields the I/O it needs (``actions``); the layer's ``Incoming`` runs it
under the step's deadline.  Nothing here waits.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..channel import Channel
from ..codec_choice import Codec
from ..errors import HandoffError, TransportTimeout, VerdictGiven
from ..state import DEFAULT_LIMITS, FdState, Limits
from . import exchange
from .actions import Accept, Close, Discard, Driver, Listen, Receive, Step
from .machine import INCOMING, Event, State
from .main_framing import MainReader
from .received import ReceivedCprCore
from .side import Side

__all__ = ["IncomingSide"]

#: The most bytes one read of the main channel asks for.
_MAIN_READ = 1 << 20
#: The incoming states in which the received state was answered, and how.
_ANSWERED = {
    State.LISTENING_MAIN: "accepted",
    State.MAIN_OPEN: "accepted",
    State.DONE: "accepted",
    State.REJECTED: "rejected",
}


class IncomingSide(Side):
    """The new process's side: the channels, the limits on what it accepts, and
    each channel's ``listen`` options.

    ``cpr_options`` and ``main_options`` go to each channel's ``listen``
    (e.g. ``mode``, ``policy`` for a unix socket); ``listen_options`` to
    both.  An option a channel's transport does not take is an AddressError
    here, not in the middle of the handoff.
    """

    #: The codec the old process used (known once the state arrived).
    codec: Codec | None = None
    _cpr_listener: Any = None
    _received: ReceivedCprCore[Any] | None = None
    _main_listener: Any = None
    _main_stream: Any = None

    def __init__(
        self,
        channels: Iterable[Channel | str],
        *,
        limits: Limits = DEFAULT_LIMITS,
        cpr_options: dict[str, Any] | None = None,
        main_options: dict[str, Any] | None = None,
        listen_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(channels, INCOMING, "incoming")
        self.limits = limits
        self._cpr_options = {**(listen_options or {}), **(cpr_options or {})}
        self._main_options = {**(listen_options or {}), **(main_options or {})}
        self._check_listen_options(self.cpr, self._cpr_options)
        self._check_listen_options(self.main, self._main_options)

    @staticmethod
    def _check_listen_options(channel: Channel, options: dict[str, Any]) -> None:
        """AddressError unless the layer's ``listen`` on ``channel`` takes ``options``."""
        raise NotImplementedError

    def _answer(self, event: Event) -> None:
        """Fire the answer to the received state (LISTEN_MAIN accepts it, or REJECT);
        VerdictGiven, the handoff left as it is, if it was answered already."""
        verdict = _ANSWERED.get(self.state)
        if verdict is not None:
            raise VerdictGiven(f"{self._machine.side} handoff: the received state", verdict)
        self._machine.fire(event)

    # Each step's driver; the layer's ``receive_cpr`` and the rest run them.

    def _listening_cpr(self) -> Step[Any]:
        self._machine.fire(Event.LISTEN)
        return Step("listening on the cpr channel", self._listen_cpr())

    def _listen_cpr(self) -> Driver[Any]:
        self._cpr_listener = yield Listen(self.cpr, self._cpr_options)
        return self._cpr_listener

    @property
    def _cpr_due(self) -> bool:
        """``receive_cpr`` listens first (``listen_cpr`` was not called)."""
        return self._machine.state is State.IDLE

    def _receiving_cpr(self, make: exchange.Make[ReceivedCprCore[Any]]) -> Step[FdState]:
        """``make``: the layer's ReceivedCpr."""
        listener = self._cpr_listener
        self._require(listener, State.LISTENING_CPR, "receive")
        return Step("receiving the state on the cpr channel", self._receive_cpr(listener, make))

    def _receive_cpr(
        self, listener: Any, make: exchange.Make[ReceivedCprCore[Any]]
    ) -> Driver[FdState]:
        received = yield from exchange.receiving(
            listener, self.limits, exchange.log_refused, make, self._progress
        )
        self._received, self.codec = received, received.codec
        return received.state

    def _require(self, resource: object, state: State, doing: str) -> None:
        """HandoffError now, before any wait, unless the step may run: a step after
        one that failed is refused at once, not after its whole timeout."""
        if resource is None or self.state is not state:
            raise HandoffError(f"incoming handoff: cannot {doing} while {self.state.value}")

    def _listening_main(self) -> Step[Any]:
        self._answer(Event.LISTEN_MAIN)
        return Step("listening on the main channel", self._listen_main())

    def _listen_main(self) -> Driver[Any]:
        self._main_listener = yield Listen(self.main, self._main_options)
        received, self._received = self._received, None
        if received is not None:
            outcome = yield from received.answering("accepted")
            if outcome != "closed the connection":
                raise HandoffError("the old process hung up before the acknowledgement")
        yield from self._close_cpr()
        return self._main_listener

    def _accepting_main(self) -> Step[Any]:
        listener = self._main_listener
        self._require(listener, State.LISTENING_MAIN, "accept main")
        return Step("accepting the main channel", self._accept_main(listener))

    def _accept_main(self, listener: Any) -> Driver[Any]:
        self._main_stream = yield Accept(listener, exchange.log_refused)
        self._machine.fire(Event.MAIN_ACCEPTED)
        return self._main_stream

    def _receiving_main(self, limit: int) -> Step[bytes]:
        """After ``_accepting_main``: the layer accepts first if it was not called."""
        self._require(self._main_stream, State.MAIN_OPEN, "read main")
        return Step("reading the main channel", self._receive_main(self._main_stream, limit))

    def _receive_main(self, stream: Any, limit: int) -> Driver[bytes]:
        # The data is length-prefixed, so an old process that died half-way is
        # an error, not a short read.
        try:
            reader = MainReader(limit)
            while not reader.done:
                chunk = yield Receive(stream, min(reader.wanted, _MAIN_READ))
                if not chunk:
                    break  # the end: finish() tells whether it came early
                reader.feed(chunk)
            data = reader.finish()
            # Closing belongs to the step: what it reports (an exec: command's
            # exit status) fails the handoff as a HandoffError.
            self._main_stream = None
            yield Close(stream)
            self._machine.fire(Event.COMPLETE)
        except BaseException:
            yield from self._close_main()
            raise
        yield from self._close_main()
        return data

    def _rejecting(self, reason: str, timeout: float | None) -> Driver[None]:
        """``timeout`` bounds sending the reason (native codec): a sender already
        gone, or not reading, needs none.  VerdictGiven now if answered already."""
        self._answer(Event.REJECT)
        received, self._received = self._received, None
        return self._reject(received, reason, timeout)

    def _reject(
        self, received: ReceivedCprCore[Any] | None, reason: str, timeout: float | None
    ) -> Driver[None]:
        try:
            if received is not None:
                yield from received.answering("rejected", reason, timeout)
        except TransportTimeout:
            pass  # the sender did not read the reason in time: the close tells it
        except BaseException:
            yield from self._close_cpr()
            raise
        yield from self._close_cpr()

    def _close_cpr(self) -> Driver[None]:
        if self._cpr_listener is not None:
            listener, self._cpr_listener = self._cpr_listener, None
            yield Close(listener)
        if self._received is not None:
            received, self._received = self._received, None
            yield from received.closing()

    def _close_main(self) -> Driver[None]:
        """Close what is left of main: a stream still here belongs to a handoff that stopped."""
        if self._main_stream is not None:
            stream, self._main_stream = self._main_stream, None
            yield Discard(stream)
        if self._main_listener is not None:
            listener, self._main_listener = self._main_listener, None
            yield Close(listener)

    def _aborting(self) -> Driver[None]:
        self._machine.fire(Event.ABORT)
        yield from self._close_cpr()
        yield from self._close_main()
