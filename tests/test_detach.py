"""Handing a connection over at a message boundary: nothing read is lost or served twice.

A stream's ``detach()`` returns its descriptor and the bytes it read and did
not return; ``Stream.from_fd(fd, buffered=...)`` serves those first.  The
handover runs for tcp and unix connections, within a layer and across the
two, and into another process through ``pack_connections`` and a state;
then the parsing both layers share (``receive_until``, ``receive_exactly``),
detach's refusals, and the metadata framing.
"""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

import fdchannel
from fdchannel import (
    Detached,
    FdState,
    NamedFd,
    Unpacked,
    blocking,
    pack_connections,
    unpack_connections,
)
from fdchannel.detached import MAGIC
from fdchannel.errors import (
    CapabilityError,
    ConnectError,
    ProtocolError,
    StateError,
    TransportError,
)

from .children import ROOT

LONG = 10.0
KINDS = ["tcp", "unix"]
LAYERS = ["async", "blocking"]


@contextlib.contextmanager
def connection(kind: str) -> Iterator[tuple[int, socket.socket]]:
    """A connected pair: the server's descriptor (for a stream to take over) and the
    client's socket (closed on the way out)."""
    if kind == "unix":
        server, client = socket.socketpair()
    else:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            client = socket.create_connection(listener.getsockname()[:2], timeout=LONG)
            server, _ = listener.accept()
    client.settimeout(LONG)
    with client:
        yield server.detach(), client


class End:
    """A stream of either layer over a descriptor, driven from async code.  A blocking
    call runs inline, bounded by its timeout: the bytes it waits for were sent first."""

    def __init__(self, layer: str, fd: int, buffered: bytes = b"") -> None:
        self.layer = layer
        self.stream: Any
        if layer == "async":
            self.stream = fdchannel.Stream.from_fd(fd, buffered=buffered)
        else:
            self.stream = blocking.Stream.from_fd(fd, buffered=buffered)
        #: The layer's errors: a line too long, and the end before what was asked for.
        self.too_long: type[Exception] = (
            anyio.DelimiterNotFound if layer == "async" else ProtocolError
        )
        self.incomplete: type[Exception] = (
            anyio.IncompleteRead if layer == "async" else ProtocolError
        )
        #: What using a closed (or detached) stream raises.
        self.closed: type[Exception] = (
            anyio.ClosedResourceError if layer == "async" else TransportError
        )

    async def _call(self, method: str, *args: object) -> Any:
        if self.layer == "async":
            return await getattr(self.stream, method)(*args)
        return getattr(self.stream, method)(*args, timeout=LONG)

    async def until(self, delimiter: bytes = b"\n", max_bytes: int = 100) -> bytes:
        data: bytes = await self._call("receive_until", delimiter, max_bytes)
        return data

    async def exactly(self, nbytes: int) -> bytes:
        data: bytes = await self._call("receive_exactly", nbytes)
        return data

    async def send(self, data: bytes) -> None:
        await self._call("send", data)

    async def wait_peer_closed(self) -> None:
        await self._call("wait_peer_closed")

    def detach(self) -> Detached:
        detached: Detached = self.stream.detach()
        return detached

    async def close(self) -> None:
        if self.layer == "async":
            await self.stream.aclose()
        else:
            self.stream.close()


# --- the handover ----------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("second", LAYERS)
@pytest.mark.parametrize("first", LAYERS)
@pytest.mark.parametrize("kind", KINDS)
async def test_the_rest_arrives_once_and_in_order(kind: str, first: str, second: str) -> None:
    """Three pipelined requests, one answered; the stream detached and the descriptor
    wrapped again (in the same or the other layer): the other two and a request
    sent after the handover arrive exactly once, in order."""
    with anyio.fail_after(LONG), connection(kind) as (fd, client):
        client.sendall(b"a\nb\nc")  # one segment: the first read takes all of it
        old = End(first, fd)
        assert await old.until() == b"a"
        await old.send(b"old:a\n")
        assert old.stream.buffered == b"b\nc"
        detached = old.detach()
        assert detached == Detached(fd, b"b\nc")
        await old.close()  # closed already: nothing happens
        with pytest.raises(old.closed):
            old.stream.fileno()
        del old
        gc.collect()  # nothing the old stream held may close the descriptor
        client.sendall(b"\nd\n")
        new = End(second, detached.fd, detached.buffered)
        try:
            assert [await new.until() for _ in range(3)] == [b"b", b"c", b"d"]
            await new.send(b"new:bcd\n")
            client.shutdown(socket.SHUT_WR)
            with pytest.raises(new.incomplete):
                await new.until()
            assert new.stream.at_eof
        finally:
            await new.close()
        assert _read_to_eof(client) == b"old:a\nnew:bcd\n"


def _read_to_eof(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


#: The new process: takes the connection out of the state, answers each line on it.
CHILD = r"""
import os, sys
import anyio
import fdchannel
from fdchannel import blocking, unpack_connections

def take(state):
    with state:  # the state owns what it received: keep a duplicate
        unpacked = unpack_connections(state)
        (conn,) = unpacked.connections
        return os.dup(conn.fd), conn.buffered, unpacked.metadata

layer, channel = sys.argv[1], int(sys.argv[2])
if layer == "blocking":
    with blocking.Stream.from_fd(channel) as ch:
        fd, buffered, metadata = take(blocking.receive_state(ch, timeout=20))
    with blocking.Stream.from_fd(fd, buffered=buffered) as stream:
        stream.send(b"meta:" + metadata + b"\n", timeout=20)
        while True:
            try:
                line = stream.receive_until(b"\n", 100, timeout=20)
            except fdchannel.ProtocolError:
                sys.exit(0 if stream.at_eof else "the stream ended in a line")
            stream.send(b"new:" + line + b"\n", timeout=20)
else:
    async def main():
        async with fdchannel.Stream.from_fd(channel) as ch:
            fd, buffered, metadata = take(await fdchannel.receive_state(ch, timeout=20))
        with anyio.fail_after(20):
            async with fdchannel.Stream.from_fd(fd, buffered=buffered) as stream:
                await stream.send(b"meta:" + metadata + b"\n")
                while True:
                    try:
                        line = await stream.receive_until(b"\n", 100)
                    except anyio.IncompleteRead:
                        sys.exit(0 if stream.at_eof else "the stream ended in a line")
                    await stream.send(b"new:" + line + b"\n")
    anyio.run(main)
"""


@pytest.mark.anyio
@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("kind", KINDS)
async def test_the_rest_arrives_in_another_process(kind: str, layer: str) -> None:
    """The connection and its buffered bytes travel in a state (pack_connections,
    send_state) to a new process, which takes them out (receive_state,
    unpack_connections) and answers what the old one had read and not answered."""
    ours, theirs = socket.socketpair()
    with anyio.fail_after(LONG * 2), connection(kind) as (fd, client), ours, theirs:
        client.sendall(b"a\nb\nc")
        async with fdchannel.Stream.from_fd(fd) as old:
            assert await old.receive_until(b"\n", 100) == b"a"
            await old.send(b"old:a\n")
            detached = old.detach()
        state = pack_connections([detached], metadata=b"v2")
        command = [sys.executable, "-c", CHILD, layer, str(theirs.fileno())]
        async with await anyio.open_process(
            command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=None, stderr=None,
            pass_fds=[theirs.fileno()],
        ) as child:  # fmt: skip
            theirs.close()
            try:
                async with fdchannel.Stream.from_fd(ours.detach()) as channel:
                    await fdchannel.send_state(channel, state, timeout=LONG)
            finally:
                os.close(detached.fd)  # the new process holds it now
            client.sendall(b"\nd\n")
            client.shutdown(socket.SHUT_WR)
            answers = await anyio.to_thread.run_sync(_read_to_eof, client)
            assert await child.wait() == 0
    assert answers == b"old:a\nmeta:v2\nnew:b\nnew:c\nnew:d\n"


# --- detach: what it returns, what it refuses ---------------------------------------------------


async def _receive(stream: fdchannel.Stream) -> None:
    await stream.receive()


async def _receive_until(stream: fdchannel.Stream) -> None:
    await stream.receive_until(b"\n", 100)


async def _receive_exactly(stream: fdchannel.Stream) -> None:
    await stream.receive_exactly(10)


async def _wait_peer_closed(stream: fdchannel.Stream) -> None:
    await stream.wait_peer_closed()


async def _send_more_than_fits(stream: fdchannel.Stream) -> None:
    await stream.send(bytes(64 << 20))


#: A call that waits on the stream -> the bytes sent before it, and what of them it
#: read and keeps (the rest is still in the kernel's buffer).
WAITING: dict[str, tuple[Callable[[fdchannel.Stream], Coroutine[Any, Any, None]], bytes, bytes]] = {
    "receive": (_receive, b"", b""),
    "receive_until": (_receive_until, b"par", b"par"),
    "receive_exactly": (_receive_exactly, b"par", b"par"),
    "wait_peer_closed": (_wait_peer_closed, b"par", b"par"),
    "send": (_send_more_than_fits, b"par", b""),
}


@pytest.mark.anyio
@pytest.mark.parametrize("call", list(WAITING))
@pytest.mark.parametrize("kind", KINDS)
async def test_detach_refuses_while_a_call_waits(kind: str, call: str) -> None:
    """BusyResourceError while a task waits on the stream; once it was cancelled,
    detach hands over what it had read (none of it lost)."""
    wait, sent, kept = WAITING[call]
    with anyio.fail_after(LONG), connection(kind) as (fd, client):
        client.sendall(sent)
        stream = fdchannel.Stream.from_fd(fd)
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait, stream)
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(anyio.BusyResourceError):
                stream.detach()
            tg.cancel_scope.cancel()
        detached = stream.detach()
        assert detached.buffered == kept
        client.sendall(b"tial\n")
        async with fdchannel.Stream.from_fd(detached.fd, buffered=detached.buffered) as new:
            assert await new.receive_until(b"\n", 100) == sent + b"tial"


@pytest.mark.anyio
@pytest.mark.parametrize("layer", LAYERS)
async def test_detach_keeps_what_wait_peer_closed_read(layer: str) -> None:
    with anyio.fail_after(LONG), connection("unix") as (fd, client):
        client.sendall(b"bye")
        client.shutdown(socket.SHUT_WR)
        old = End(layer, fd)
        await old.wait_peer_closed()
        detached = old.detach()
        assert detached.buffered == b"bye"
        new = End(layer, detached.fd, detached.buffered)
        try:
            assert await new.exactly(3) == b"bye"
            with pytest.raises(new.incomplete):
                await new.exactly(1)
        finally:
            await new.close()


@pytest.mark.anyio
@pytest.mark.parametrize("layer", LAYERS)
async def test_a_detached_stream_is_closed(layer: str) -> None:
    """Closing again does nothing; anything else is the layer's error for a closed
    stream, a second detach included; the descriptor stays open."""
    with anyio.fail_after(LONG), connection("unix") as (fd, client):
        end = End(layer, fd)
        detached = end.detach()
        try:
            await end.close()
            await end.close()
            for use in (end.detach, end.stream.fileno):
                with pytest.raises(end.closed):
                    use()
            with pytest.raises(end.closed):
                await end.until()
            os.fstat(detached.fd)
        finally:
            os.close(detached.fd)
        assert client.recv(1) == b""  # our end was closed once, by us


@pytest.mark.anyio
async def test_a_closed_stream_cannot_detach() -> None:
    with anyio.fail_after(LONG), connection("unix") as (fd, _):
        stream = fdchannel.Stream.from_fd(fd)
        await stream.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            stream.detach()


@pytest.mark.anyio
async def test_a_stream_without_a_buffer_refuses(tmp_path: Path) -> None:
    """A file stream reads at the file's offset: no buffer to detach or parse in."""
    async with fdchannel.Stream.from_fd(_file(tmp_path)) as stream:
        with pytest.raises(CapabilityError):
            await stream.receive_until(b"\n", 10)
        with pytest.raises(CapabilityError):
            await stream.receive_exactly(1)
        with pytest.raises(CapabilityError):
            stream.detach()
        assert stream.buffered == b""


def _file(tmp: Path) -> int:
    (tmp / "f").write_bytes(b"x")
    return os.open(tmp / "f", os.O_RDONLY | os.O_CLOEXEC)


def _listening(tmp: Path) -> int:
    return socket.create_server(("127.0.0.1", 0)).detach()


def _pipe(tmp: Path) -> int:
    read, write = os.pipe()
    os.close(write)
    return read


#: (layer, what the descriptor is, buffered) -> the error; the descriptor stays the caller's.
REFUSED: dict[tuple[str, str, bytes], type[Exception]] = {
    ("async", "file", b"x"): CapabilityError,
    ("async", "listening", b"x"): ConnectError,
    ("async", "listening", b""): ConnectError,
    ("blocking", "file", b""): CapabilityError,
    ("blocking", "pipe", b"x"): CapabilityError,
    ("blocking", "listening", b"x"): ConnectError,
}
MAKE: dict[str, Callable[[Path], int]] = {"file": _file, "listening": _listening, "pipe": _pipe}


@pytest.mark.parametrize(("layer", "what", "buffered"), list(REFUSED))
def test_from_fd_refuses_and_leaves_the_descriptor(
    tmp_path: Path, layer: str, what: str, buffered: bytes
) -> None:
    fd = MAKE[what](tmp_path)
    try:
        cls: Any = fdchannel.Stream if layer == "async" else blocking.Stream
        with pytest.raises(REFUSED[layer, what, buffered]):
            cls.from_fd(fd, buffered=buffered)
        os.fstat(fd)  # still open
    finally:
        os.close(fd)


@pytest.mark.anyio
async def test_a_pipe_serves_buffered_bytes_first() -> None:
    read, write = os.pipe()
    os.write(write, b"c\n")
    os.close(write)
    with anyio.fail_after(LONG):
        async with fdchannel.Stream.from_fd(read, buffered=b"a\nb") as stream:
            assert await stream.receive_until(b"\n", 10) == b"a"
            assert await stream.receive_until(b"\n", 10) == b"bc"
            with pytest.raises(anyio.EndOfStream):
                await stream.receive()


# --- receive_until and receive_exactly ---------------------------------------------------------

TOO_LONG = "too long"
INCOMPLETE = "incomplete"

#: name -> (buffered, sent, then EOF, delimiter, max_bytes, what each call gives,
#: what stays buffered at the end).
UNTIL: dict[str, tuple[bytes, bytes, bool, bytes, int, list[bytes | str], bytes]] = {
    "lines": (b"", b"a\nb\n", False, b"\n", 10, [b"a", b"b"], b""),
    "empty lines": (b"", b"\n\nx\n", False, b"\n", 10, [b"", b"", b"x"], b""),
    "within buffered": (b"ab\ncd", b"", False, b"\n", 10, [b"ab"], b"cd"),
    "split delimiter": (b"ab\r", b"\ncd\r\n", False, b"\r\n", 10, [b"ab", b"cd"], b""),
    "max_bytes exactly": (b"ab", b"c\r\n", False, b"\r\n", 3, [b"abc"], b""),
    "too long, one read": (b"", b"abcd\r\n", False, b"\r\n", 3, [TOO_LONG], b"abcd\r\n"),
    "too long, two reads": (b"ab", b"cd\r\n", False, b"\r\n", 3, [TOO_LONG], b"abcd\r\n"),
    "too long, no delimiter": (b"", b"abcdefgh", False, b"\n", 3, [TOO_LONG], b"abcdefgh"),
    "end mid-line": (b"", b"a\nbc", True, b"\n", 10, [b"a", INCOMPLETE], b"bc"),
    "end at a boundary": (b"", b"a\n", True, b"\n", 10, [b"a", INCOMPLETE], b""),
    "end, delimiter half there": (b"a\r", b"", True, b"\r\n", 10, [INCOMPLETE], b"a\r"),
}
#: name -> (buffered, sent, then EOF, sizes asked for, what each call gives, what stays).
EXACTLY: dict[str, tuple[bytes, bytes, bool, list[int], list[bytes | str], bytes]] = {
    "buffered then read": (b"ab", b"cdef", False, [3, 3], [b"abc", b"def"], b""),
    "read past stays": (b"", b"abcdef", False, [2], [b"ab"], b"cdef"),
    "buffered only": (b"abcdef", b"", False, [2, 1], [b"ab", b"c"], b"def"),
    "nothing": (b"", b"x", False, [0], [b""], b""),
    "end first": (b"a", b"bc", True, [5], [INCOMPLETE], b"abc"),
    "end at once": (b"", b"", True, [1], [INCOMPLETE], b""),
}


async def _run_calls(
    end: End, calls: Sequence[Callable[[], Awaitable[bytes]]], expected: list[bytes | str]
) -> None:
    errors = {TOO_LONG: end.too_long, INCOMPLETE: end.incomplete}
    for call, want in zip(calls, expected, strict=True):
        if isinstance(want, str):
            with pytest.raises(errors[want]):
                await call()
        else:
            assert await call() == want


@pytest.mark.anyio
@pytest.mark.parametrize("case", list(UNTIL))
@pytest.mark.parametrize("layer", LAYERS)
async def test_receive_until(layer: str, case: str) -> None:
    buffered, sent, eof, delimiter, max_bytes, expected, left = UNTIL[case]
    with anyio.fail_after(LONG), connection("unix") as (fd, client):
        client.sendall(sent)
        if eof:
            client.shutdown(socket.SHUT_WR)
        end = End(layer, fd, buffered)
        try:
            calls = [lambda: end.until(delimiter, max_bytes)] * len(expected)
            await _run_calls(end, calls, expected)
            assert end.stream.buffered == left
        finally:
            await end.close()


@pytest.mark.anyio
@pytest.mark.parametrize("case", list(EXACTLY))
@pytest.mark.parametrize("layer", LAYERS)
async def test_receive_exactly(layer: str, case: str) -> None:
    buffered, sent, eof, sizes, expected, left = EXACTLY[case]
    with anyio.fail_after(LONG), connection("unix") as (fd, client):
        client.sendall(sent)
        if eof:
            client.shutdown(socket.SHUT_WR)
        end = End(layer, fd, buffered)
        try:
            calls = [lambda n=n: end.exactly(n) for n in sizes]
            await _run_calls(end, calls, expected)
            assert end.stream.buffered == left
        finally:
            await end.close()


@pytest.mark.anyio
@pytest.mark.parametrize("kind", KINDS)
async def test_a_delimiter_split_across_reads(kind: str) -> None:
    """The first half of the delimiter is read and the call waits for the rest."""
    with anyio.fail_after(LONG), connection(kind) as (fd, client):
        async with fdchannel.Stream.from_fd(fd) as stream:
            client.sendall(b"ab\r")
            async with anyio.create_task_group() as tg:
                lines: list[bytes] = []

                async def read() -> None:
                    lines.append(await stream.receive_until(b"\r\n", 10))

                tg.start_soon(read)
                await anyio.wait_all_tasks_blocked()
                assert stream.buffered == b"ab\r"
                client.sendall(b"\ncd")
            assert lines == [b"ab"]
            assert stream.buffered == b"cd"


#: Calls with arguments nothing can be read for (ValueError, in either layer).
NONSENSE: dict[str, Callable[[End], Awaitable[bytes]]] = {
    "empty delimiter": lambda end: end.until(b"", 10),
    "negative max_bytes": lambda end: end.until(b"\n", -1),
    "negative nbytes": lambda end: end.exactly(-1),
}


@pytest.mark.anyio
@pytest.mark.parametrize("call", list(NONSENSE))
@pytest.mark.parametrize("layer", LAYERS)
async def test_arguments_that_cannot_be_read_for(layer: str, call: str) -> None:
    with connection("unix") as (fd, _):
        end = End(layer, fd)
        try:
            with pytest.raises(ValueError, match="must not be"):
                await NONSENSE[call](end)
        finally:
            await end.close()


# --- packing connections into a state ---------------------------------------------------------

PACKED: dict[str, tuple[list[Detached], list[NamedFd], bytes]] = {
    "none": ([], [], b""),
    "one, nothing buffered": ([Detached(10, b"")], [], b""),
    "several, and more": (
        [Detached(10, b"a\nb"), Detached(11, b""), Detached(12, bytes(70000))],
        [NamedFd("listener", 0, 20), NamedFd("memory", 3, 21)],
        b"the caller's",
    ),
    "caller's metadata looks like ours": ([Detached(10, b"x")], [], MAGIC + b"\0\0\0\x09"),
}


@pytest.mark.parametrize("name", ["conn", "ws"])
@pytest.mark.parametrize("case", list(PACKED))
def test_pack_unpack_round_trip(case: str, name: str) -> None:
    connections, more, metadata = PACKED[case]
    state = pack_connections(connections, more, name=name, metadata=metadata)
    assert state.fds == [
        *(NamedFd(name, i, conn.fd) for i, conn in enumerate(connections)),
        *more,
    ]
    assert unpack_connections(state, name) == Unpacked(connections, metadata)


def test_a_state_from_an_older_sender() -> None:
    """Metadata without the framing: no buffered bytes, the metadata as it came."""
    state = FdState([NamedFd("conn", 1, 11), NamedFd("conn", 0, 10)], b"v1 metadata")
    assert unpack_connections(state) == Unpacked(
        [Detached(10, b""), Detached(11, b"")], b"v1 metadata"
    )


#: Metadata of a state with two connections that the framing refuses.
MALFORMED = {
    "another version": MAGIC[:-1] + b"\x02",
    "no version": MAGIC[:-1],
    "length cut short": MAGIC + b"\0\0",
    "bytes cut short": MAGIC + struct.pack(">I", 5) + b"abc",
    "second connection missing": MAGIC + struct.pack(">I", 1) + b"a",
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_framing_is_refused(case: str) -> None:
    state = FdState([NamedFd("conn", 0, 10), NamedFd("conn", 1, 11)], MALFORMED[case])
    with pytest.raises(StateError):
        unpack_connections(state)


@pytest.mark.parametrize("ids", [[1], [0, 2], [-1, 0], [-1, 1]])
def test_connection_ids_must_run_from_zero(ids: list[int]) -> None:
    state = FdState([NamedFd("conn", i, 10 + n) for n, i in enumerate(ids)])
    with pytest.raises(StateError):
        unpack_connections(state)


def test_more_cannot_use_the_connections_name() -> None:
    with pytest.raises(StateError):
        pack_connections([Detached(10, b"")], [NamedFd("conn", 1, 11)])


def test_both_layers_export_one_detached() -> None:
    assert blocking.Detached is fdchannel.Detached is Detached
