"""The sending side of a state, without I/O: the mirror of ``Decoder``.

h11-style: the driver asks ``data_to_send()`` for the messages to send now
(each one sendmsg's bytes and descriptors), and feeds whatever the receiver
answers to ``receive_data`` (or ``receive_eof`` when it closed).  The
native codec pauses after each window of descriptors until the receiver
acknowledged it (ACK frames), then, once the state is sent and the driver
half-closed, waits for the verdict: a STATUS frame, then the close.  The
qemu codec sends everything at once, and its verdict is the close alone, as
QEMU does it.  Every rule about the receiver's replies lives here, so the
async and the blocking drivers only move bytes.
"""

from __future__ import annotations

import enum
from collections.abc import Generator, Iterator, Sequence
from typing import TYPE_CHECKING

from ..codec_choice import Codec as Codec, check_codec, check_qemu_target
from ..errors import HandoffError, ProtocolError
from ..parsing import ByteSource
from ..state import FdState
from . import native

if TYPE_CHECKING:
    from .qemu import Message

__all__ = ["Encoder", "Phase"]

#: Native messages returned by one messages_to_send() after the first (which
#: returns one alone): enough for a stream's many-message fast path.
_BATCH = 16


class Phase(enum.Enum):
    """What the encoder waits for."""

    SENDING = "messages to send"
    AWAITING_ACK = "the receiver's acknowledgement of a window of descriptors"
    AWAITING_VERDICT = "the receiver's verdict (native: STATUS, then the close)"
    ACCEPTED = "accepted: the receiver closed after saying so"


class Encoder:
    """One state's messages, and the receiver's answers to them.

    The codec and ``qemu_target`` are checked here, before anything is
    encoded (``fdchannel.codec_choice``): both layers' ``send_state`` take
    their checks from the one place.
    """

    def __init__(
        self,
        state: FdState,
        codec: Codec = "native",
        *,
        window: int | None = None,
        qemu_target: str | None = None,
    ) -> None:
        if qemu_target is not None:
            check_qemu_target(codec, qemu_target)
        self.codec: Codec = check_codec(codec)
        self.state = state
        self.phase = Phase.SENDING
        #: Set once an accepting STATUS arrived (native), before the close.
        self.status_accepted = False
        #: The receiver's replies, made by the first (a sender may get none).
        self._replies: ByteSource | None = None
        self._parser: Generator[int, None, int | native.Status] | None = None
        self._awaiting = 0
        self._steps: Iterator[native.Send | native.AwaitAck] | None = None
        #: Messages the next messages_to_send() returns at most (native).
        self._batch = 1
        self._whole: list[Message] | None = None
        if codec == "qemu":
            # Imported here: a native sender never loads the qemu codec.
            from . import qemu

            # Encoded in full before the first byte goes: a state the target
            # cannot take (a VFIO device for QEMU 10.0) is refused unsent.
            self._whole = qemu.encode(state, qemu_target)
        else:
            self._steps = native.encode(state, window)

    def data_to_send(self) -> list[tuple[bytes, Sequence[int]]]:
        """The messages to send now, in order: up to the next acknowledgement due,
        or to the end of the state (then the phase is AWAITING_VERDICT)."""
        out: list[tuple[bytes, Sequence[int]]] = []
        while self.phase is Phase.SENDING:
            out += self.messages_to_send()
        return out

    def messages_to_send(self) -> list[tuple[bytes, Sequence[int]]]:
        """``data_to_send`` a few at a time, for a driver in a hurry: the first
        message alone, then batches; call again while the phase is SENDING (a
        call may return nothing as it reaches the end)."""
        if self.phase is not Phase.SENDING:
            return []
        if self._whole is not None:
            messages: list[tuple[bytes, Sequence[int]]] = [*self._whole]
            self._whole = None
            self.phase = Phase.AWAITING_VERDICT
            return messages
        assert self._steps is not None
        out: list[tuple[bytes, Sequence[int]]] = []
        for step in self._steps:
            if isinstance(step, native.AwaitAck):
                self._awaiting = step.count
                self.phase = Phase.AWAITING_ACK
                return out
            out.append(step)
            if len(out) == self._batch:
                # The rest on the next call: the first messages leave, and the
                # receiver starts installing them, while later ones are encoded.
                self._batch = _BATCH
                return out
        self.phase = Phase.AWAITING_VERDICT
        return out

    def receive_data(self, data: bytes) -> None:
        """Bytes from the receiver: ACK and STATUS frames (native only)."""
        if self._replies is None:
            self._replies = ByteSource()
        self._replies.append(data)
        while self._replies.available() or self._parser is not None:
            reply = self._next_reply()
            if reply is None:
                return  # the rest of a frame is still to come
            if isinstance(reply, native.Status):
                if not reply.accepted:
                    raise HandoffError(f"the receiver rejected the state: {reply.reason}")
                if self.phase is not Phase.AWAITING_VERDICT:
                    raise ProtocolError("the receiver accepted the state before it was sent")
                self.status_accepted = True
            elif self.phase is Phase.AWAITING_ACK and reply == self._awaiting:
                self.phase = Phase.SENDING
            else:
                wanted = self._awaiting if self.phase is Phase.AWAITING_ACK else "none"
                raise ProtocolError(f"receiver acknowledged {reply} descriptors, not {wanted}")

    def receive_eof(self) -> None:
        """The receiver closed: the acknowledgement, or a failure if it came early."""
        if self._parser is not None:
            raise ProtocolError("the receiver closed in the middle of a reply frame")
        if self.phase is Phase.AWAITING_VERDICT and (self.codec == "qemu" or self.status_accepted):
            self.phase = Phase.ACCEPTED
            return
        if self.phase is Phase.AWAITING_VERDICT:
            raise HandoffError(
                "the receiver closed the connection without a status: "
                "it died or gave up before acknowledging"
            )
        raise ProtocolError(f"the receiver closed while we waited for {self.phase.value}")

    def rejection(self, data: bytes) -> str | None:
        """The reason of a rejecting STATUS in ``data``, if any: what a receiver
        that refused says before it closes, found after our send broke."""
        try:
            self.receive_data(data)
        except HandoffError as exc:
            return str(exc).removeprefix("the receiver rejected the state: ")
        except ProtocolError:
            return None
        return None

    def _next_reply(self) -> int | native.Status | None:
        """One whole reply frame, or None if the rest of it is still to come
        (the parser waits, suspended, for the next receive_data)."""
        assert self._replies is not None
        try:
            if self._parser is None:
                self._parser = native.parse_reply(self._replies)
                next(self._parser)
            else:
                self._parser.send(None)
        except StopIteration as stop:
            self._parser = None
            reply: int | native.Status = stop.value
            return reply
        return None
