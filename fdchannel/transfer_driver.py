"""send_state and receive_state without I/O: what to do next, for either layer.

h11's shape: a ``Sending`` or ``Receiving`` driver owns the ``Encoder`` or
the ``Decoder`` and every rule of the exchange, and answers ``next_action()``
with one thing for the I/O loop to do (send these messages, read up to N
bytes, half-close, wait for the peer's close, reply with a frame) or with
the end (``Sent``, ``Verdict``, ``Received``).  The loop does it and feeds
back what it read.  The async layer (``fdchannel.transfer``) and the
blocking one (``fdchannel.blocking``) are each a thin loop over these, so
the exchange is written once.  Nothing here waits or imports an event loop.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .capabilities import Capability
from .codec_choice import Codec
from .codecs import native
from .codecs.decoder import Decoder
from .codecs.encoder import Encoder, Phase
from .errors import CapabilityError, FdPassingError, HandoffError
from .fds import SCM_MAX_FD, FdRoom, Fds
from .state import DEFAULT_LIMITS, FdState, Limits

__all__ = [
    "READ",
    "REJECTION_GRACE",
    "HalfClose",
    "Peek",
    "Receive",
    "Received",
    "Receiving",
    "Reply",
    "SendMessages",
    "Sending",
    "Sent",
    "Verdict",
    "WaitPeerClosed",
]

#: The most bytes one read asks for.
READ = 65536
#: How long a sender whose receiver hung up looks for the receiver's reason.
REJECTION_GRACE = 1.0


# --- what the I/O loop does next ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendMessages:
    """Send each (bytes, descriptors) message, in order (``send_fds_many``)."""

    messages: list[tuple[bytes, Sequence[int]]]


@dataclass(frozen=True, slots=True)
class Receive:
    """Read up to ``max_bytes`` (and ``max_fds`` descriptors, when receiving a state),
    then feed the driver what came; an empty read is the peer's close."""

    max_bytes: int = READ
    max_fds: int = 0


@dataclass(frozen=True, slots=True)
class HalfClose:
    """Half-close the stream: the state is all sent."""


@dataclass(frozen=True, slots=True)
class WaitPeerClosed:
    """Wait until the peer closed (unread bytes kept), then ``peer_closed()``."""


@dataclass(frozen=True, slots=True)
class Sent:
    """The state is sent (and half-closed if asked): ``send_with`` ends here."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """The receiver's close-as-ack: "closed" (qemu) or "accepted" (native)."""

    kind: str


@dataclass(frozen=True, slots=True)
class Peek:
    """Look at the first ``size`` bytes without reading them, then ``peeked(data)``."""

    size: int


@dataclass(frozen=True, slots=True)
class Reply:
    """Send ``frame`` to the sender (an acknowledgement, or why we refuse)."""

    frame: bytes


@dataclass(frozen=True, slots=True)
class Received:
    """The whole state, and the codec it came in."""

    state: FdState
    codec: Codec


#: The reads each driver asks for, made once (a state's receive loop asks for
#: one per message of descriptors).
_READ_REPLIES = Receive()
_READ_STATE = Receive(READ, SCM_MAX_FD)

SendAction = SendMessages | Receive | HalfClose | WaitPeerClosed | Sent | Verdict
ReceiveAction = Peek | Receive | Reply | Received


# --- sending ------------------------------------------------------------------------------


class _Looking(enum.Enum):
    """Where a sender stands in looking for a rejection after its connection broke."""

    NOT = "not looking"
    LOOKING = "reading what the receiver said before it went"
    NOTHING = "the receiver went without a reason"


class _Stream(Protocol):
    """What the drivers ask of a stream of either layer."""

    @property
    def capabilities(self) -> Capability: ...

    def _describe(self) -> str: ...


class Sending:
    """The sender of one state: its messages, the acknowledgements, the verdict.

    ``next_action()`` until ``Sent`` (``send_with``), then again until
    ``Verdict`` (``await_verdict``).  When the connection breaks while
    sending, the loop calls ``broken()`` and runs on for the grace it
    returns at most: a rejecting receiver's reason is a HandoffError;
    ``Sent`` means it left none, and the loop raises what broke.
    """

    def __init__(self, encoder: Encoder, *, eof: bool = True) -> None:
        self.encoder = encoder
        self._eof_due = eof
        self._sent = encoder.phase is not Phase.SENDING
        self._looking = _Looking.NOT

    @classmethod
    def on(cls, stream: _Stream, encoder: Encoder, *, eof: bool = True) -> Sending:
        """The driver that sends ``encoder``'s state on ``stream`` (``send_with``); a
        CapabilityError, before anything is sent, if the stream cannot pass its
        descriptors."""
        if len(encoder.state) and Capability.FD_PASSING not in stream.capabilities:
            raise CapabilityError(f"{stream._describe()} cannot pass the state's descriptors")
        return cls(encoder, eof=eof)

    def next_action(self) -> SendAction:
        encoder = self.encoder
        if self._looking is _Looking.LOOKING:
            return _READ_REPLIES
        if self._looking is _Looking.NOTHING:
            return Sent()
        while encoder.phase is Phase.SENDING:
            # The first message alone (the receiver starts at once), then batches
            # for the stream's many-message fast path.
            messages = encoder.messages_to_send()
            if messages:
                return SendMessages(messages)
        if encoder.phase is Phase.AWAITING_ACK:
            return _READ_REPLIES
        if encoder.phase is Phase.ACCEPTED:
            return Verdict("closed" if encoder.codec == "qemu" else "accepted")
        if self._eof_due:
            self._eof_due = False
            return HalfClose()
        if not self._sent:
            self._sent = True
            return Sent()
        # qemu: a bare close, as QEMU does it.  native: a STATUS frame first, so
        # a rejection (with its reason) and a receiver that died before
        # acknowledging are told apart from the ack; anything after the status
        # is the peer's business: the close is what we wait for.
        if encoder.codec == "qemu" or encoder.status_accepted:
            return WaitPeerClosed()
        return _READ_REPLIES

    def receive_data(self, data: bytes) -> None:
        """What a ``Receive`` read; empty: the receiver closed."""
        if self._looking is _Looking.LOOKING:
            reason = self.encoder.rejection(data) if data else None
            if reason is not None:
                raise HandoffError(f"the receiver rejected the state: {reason}") from None
            if not data:
                self._looking = _Looking.NOTHING
        elif data:
            self.encoder.receive_data(data)
        else:
            self.encoder.receive_eof()

    def peer_closed(self) -> None:
        """The receiver closed, after ``WaitPeerClosed``."""
        self.encoder.receive_eof()

    def broken(self) -> float:
        """The connection broke while sending: look for the receiver's reason, for
        the seconds returned (``REJECTION_GRACE``) at most.

        A receiver that rejects says why, then closes while we may still be
        sending: its STATUS is waiting in our receive queue.  The loop drives
        on within the grace, taking the connection's end (or silence) as "no
        reason", and then raises what broke.
        """
        self._looking = _Looking.LOOKING
        return REJECTION_GRACE


# --- receiving ----------------------------------------------------------------------------


class Receiving:
    """The receiver of one state: room for its descriptors, its acknowledgements, its end.

    ``peek``: the stream can look at the first bytes unread (a unix socket),
    so room for the announced descriptors is made before the first read
    that could install them; the limits are read here, before the state
    comes (``FdRoom``).  On any error the loop calls ``close()``: every
    descriptor received so far is closed.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS, *, peek: bool = False) -> None:
        self.limits = limits
        self.decoder = Decoder(limits)
        self._peek_due = peek
        self._room = FdRoom() if peek else None
        self._replies: list[bytes] = []
        self._refusal: FdPassingError | None = None
        self._ended = False

    def next_action(self) -> ReceiveAction:
        if self._replies:
            return Reply(self._replies.pop(0))
        if self._refusal is not None:
            raise self._refusal  # told the sender why: now fail
        if self._peek_due:
            self._peek_due = False
            return Peek(native.HEADER_SIZE)
        if self._ended:
            state = self.decoder.finish()
            return Received(state, "native" if state.codec == "native" else "qemu")
        return _READ_STATE

    def peeked(self, data: bytes) -> None:
        """The first bytes, unread: make room for the descriptors they announce
        (RLIMIT_NOFILE), or tell a native sender why we refuse."""
        count = native.announced_count(data)
        if count is None or self._room is None:
            return
        try:
            self._room.ensure(min(count, self.limits.max_entries))
        except FdPassingError as exc:
            self._refusal = exc
            self._replies.append(native.status_frame(False, str(exc)))

    def receive_data(self, data: bytes, fds: Fds, *, at_eof: bool = False) -> None:
        """What a ``Receive`` read (the driver owns ``fds`` from here on); nothing
        at all is the end.  ``at_eof``: the stream saw its end with this read."""
        if not data and not fds:
            self._ended = True
            return
        decoder = self.decoder
        decoder.feed(data, fds)
        self._replies.extend(decoder.take_outgoing())
        if decoder.done and at_eof:
            self._ended = True  # the EOF came with the last read: no trip back for it

    def close(self) -> None:
        """Close every descriptor received and not handed out (error paths)."""
        self.decoder.close()
