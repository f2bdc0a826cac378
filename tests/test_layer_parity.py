"""The async layer and ``fdchannel.blocking`` agree: same handoff, same results, same calls.

First, each handoff (native or qemu codec, accepted or rejected) runs
through every pairing of the two layers (async→async, async→blocking,
blocking→async, blocking→blocking), from one test body: a blocking side
is driven from async code, each call in a worker thread under its own
timeout.  Both sides must report the same: the sender the same ``Ack``
or error type, the receiver the same codec, state and errors for a
second answer.  Then the public signatures of the two layers' classes
and functions are compared, against a table of the known differences.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

import fdchannel
import fdchannel.handoff
import fdchannel.transfer
from fdchannel import FdChannelError, HandoffError, HandoffTimeout, blocking
from fdchannel.channel import Channel
from fdchannel.errors import VerdictGiven
from fdchannel.protocol.machine import State
from fdchannel.transfer import Codec

from .blocking_peer import MAIN_DATA, REJECTION, channels, check_state, state_of

#: Bounds each call that must succeed; SHORT each one that must time out.
LONG = 20.0
SHORT = 0.3
#: More than one message of descriptors (253).
COUNT = 300
LAYERS = ["async", "blocking"]


# --- either layer, driven from async code ------------------------------------------------


class InThreads:
    """A blocking Outgoing or Incoming whose calls are awaited: each runs in a worker
    thread (every blocking call that waits is bounded by its own timeout)."""

    def __init__(self, side: blocking.Outgoing | blocking.Incoming) -> None:
        self._side = side

    @property
    def codec(self) -> str | None:
        return self._side.codec

    @property
    def state(self) -> State:
        return self._side.state

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        method = getattr(self._side, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await anyio.to_thread.run_sync(functools.partial(method, *args, **kwargs))

        return call


@asynccontextmanager
async def outgoing(layer: str, chans: list[Channel], codec: Codec) -> AsyncIterator[Any]:
    if layer == "async":
        async with fdchannel.Outgoing(chans, codec=codec) as out:
            yield out
    else:
        with blocking.Outgoing(chans, codec=codec) as side:
            yield InThreads(side)


@asynccontextmanager
async def incoming(layer: str, chans: list[Channel]) -> AsyncIterator[Any]:
    if layer == "async":
        async with fdchannel.Incoming(chans) as inc:
            yield inc
    else:
        with blocking.Incoming(chans) as side:
            yield InThreads(side)


# --- what each side reports --------------------------------------------------------------


@dataclass(frozen=True)
class Acked:
    """The sender's Ack, less its timing."""

    codec: str
    descriptors: int
    kind: str


@dataclass(frozen=True)
class Received:
    """What the receiver saw: the codec and count, what answering again raised, its end."""

    codec: str | None
    descriptors: int
    second_answers: tuple[type[BaseException] | None, ...]
    state: State


async def _raised(call: Awaitable[object]) -> type[BaseException] | None:
    try:
        await call
    except FdChannelError as exc:
        return type(exc)
    return None


async def old_process(out: Any, codec: Codec, verdict: str) -> Acked | type[BaseException]:
    with state_of(COUNT, codec) as state:
        try:
            ack = await out.send_cpr(state, timeout=LONG)
        except FdChannelError as exc:
            check_state(state, COUNT, codec)  # the rollback: every descriptor still ours
            return type(exc)
        if verdict == "accept":
            await out.send_main(MAIN_DATA, timeout=LONG)
        return Acked(ack.codec, ack.descriptors, ack.kind)


async def new_process(inc: Any, verdict: str) -> Received:
    with await inc.receive_cpr(timeout=LONG) as state:
        check_state(state, COUNT, inc.codec)
        count = len(state)
    if verdict == "accept":
        await inc.listen_main()
    else:
        await inc.reject(REJECTION)
    # A second answer, either way: the first one stands.
    again = (await _raised(inc.listen_main()), await _raised(inc.reject("again")))
    if verdict == "accept":
        assert await inc.receive_main(timeout=LONG) == MAIN_DATA
    return Received(inc.codec, count, again, inc.state)


#: (codec, the receiver's verdict) -> what the sender reports.  QEMU's protocol has
#: no refusal: a qemu sender reads any close as the acknowledgement.
SENDER_SEES: dict[tuple[str, str], Acked | type[BaseException]] = {
    ("native", "accept"): Acked("native", COUNT, "accepted"),
    ("native", "reject"): HandoffError,
    ("qemu", "accept"): Acked("qemu", COUNT, "closed"),
    ("qemu", "reject"): Acked("qemu", COUNT, "closed"),
}
END_STATE = {"accept": State.DONE, "reject": State.REJECTED}


@pytest.mark.anyio
@pytest.mark.parametrize(("codec", "verdict"), list(SENDER_SEES))
@pytest.mark.parametrize("receiver", LAYERS)
@pytest.mark.parametrize("sender", LAYERS)
async def test_the_same_handoff_in_every_pairing(
    sockdir: Path, sender: str, receiver: str, codec: Codec, verdict: str
) -> None:
    chans = channels(str(sockdir / "cpr"), str(sockdir / "main"))
    sent: list[Acked | type[BaseException]] = []
    with anyio.fail_after(LONG * 2):
        async with outgoing(sender, chans, codec) as out, incoming(receiver, chans) as inc:
            await inc.listen_cpr()
            async with anyio.create_task_group() as tg:

                async def send() -> None:
                    sent.append(await old_process(out, codec, verdict))

                tg.start_soon(send)
                got = await new_process(inc, verdict)
    assert sent == [SENDER_SEES[codec, verdict]]
    assert got == Received(codec, COUNT, (VerdictGiven, VerdictGiven), END_STATE[verdict])


#: Each layer's module-level calls.
MODULES: dict[str, Any] = {"async": fdchannel, "blocking": blocking}


async def run(layer: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Await an async call; run a blocking one in a worker thread (bounded by its timeout)."""
    if layer == "async":
        return await call(*args, **kwargs)
    return await anyio.to_thread.run_sync(functools.partial(call, *args, **kwargs))


@pytest.mark.anyio
@pytest.mark.parametrize(("codec", "verdict"), list(SENDER_SEES))
@pytest.mark.parametrize("receiver", LAYERS)
@pytest.mark.parametrize("sender", LAYERS)
async def test_the_same_cpr_exchange_in_every_pairing(
    sockdir: Path, sender: str, receiver: str, codec: Codec, verdict: str
) -> None:
    """send_cpr and receive_cpr, each layer's own, and ReceivedCpr's accept or reject:
    the same Ack or error, the same state, the same outcome and a second answer refused."""
    address = f"unix:{sockdir / 'cpr'}"
    sent: list[Acked | type[BaseException]] = []

    async def send() -> None:
        with state_of(COUNT, codec) as state:
            try:
                ack = await run(
                    sender, MODULES[sender].send_cpr, address, state, codec=codec, timeout=LONG
                )
            except FdChannelError as exc:
                check_state(state, COUNT, codec)  # the rollback: every descriptor still ours
                sent.append(type(exc))
            else:
                sent.append(Acked(ack.codec, ack.descriptors, ack.kind))

    with anyio.fail_after(LONG * 2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(send)  # it retries until the receiver listens
            received = await run(receiver, MODULES[receiver].receive_cpr, address, timeout=LONG)
            with received.state:
                check_state(received.state, COUNT, codec)
                count = len(received.state)
            if verdict == "accept":
                outcome = await run(receiver, received.accept)
            else:
                outcome = await run(receiver, received.reject, REJECTION)
            again = await _raised(run(receiver, received.reject, "again"))
    assert sent == [SENDER_SEES[codec, verdict]]
    assert (received.codec, count, outcome, again) == (
        codec,
        COUNT,
        "closed the connection",
        VerdictGiven,
    )


@pytest.mark.anyio
@pytest.mark.parametrize("side", ["sender", "receiver"])
@pytest.mark.parametrize("layer", LAYERS)
async def test_the_same_timeouts(sockdir: Path, layer: str, side: str) -> None:
    """A side alone (nobody listens for the sender, nobody sends to the receiver)
    times out with the same error in either layer."""
    chans = channels(str(sockdir / "cpr"), str(sockdir / "main"))
    with anyio.fail_after(LONG):
        if side == "sender":
            async with outgoing(layer, chans, "native") as out:
                with state_of(1, "native") as state, pytest.raises(HandoffTimeout) as raised:
                    await out.send_cpr(state, timeout=SHORT)
        else:
            async with incoming(layer, chans) as inc:
                with pytest.raises(HandoffTimeout) as raised:
                    await inc.receive_cpr(timeout=SHORT)
    assert type(raised.value) is HandoffTimeout


# --- the same calls: public signatures, minus async -----------------------------------------

#: The modules whose top-level exports make the async layer's side of the comparison.
ASYNC_MODULES = {".handoff", ".transfer", ".transports"}
#: The async names for the blocking layer's (closing without awaiting).
RENAMED = {"aclose": "close"}


def async_surface() -> dict[str, object]:
    """The async layer's handoff, transfer and transport names, as ``fdchannel`` exports them."""
    return {
        name: getattr(fdchannel, name)
        for name, module in fdchannel._exports().items()
        if module in ASYNC_MODULES
    }


def async_counterpart(name: str) -> object | None:
    """A blocking name's async namesake, wherever the async layer keeps it."""
    for module in (fdchannel, fdchannel.handoff, fdchannel.transfer):
        found: object | None = getattr(module, name, None)
        if found is not None:
            return found
    return None


def _members(cls: type) -> dict[str, object]:
    """Public methods and properties, the async names mapped to the blocking ones.

    Data attributes are left out: one layer sets them on the instance, the
    other on the class, so the class alone does not tell.
    """
    found = {}
    for name in dir(cls):
        member = inspect.getattr_static(cls, name)
        if not name.startswith("_") and _kind(member) != "attribute":
            found[RENAMED.get(name, name)] = member
    return found


def _kind(member: object) -> str:
    if isinstance(member, property):
        return "property"
    if isinstance(member, staticmethod | classmethod):
        return type(member).__name__
    return "method" if inspect.isfunction(member) else "attribute"


def _signature(obj: object) -> inspect.Signature:
    if isinstance(obj, staticmethod | classmethod):
        obj = obj.__func__
    return inspect.signature(obj)  # type: ignore[arg-type]


def signature_differences(where: str, asynchronous: object, blocking_: object) -> Iterator[str]:
    """Each difference of parameters (name, kind, default, annotation) and return."""
    a, b = _signature(asynchronous), _signature(blocking_)
    for name in [*a.parameters, *(p for p in b.parameters if p not in a.parameters)]:
        pa, pb = a.parameters.get(name), b.parameters.get(name)
        if pb is None:
            yield f"{where}: parameter {name!r} only in async"
        elif pa is None:
            yield f"{where}: parameter {name!r} only in blocking"
        elif str(pa) != str(pb):
            yield f"{where}: parameter async {pa} / blocking {pb}"
    common = [p for p in a.parameters if p in b.parameters]
    if common != [p for p in b.parameters if p in a.parameters]:
        yield f"{where}: parameters in another order"
    if a.return_annotation != b.return_annotation:
        yield f"{where}: returns async {a.return_annotation} / blocking {b.return_annotation}"


def differences(name: str, asynchronous: object | None, blocking_: object | None) -> Iterator[str]:
    if asynchronous is blocking_:
        return  # one object serves both layers
    if blocking_ is None:
        yield f"{name}: only in async"
    elif asynchronous is None:
        yield f"{name}: only in blocking"
    elif isinstance(asynchronous, type) and isinstance(blocking_, type):
        yield from signature_differences(name, asynchronous, blocking_)
        a, b = _members(asynchronous), _members(blocking_)
        for member in sorted(a.keys() | b.keys()):
            where = f"{name}.{member}"
            if member not in b:
                yield f"{where}: only in async"
            elif member not in a:
                yield f"{where}: only in blocking"
            elif _kind(a[member]) != _kind(b[member]):
                yield f"{where}: async {_kind(a[member])} / blocking {_kind(b[member])}"
            elif _kind(a[member]) != "property":
                yield from signature_differences(where, a[member], b[member])
    else:
        yield from signature_differences(name, asynchronous, blocking_)


def layer_differences() -> set[str]:
    found: set[str] = set()
    surface = async_surface()
    for name in sorted(surface.keys() | set(blocking.__all__)):
        asynchronous = surface.get(name) or async_counterpart(name)
        found.update(differences(name, asynchronous, getattr(blocking, name, None)))
    return found


#: fdchannel.blocking's rule: "only waiting differs".  A blocking call that may wait
#: takes ``timeout``; an async one waits under the caller's cancel scope.
WAITS = "by design: a blocking wait takes timeout, an async one the caller's cancel scope"
#: The async transports are anyio's byte streams and listeners; the blocking ones
#: are sockets (unix, tcp and fd: only) and say so.
ANYIO = "by design: anyio's stream and listener interface"
SOCKETS = "by design: a blocking stream is a socket"

#: Every difference between the two layers' public signatures, and why it is there.
#: The test fails on a difference not listed here, and on a listed one that is gone:
#: remove it from the table when issue 20 (or anyone) closes it.
KNOWN: dict[str, str] = {
    # Transports: how each layer waits.
    "connect: parameter 'timeout' only in blocking": WAITS,
    "Listener.accept: parameter 'timeout' only in blocking": WAITS,
    "Stream.receive: parameter 'timeout' only in blocking": WAITS,
    "Stream.receive_exactly: parameter 'timeout' only in blocking": WAITS,
    "Stream.receive_fds: parameter 'timeout' only in blocking": WAITS,
    "Stream.receive_until: parameter 'timeout' only in blocking": WAITS,
    "Stream.send: parameter 'timeout' only in blocking": WAITS,
    "Stream.send_fds: parameter 'timeout' only in blocking": WAITS,
    "Stream.send_fds_many: parameter 'timeout' only in blocking": WAITS,
    "Stream.wait_peer_closed: parameter 'timeout' only in blocking": WAITS,
    # Transports: anyio's interface on one side, a socket on the other.
    "connect: parameter 'options' only in async": ANYIO,  # exec:, file: and vsock: options
    "Listener.extra: only in async": ANYIO,
    "Listener.extra_attributes: only in async": ANYIO,
    "Listener.from_fd: only in async": ANYIO,
    "Listener.serve: only in async": ANYIO,
    "Stream.abort: only in async": ANYIO,  # an exec: command killed at once
    "Stream.extra: only in async": ANYIO,
    "Stream.extra_attributes: only in async": ANYIO,
    "Stream.send: parameter 'item' only in async": ANYIO,  # ByteStream.send(item)
    "Stream.send: parameter 'data' only in blocking": SOCKETS,
    "Stream.send_fds: parameter async fds: 'list[int]' / blocking fds: 'Sequence[int]'": SOCKETS,
    "Stream.receive_fds: parameter async max_bytes: 'int' / blocking max_bytes: 'int' = 65536": (
        SOCKETS
    ),
    "Stream.receive_fds: parameter async maxfds: 'int' / blocking maxfds: 'int' = 253": SOCKETS,
    "Stream: parameter 'sock' only in blocking": SOCKETS,
    "Listener.fileno: only in blocking": SOCKETS,
    "Stream.closed: only in blocking": SOCKETS,
    "Stream.peek: only in blocking": SOCKETS,
    "Stream.peer_credentials: only in blocking": SOCKETS,
    "Stream.receive_fds_many: only in blocking": SOCKETS,
    "Stream.socket: only in blocking": SOCKETS,
}


def test_the_same_signatures_but_the_known_differences() -> None:
    found = layer_differences()
    new = sorted(found - KNOWN.keys())
    gone = sorted(KNOWN.keys() - found)
    assert not new, f"the layers drifted apart (fix it, or list it in KNOWN with why): {new}"
    assert not gone, f"no longer different (remove from KNOWN): {gone}"


def test_the_comparison_sees_a_drift() -> None:
    """The comparison itself: a parameter, a default, a return and a method that differ."""

    class Async:
        async def send_cpr(self, state: object, timeout: float | None = 10) -> int:
            raise NotImplementedError

        async def aclose(self) -> None: ...

    class Blocking:
        def send_cpr(self, state: object, timeout: float | None = 5, *, extra: int = 0) -> str:
            raise NotImplementedError

        def close(self) -> None: ...

        def only_here(self) -> None: ...

    assert sorted(differences("X", Async, Blocking)) == [
        "X.only_here: only in blocking",
        "X.send_cpr: parameter 'extra' only in blocking",
        "X.send_cpr: parameter async timeout: 'float | None' = 10"
        " / blocking timeout: 'float | None' = 5",
        "X.send_cpr: returns async int / blocking str",
    ]
