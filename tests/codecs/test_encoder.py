"""The sans-I/O Encoder: what to send, and every answer a receiver can give."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import pytest

from fdchannel import FdState, HandoffError, NamedFd, ProtocolError
from fdchannel.codecs import Decoder, native
from fdchannel.codecs.encoder import Encoder, Phase
from fdchannel.fds import SCM_MAX_FD

from ..conftest import close_fds


@pytest.fixture
def memfds() -> Iterator[list[int]]:
    fds = [os.memfd_create(f"m{i}", os.MFD_CLOEXEC) for i in range(2 * SCM_MAX_FD + 3)]
    yield fds
    close_fds(fds)


def _state(fds: list[int]) -> FdState:
    return FdState([NamedFd("conn", i, fd) for i, fd in enumerate(fds)])


def _bytewise(encoder: Encoder, data: bytes) -> None:
    for i in range(len(data)):
        encoder.receive_data(data[i : i + 1])


#: (codec, what the receiver says after the state, the phase or the error it ends in)
VERDICTS = [
    ("native", [native.status_frame(True)], Phase.ACCEPTED),
    ("native", [native.status_frame(False, "no room")], "rejected the state: no room"),
    ("native", [], "without a status"),
    ("native", [native.ack_frame(3)], "acknowledged 3 descriptors, not none"),
    ("native", [native.status_frame(True)[:3]], "in the middle of a reply frame"),
    ("qemu", [], Phase.ACCEPTED),
]


@pytest.mark.parametrize(("codec", "replies", "end"), VERDICTS)
@pytest.mark.parametrize("split", [False, True], ids=["whole", "bytewise"])
def test_verdicts(
    memfds: list[int], codec: str, replies: list[bytes], end: Phase | str, split: bool
) -> None:
    encoder = Encoder(_state(memfds[:2]), codec, window=0)  # type: ignore[arg-type]
    messages = encoder.data_to_send()
    assert sum(len(fds) for _, fds in messages) == 2
    assert encoder.phase is Phase.AWAITING_VERDICT

    def answer() -> None:
        for reply in replies:
            (_bytewise if split else Encoder.receive_data)(encoder, reply)
        encoder.receive_eof()

    if isinstance(end, str):
        with pytest.raises((HandoffError, ProtocolError), match=end):
            answer()
    else:
        answer()
        assert encoder.phase is end


def test_windows_wait_for_their_acknowledgement(memfds: list[int]) -> None:
    encoder = Encoder(_state(memfds), "native", window=SCM_MAX_FD)
    first = encoder.data_to_send()
    assert sum(len(fds) for _, fds in first) == SCM_MAX_FD
    assert encoder.phase is Phase.AWAITING_ACK
    assert encoder.data_to_send() == []  # nothing until the receiver answers
    wrong = Encoder(_state(memfds), "native", window=SCM_MAX_FD)
    wrong.data_to_send()
    with pytest.raises(ProtocolError, match="acknowledged 1 descriptors, not 253"):
        wrong.receive_data(native.ack_frame(1))
    _bytewise(encoder, native.ack_frame(SCM_MAX_FD))
    assert encoder.phase.name == "SENDING"
    encoder.data_to_send()
    with pytest.raises(ProtocolError, match="closed while we waited"):
        encoder.receive_eof()


def test_a_rejection_during_the_windows_names_its_reason(memfds: list[int]) -> None:
    encoder = Encoder(_state(memfds), "native", window=SCM_MAX_FD)
    encoder.data_to_send()
    assert encoder.rejection(native.status_frame(False, "limit 40")) == "limit 40"


def test_encoder_and_decoder_talk_without_io(memfds: list[int]) -> None:
    """Each side's output is the other's input: the whole exchange in memory."""
    encoder = Encoder(_state(memfds), "native", window=SCM_MAX_FD)
    decoder = Decoder()
    received: list[int] = []
    try:
        while encoder.phase is not Phase.AWAITING_VERDICT:
            for data, fds in encoder.data_to_send():
                copies = [os.dup(fd) for fd in fds]  # what the kernel would install
                received += copies
                decoder.feed(data, copies)
            for frame in decoder.take_outgoing():
                encoder.receive_data(frame)
        with decoder.finish() as state:
            assert [entry.id for entry in state.fds] == list(range(len(memfds)))
            received = []  # the state owns them now, and closes them
        encoder.receive_data(native.status_frame(True))
        encoder.receive_eof()
        assert encoder.phase.name == "ACCEPTED"
    finally:
        decoder.close()
        close_fds(received)


def test_an_unknown_codec_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown codec"):
        Encoder(FdState(), "json")  # type: ignore[arg-type]


@pytest.mark.parametrize("window", [0, SCM_MAX_FD])
def test_the_first_message_leaves_alone_then_batches(window: int) -> None:
    """A driver in a hurry gets the first message before the rest is encoded; the
    batches, strung together, are what data_to_send gives at once."""
    fds = [os.memfd_create(f"m{i}", os.MFD_CLOEXEC) for i in range(40 * SCM_MAX_FD)]
    try:
        state = _state(fds)
        whole, hurried = Encoder(state, window=window), Encoder(state, window=window)
        sizes: list[int] = []
        while whole.phase is not Phase.AWAITING_VERDICT:
            expected = whole.data_to_send()
            got: list[tuple[bytes, Sequence[int]]] = []
            while hurried.phase is Phase.SENDING:
                batch = hurried.messages_to_send()
                sizes.append(len(batch))
                got += batch
            assert got == expected and hurried.phase is whole.phase
            if whole.phase is Phase.AWAITING_ACK:
                for encoder in (whole, hurried):
                    encoder.receive_data(native.ack_frame(encoder._awaiting))
        assert sizes[0] == 1 and max(sizes) > 1
    finally:
        close_fds(fds)
