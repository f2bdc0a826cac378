"""The main channel's framing: a u64 length, then the bytes, read without I/O."""

from __future__ import annotations

import pytest

from fdchannel import ProtocolError
from fdchannel.protocol.main_framing import MainReader, header

#: (what arrives, in pieces; the data, or the error)
CASES = [
    ([header(5) + b"hello"], b"hello"),
    ([header(0)], b""),
    ([header(5)[:3], header(5)[3:] + b"he", b"llo"], b"hello"),
    ([header(5) + b"hel"], "ended after 3 of 5 bytes"),
    ([header(5)[:4]], "inside its 8-byte length"),
    ([], "ended after 0 bytes"),
    ([header(5) + b"hello!"], "more than the 5 bytes"),
    ([header(1 << 40)], "announces 1099511627776 bytes; the limit is 1073741824"),
]


@pytest.mark.parametrize(("pieces", "expected"), CASES)
def test_main_reader(pieces: list[bytes], expected: bytes | str) -> None:
    reader = MainReader()

    def read() -> bytes:
        for piece in pieces:
            reader.feed(piece)
        return reader.finish()

    if isinstance(expected, str):
        with pytest.raises(ProtocolError, match=expected):
            read()
    else:
        assert read() == expected
        assert reader.done and reader.wanted == 0


def test_wanted_never_reads_past_the_end() -> None:
    reader = MainReader()
    assert reader.wanted == 8
    reader.feed(header(3))
    assert reader.wanted == 3
    reader.feed(b"ab")
    assert (reader.wanted, reader.done) == (1, False)
