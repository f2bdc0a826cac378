"""Either layer's streams behind one awaitable interface, for the conformance suite.

An async stream is awaited as it is; a blocking one runs each call in a
worker thread under its own timeout (``LONG``, or the short bound of a call
meant to be given up on), so the thread always comes back.  What differs
only in spelling is translated: the end of the stream is ``b""`` in both,
a stream used after its own close raises ``Closed``, one whose peer hung up
raises ``Broken``, and a call given up on (cancelled in async code, a
``TransportTimeout`` in blocking code) returns ``False`` or ``None``.
Everything else (CapabilityError, ...) passes through untouched.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol, TypeVar

import anyio
import anyio.to_thread

import fdchannel
from fdchannel import Capability, blocking
from fdchannel.address import Address
from fdchannel.channel import Target
from fdchannel.errors import ConnectionLostError, TransportError, TransportTimeout
from fdchannel.transports import Listener, Stream

__all__ = [
    "ASYNC",
    "BLOCKING",
    "LONG",
    "Broken",
    "Closed",
    "End",
    "Layer",
    "ListeningEnd",
]

#: Bounds every blocking call that must succeed.
LONG = 20.0

T = TypeVar("T")


class Closed(Exception):
    """The stream was used after its own close."""


class Broken(Exception):
    """The peer hung up."""


class End(Protocol):
    """One end of a connected pair, whichever layer opened it."""

    layer: str

    @property
    def capabilities(self) -> Capability: ...

    @property
    def at_eof(self) -> bool: ...

    async def send(self, data: bytes) -> None: ...

    async def send_within(self, data: bytes, seconds: float) -> bool:
        """Send ``data``; False if the send was given up on after ``seconds``."""
        ...

    async def receive(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` bytes; ``b""`` at the end of the stream."""
        ...

    async def receive_within(self, max_bytes: int, seconds: float) -> bytes | None:
        """``receive``; None if it was given up on after ``seconds``."""
        ...

    async def send_fds(self, data: bytes, fds: Sequence[int]) -> None: ...

    async def send_fds_many(self, messages: Sequence[tuple[bytes, Sequence[int]]]) -> None: ...

    async def receive_fds(self, max_bytes: int, maxfds: int) -> tuple[bytes, list[int]]:
        """Bytes and the descriptors that came with them; ``(b"", [])`` at the end."""
        ...

    async def send_eof(self) -> None: ...

    async def wait_peer_closed(self) -> None: ...

    async def close(self) -> None: ...


class ListeningEnd(Protocol):
    """A listener, whichever layer opened it."""

    @property
    def address(self) -> Address: ...

    async def accept(self) -> End: ...

    async def close(self) -> None: ...


class Layer(Protocol):
    """How one layer opens either side of a transport."""

    name: str

    async def connect(self, target: Target) -> End: ...

    async def listen(self, target: Target) -> ListeningEnd: ...


# --- the async layer ------------------------------------------------------------------------


@contextmanager
def _async_errors() -> Iterator[None]:
    try:
        yield
    except anyio.ClosedResourceError as exc:
        raise Closed(repr(exc)) from exc
    except anyio.BrokenResourceError as exc:
        raise Broken(str(exc)) from exc


class AsyncEnd:
    """An async stream, awaited directly."""

    layer = "async"

    def __init__(self, stream: Stream) -> None:
        self._stream = stream

    @property
    def capabilities(self) -> Capability:
        return self._stream.capabilities

    @property
    def at_eof(self) -> bool:
        return self._stream.at_eof

    async def send(self, data: bytes) -> None:
        with _async_errors():
            await self._stream.send(data)

    async def send_within(self, data: bytes, seconds: float) -> bool:
        with anyio.move_on_after(seconds) as scope:
            await self.send(data)
        return not scope.cancelled_caught

    async def receive(self, max_bytes: int) -> bytes:
        with _async_errors():
            try:
                return await self._stream.receive(max_bytes)
            except anyio.EndOfStream:
                return b""

    async def receive_within(self, max_bytes: int, seconds: float) -> bytes | None:
        with anyio.move_on_after(seconds):
            return await self.receive(max_bytes)
        return None

    async def send_fds(self, data: bytes, fds: Sequence[int]) -> None:
        with _async_errors():
            await self._stream.send_fds(data, list(fds))

    async def send_fds_many(self, messages: Sequence[tuple[bytes, Sequence[int]]]) -> None:
        with _async_errors():
            await self._stream.send_fds_many(messages)

    async def receive_fds(self, max_bytes: int, maxfds: int) -> tuple[bytes, list[int]]:
        with _async_errors():
            try:
                return await self._stream.receive_fds(max_bytes, maxfds)
            except anyio.EndOfStream:
                return b"", []

    async def send_eof(self) -> None:
        with _async_errors():
            await self._stream.send_eof()

    async def wait_peer_closed(self) -> None:
        with _async_errors():
            await self._stream.wait_peer_closed()

    async def close(self) -> None:
        await self._stream.aclose()


class AsyncListener:
    def __init__(self, listener: Listener) -> None:
        self._listener = listener

    @property
    def address(self) -> Address:
        return self._listener.address

    async def accept(self) -> End:
        return AsyncEnd(await self._listener.accept())

    async def close(self) -> None:
        await self._listener.aclose()


class AsyncLayer:
    name = "async"

    async def connect(self, target: Target) -> End:
        return AsyncEnd(await fdchannel.connect(target))

    async def listen(self, target: Target) -> ListeningEnd:
        return AsyncListener(await fdchannel.listen(target))


# --- the blocking layer ---------------------------------------------------------------------


@contextmanager
def _blocking_errors() -> Iterator[None]:
    try:
        yield
    except ConnectionLostError as exc:
        raise Broken(str(exc)) from exc
    except TransportError as exc:
        # A closed stream has no type of its own in this layer: a plain
        # TransportError that says so.
        if type(exc) is TransportError and re.search(r"\bclosed\b", str(exc)):
            raise Closed(str(exc)) from exc
        raise


async def _in_thread(call: Callable[..., T], /, *args: object, **kwargs: object) -> T:
    """``call`` in a worker thread; it must carry its own timeout, as the thread cannot
    be cancelled."""
    with _blocking_errors():
        return await anyio.to_thread.run_sync(functools.partial(call, *args, **kwargs))


class BlockingEnd:
    """A blocking stream, each call in a worker thread under its own timeout."""

    layer = "blocking"

    def __init__(self, stream: blocking.Stream) -> None:
        self._stream = stream

    @property
    def capabilities(self) -> Capability:
        return self._stream.capabilities

    @property
    def at_eof(self) -> bool:
        return self._stream.at_eof

    async def send(self, data: bytes) -> None:
        await _in_thread(self._stream.send, data, timeout=LONG)

    async def send_within(self, data: bytes, seconds: float) -> bool:
        try:
            await _in_thread(self._stream.send, data, timeout=seconds)
        except TransportTimeout:
            return False
        return True

    async def receive(self, max_bytes: int) -> bytes:
        return await _in_thread(self._stream.receive, max_bytes, timeout=LONG)

    async def receive_within(self, max_bytes: int, seconds: float) -> bytes | None:
        try:
            return await _in_thread(self._stream.receive, max_bytes, timeout=seconds)
        except TransportTimeout:
            return None

    async def send_fds(self, data: bytes, fds: Sequence[int]) -> None:
        await _in_thread(self._stream.send_fds, data, fds, timeout=LONG)

    async def send_fds_many(self, messages: Sequence[tuple[bytes, Sequence[int]]]) -> None:
        await _in_thread(self._stream.send_fds_many, messages, timeout=LONG)

    async def receive_fds(self, max_bytes: int, maxfds: int) -> tuple[bytes, list[int]]:
        return await _in_thread(self._stream.receive_fds, max_bytes, maxfds, timeout=LONG)

    async def send_eof(self) -> None:
        with _blocking_errors():
            self._stream.send_eof()  # shutdown(2) never waits

    async def wait_peer_closed(self) -> None:
        await _in_thread(self._stream.wait_peer_closed, timeout=LONG)

    async def close(self) -> None:
        self._stream.close()  # close(2) never waits


class BlockingListener:
    def __init__(self, listener: blocking.Listener) -> None:
        self._listener = listener

    @property
    def address(self) -> Address:
        return self._listener.address

    async def accept(self) -> End:
        return BlockingEnd(await _in_thread(self._listener.accept, timeout=LONG))

    async def close(self) -> None:
        self._listener.close()


class BlockingLayer:
    name = "blocking"

    async def connect(self, target: Target) -> End:
        return BlockingEnd(await _in_thread(blocking.connect, target, timeout=LONG))

    async def listen(self, target: Target) -> ListeningEnd:
        return BlockingListener(blocking.listen(target))  # binds, never waits


ASYNC: Layer = AsyncLayer()
BLOCKING: Layer = BlockingLayer()
