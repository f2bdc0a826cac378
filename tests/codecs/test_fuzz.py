"""Hostile input for both decoders: only typed errors, no leaked descriptors."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fdchannel import FdState, NamedFd, ProtocolError, TruncatedFdsError
from fdchannel.codecs import Decoder, native, qemu

from ..fuzzing import examples

ALLOWED = (ProtocolError, TruncatedFdsError)


def _fds_open() -> int:
    return len(os.listdir("/proc/self/fd"))


def _valid_streams() -> list[bytes]:
    state = FdState([NamedFd("ram0", 0, 1000), NamedFd("pc.rom", 3, 1001)], b"")
    qemu_bytes = b"".join(data for data, _ in qemu.encode(state))
    native_bytes = b"".join(
        s.data for s in native.encode(FdState(state.fds, b"meta"), 0) if isinstance(s, native.Send)
    )
    return [qemu_bytes, native_bytes]


VALID = _valid_streams()


def feed_all(chunks: list[tuple[bytes, int]]) -> None:
    """Feed chunks, each with ``n`` fresh descriptors; everything must end typed and closed."""
    decoder = Decoder()
    try:
        for data, nfds in chunks:
            fds = [os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC) for _ in range(nfds)]
            decoder.feed(data, fds)
        decoder.finish().close()
    except ALLOWED:
        pass
    finally:
        decoder.close()


@settings(max_examples=examples(3000), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.binary(max_size=64), st.integers(0, 3)), max_size=8))
def test_random_bytes_and_descriptors(chunks: list[tuple[bytes, int]]) -> None:
    before = _fds_open()
    feed_all(chunks)
    assert _fds_open() == before


@settings(max_examples=examples(2000), deadline=None)
@given(
    st.sampled_from(VALID),
    st.data(),
)
def test_mutated_valid_streams(stream: bytes, data: st.DataObject) -> None:
    before = _fds_open()
    mutated = bytearray(stream)
    for _ in range(data.draw(st.integers(0, 4))):
        if mutated:
            mutated[data.draw(st.integers(0, len(mutated) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(mutated)))
    nfds = data.draw(st.integers(0, 4))
    feed_all([(bytes(mutated[:cut]), nfds), (bytes(mutated[cut:]), 0)])
    assert _fds_open() == before


@pytest.mark.parametrize("stream", VALID, ids=["qemu", "native"])
def test_truncation_at_every_offset(stream: bytes) -> None:
    before = _fds_open()
    for cut in range(len(stream)):
        decoder = Decoder()
        fds = [os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC) for _ in range(2)]
        try:
            decoder.feed(stream[:cut], fds)
            with pytest.raises(ProtocolError):
                decoder.finish()
        except ProtocolError:
            pass
        finally:
            decoder.close()
    assert _fds_open() == before


_entries = st.lists(
    st.tuples(st.sampled_from(["a", "b", "ram0", "\u00e9"]), st.integers(-3, 600)),
    unique=True,
    max_size=600,
)


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_entries, st.binary(max_size=64))
def test_whole_and_stepwise_reads_agree(entries: list[tuple[str, int]], metadata: bytes) -> None:
    """parse_whole reads the encoder's streams exactly as the parser does step by step."""
    before = _fds_open()
    fds = [os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC) for _ in entries]
    try:
        named = [NamedFd(n, i, fd) for (n, i), fd in zip(entries, fds, strict=True)]
        state = FdState(named, metadata)
        data = b"".join(s.data for s in native.encode(state, 0) if isinstance(s, native.Send))
        whole = native.parse_whole(data, list(fds))
        decoder = Decoder()
        decoder.feed(data[:1], list(fds))
        decoder.feed(data[1:], [])
        assert whole is not None and whole == decoder.finish() == state
    finally:
        for fd in fds:
            os.close(fd)
    assert _fds_open() == before
