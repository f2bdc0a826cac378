"""The Decoder: where it lives, what it loads, and a state read whole from its pieces."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from itertools import pairwise

import pytest

import fdchannel.codecs
from fdchannel import FdState, NamedFd, ProtocolError
from fdchannel.codecs import decoder, native
from fdchannel.fds import SCM_MAX_FD

#: Descriptors of the states here: two full messages and a short one.
COUNT = 2 * SCM_MAX_FD + 94


def test_the_decoder_has_its_module_and_is_still_imported_from_the_package() -> None:
    assert fdchannel.codecs.Decoder is decoder.Decoder
    assert decoder.Decoder.__module__ == "fdchannel.codecs.decoder"


def test_the_native_codec_never_loads_the_qemu_codec() -> None:
    """A native state sent and read whole; ``fdchannel.codecs.qemu`` is still one
    attribute away when it is wanted."""
    code = (
        "import sys\n"
        "from fdchannel import FdState, NamedFd\n"
        "from fdchannel.codecs import Decoder, native\n"
        "from fdchannel.codecs.encoder import Encoder\n"
        "import fdchannel.transfer, fdchannel.transfer_driver\n"
        "messages = Encoder(FdState([NamedFd('a', 0, 0)])).data_to_send()\n"
        "d = Decoder()\n"
        "d.feed(b''.join(data for data, _ in messages), [0])\n"
        "d.finish()\n"
        "print('fdchannel.codecs.qemu' in sys.modules)\n"
        "import fdchannel.codecs\n"
        "print(fdchannel.codecs.qemu.MAGIC == 0x51435052)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["False", "True"]


def test_an_unknown_attribute_of_the_package_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'json'"):
        fdchannel.codecs.json  # noqa: B018


def _stream(window: int) -> tuple[bytes, list[tuple[int, int]]]:
    """A native state's bytes, and (offset, descriptors) where each message starts."""
    state = FdState([NamedFd("conn", i, 100 + i) for i in range(COUNT)], b"meta")
    data, starts = b"", []
    for step in native.encode(state, window):
        if isinstance(step, native.Send):
            starts.append((len(data), len(step.fds)))
            data += step.data
    return data, starts


def _pieces(cuts: list[int], window: int) -> list[tuple[bytes, int]]:
    """The stream cut at ``cuts``: each piece's bytes and the descriptors that come
    with it (a message's descriptors come with its first byte)."""
    data, starts = _stream(window)
    bounds = [0, *cuts, len(data)]
    return [(data[a:b], sum(n for at, n in starts if a <= at < b)) for a, b in pairwise(bounds)]


#: Where a stream is cut: within the first message (the header and the first
#: frame), then frames cut anywhere, and the rest (the last frames, the table and
#: the end): as a receiver that catches up with its sender reads it.
CUTS = [
    [native.HEADER_SIZE],
    [native.HEADER_SIZE, native.HEADER_SIZE + 3],
    [native.HEADER_SIZE + 7, native.HEADER_SIZE + 10],
    [native.HEADER_SIZE + 7, native.HEADER_SIZE + 14],
]


@pytest.mark.parametrize("cuts", CUTS)
def test_the_start_of_a_state_waits_for_the_rest_and_is_read_whole(cuts: list[int]) -> None:
    """Pieces are kept (no parser started) until the state is all there, then read
    in C passes, as a read of the whole stream is."""
    pieces = _pieces(cuts, window=0)
    fds = [os.memfd_create("d", os.MFD_CLOEXEC) for _ in range(COUNT)]
    d = decoder.Decoder()
    try:
        taken = 0
        for data, count in pieces:
            d.feed(data, fds[taken : taken + count])
            taken += count
            assert d._parser is None
        assert d.done
        with d.finish() as state:
            assert [fd for _, _, fd in state.fds] == fds
            assert state.metadata == b"meta"
    finally:
        d.close()


def test_an_acknowledgement_due_is_not_waited_for() -> None:
    """A state sent in windows: the parser reads the first piece at once, and owes
    the ack."""
    (first, count), _ = _pieces([native.HEADER_SIZE + 7], window=SCM_MAX_FD)
    fds = [os.memfd_create("d", os.MFD_CLOEXEC) for _ in range(count)]
    d = decoder.Decoder()
    try:
        d.feed(first, fds)
        assert d._parser is not None
        assert d.take_outgoing() == [native.ack_frame(SCM_MAX_FD)]
    finally:
        d.close()


#: (what is fed after the header, descriptors with it, the error): kept pieces
#: never hide an error the parser would see at once.
AT_ONCE = [
    (native._FULL_FDS_FRAME, 0, "253 descriptor\\(s\\) announced, 0 arrived"),
    (struct.pack(">BIH", 0x09, 2, 1), 0, "unknown frame type"),
]


@pytest.mark.parametrize(("more", "attached", "error"), AT_ONCE)
def test_what_cannot_be_whole_is_parsed_at_once(more: bytes, attached: int, error: str) -> None:
    header = _stream(0)[0][: native.HEADER_SIZE]
    d = decoder.Decoder()
    try:
        d.feed(header, [])  # the start of a state: kept
        with pytest.raises(ProtocolError, match=error):
            d.feed(more, [os.memfd_create("d", os.MFD_CLOEXEC) for _ in range(attached)])
    finally:
        d.close()


@pytest.mark.parametrize("closed", [False, True], ids=["finished", "closed"])
def test_a_stream_that_ends_while_kept_is_an_error_and_leaks_nothing(closed: bool) -> None:
    """The descriptors of kept pieces are the decoder's: closed on error or close()."""
    (first, count), _ = _pieces([native.HEADER_SIZE + 7], window=0)
    d = decoder.Decoder()
    d.feed(first, [os.memfd_create("d", os.MFD_CLOEXEC) for _ in range(count)])
    assert d._parser is None
    if not closed:
        with pytest.raises(ProtocolError, match="before its end marker"):
            d.finish()
    d.close()
