"""Timeouts far away, infinite or already passed: both layers take the same values.

``poll(2)`` takes an int of milliseconds (at most about 24.8 days); a
timeout beyond that, or an int beyond any float, must still be a wait,
not an ``OverflowError``.  Each blocking case runs the call in a worker
thread and acts (connects, sends, closes) only once that thread waits in
``poll`` (its ``/proc`` wait channel says so), so the long timeout really
reaches the kernel.  Timeouts already passed fail at once, NaN is refused,
as before.
"""

from __future__ import annotations

import functools
import math
import queue
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

import fdchannel
from fdchannel import blocking
from fdchannel.address import UnixAddress
from fdchannel.codecs import native
from fdchannel.state import FdState

from .blocking_peer import MAIN_DATA, channels, check_state, state_of
from .waiting import in_poll

LONG = 30.0
SHORT = 0.3
COUNT = 3

#: Every timeout the async layer takes that means "wait" (None included).
FAR = [
    pytest.param(None, id="none"),
    pytest.param(2**31 / 1000 + 1, id="poll-limit-plus-1s"),
    pytest.param(1e9, id="thirty-years"),
    pytest.param(1e300, id="1e300"),
    pytest.param(sys.float_info.max, id="float-max"),
    pytest.param(math.inf, id="inf"),
    pytest.param(10**30, id="huge-int"),
    pytest.param(10**400, id="int-beyond-float"),
]
#: Timeouts that have passed already: a TransportTimeout at once.
PASSED = [
    pytest.param(0, id="zero"),
    pytest.param(-1, id="minus-one"),
    pytest.param(-math.inf, id="minus-inf"),
    pytest.param(-(10**400), id="int-below-float"),
    pytest.param(-(10**5000), id="int-too-long-for-text"),  # str() refuses over 4300 digits
]


# --- waiting in poll(2), for real ---------------------------------------------------------


@contextmanager
def worker(call: Callable[[], Any]) -> Iterator[tuple[Future[Any], Callable[[], None]]]:
    """Run ``call`` in a worker thread; yields its future and ``parked()``, which
    returns once the worker waits in poll(2) (bounded), and raises what the worker
    raised if it ended instead."""
    ids: queue.Queue[int] = queue.Queue()

    def run() -> Any:
        ids.put(threading.get_native_id())
        return call()

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(run)
        thread_id = ids.get(timeout=LONG)

        def parked() -> None:
            deadline = time.monotonic() + LONG
            while not future.done() and not in_poll(thread_id):
                assert time.monotonic() < deadline, "the call never waited in poll(2)"
                time.sleep(0.001)  # a bounded check of a condition, not a guess at timing
            if future.done():
                future.result()

        yield future, parked


# --- each blocking wait: the call, and what ends its wait ---------------------------------


def _peer_pair(stack: ExitStack) -> tuple[blocking.Stream, socket.socket]:
    mine, theirs = socket.socketpair()
    stack.callback(theirs.close)
    return stack.enter_context(blocking.Stream(mine, None)), theirs


#: A blocking call that waits (its timeout given), and what ends its wait.
Case = tuple[Callable[[], object], Callable[[], None]]


def _accept(stack: ExitStack, sockdir: Path, timeout: Any) -> Case:
    path = str(sockdir / "l")
    listener = stack.enter_context(blocking.listen(UnixAddress(path)))
    client = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))

    def call() -> object:
        with listener.accept(timeout=timeout):
            return "accepted"

    return call, lambda: client.connect(path)


def _receive(stack: ExitStack, sockdir: Path, timeout: Any) -> Case:
    stream, peer = _peer_pair(stack)
    return lambda: stream.receive(timeout=timeout), lambda: peer.sendall(b"x")


def _peek(stack: ExitStack, sockdir: Path, timeout: Any) -> Case:
    stream, peer = _peer_pair(stack)
    return lambda: stream.peek(1, timeout=timeout), lambda: peer.sendall(b"x")


def _wait_peer_closed(stack: ExitStack, sockdir: Path, timeout: Any) -> Case:
    stream, peer = _peer_pair(stack)

    def call() -> object:
        stream.wait_peer_closed(timeout=timeout)
        return "closed"

    return call, lambda: peer.shutdown(socket.SHUT_WR)


def _receive_state(stack: ExitStack, sockdir: Path, timeout: Any) -> Case:
    stream, peer = _peer_pair(stack)

    def call() -> object:
        with blocking.receive_state(stream, timeout=timeout) as state:
            return state.metadata

    def send() -> None:
        steps = native.encode(FdState([], b"meta"), window=0)
        peer.sendall(b"".join(s.data for s in steps if isinstance(s, native.Send)))
        peer.shutdown(socket.SHUT_WR)

    return call, send


MakeCase = Callable[[ExitStack, Path, Any], Case]
#: Each wait, and what the call returns once woken.
WAITS: dict[str, tuple[MakeCase, object]] = {
    "accept": (_accept, "accepted"),
    "receive": (_receive, b"x"),
    "peek": (_peek, b"x"),
    "wait_peer_closed": (_wait_peer_closed, "closed"),
    "receive_state": (_receive_state, b"meta"),
}


@pytest.mark.parametrize("timeout", FAR)
@pytest.mark.parametrize(("case", "result"), WAITS.values(), ids=WAITS.keys())
def test_a_far_timeout_is_a_wait(
    sockdir: Path, case: MakeCase, result: object, timeout: object
) -> None:
    with ExitStack() as stack:
        call, wake = case(stack, sockdir, timeout)
        with worker(call) as (future, parked):
            try:
                parked()
            finally:
                wake()  # also ends the wait of a test that failed
            assert future.result(LONG) == result


@pytest.mark.parametrize("timeout", PASSED)
@pytest.mark.parametrize(("case", "result"), WAITS.values(), ids=WAITS.keys())
def test_a_passed_timeout_fails_at_once(
    sockdir: Path, case: MakeCase, result: object, timeout: object
) -> None:
    with ExitStack() as stack:
        call, wake = case(stack, sockdir, timeout)
        with worker(call) as (future, _):
            try:
                began = time.monotonic()
                with pytest.raises(blocking.TransportTimeout):
                    future.result(SHORT * 3)
                assert time.monotonic() - began < SHORT * 3
            finally:
                wake()  # a call that waits instead ends here


@pytest.mark.parametrize(("case", "result"), WAITS.values(), ids=WAITS.keys())
def test_nan_is_refused(sockdir: Path, case: MakeCase, result: object) -> None:
    with ExitStack() as stack:
        call, _ = case(stack, sockdir, math.nan)
        with pytest.raises(ValueError, match="NaN"):
            call()


# --- a whole handoff under far timeouts, each side the one that surely waits --------------


@pytest.mark.parametrize("timeout", FAR)
@pytest.mark.parametrize("waiting", ["incoming", "outgoing"])
def test_a_handoff_under_a_far_timeout(sockdir: Path, waiting: str, timeout: Any) -> None:
    """The side in the worker thread takes the far timeout and waits in poll(2) before
    the other side acts: the incoming side for its peer (accept), the outgoing side
    for the acknowledgement."""
    chans = channels(str(sockdir / "cpr"), str(sockdir / "main"))

    def new_process(timeout: Any, after_receiving: Callable[[], None]) -> bytes:
        with blocking.Incoming(chans) as inc:
            with inc.receive_cpr(timeout=timeout) as received:
                check_state(received, COUNT, "native")
                after_receiving()
                inc.listen_main(timeout=timeout)
            data: bytes = inc.receive_main(timeout=timeout)
            return data

    def old_process(timeout: Any, state: FdState) -> int:
        with blocking.Outgoing(chans) as out:
            ack = out.send_cpr(state, timeout=timeout)
            out.send_main(MAIN_DATA, timeout=timeout)
            return ack.descriptors

    with state_of(COUNT, "native") as state:
        if waiting == "incoming":
            with worker(lambda: new_process(timeout, lambda: None)) as (future, parked):
                parked()  # listening, and waiting for its peer in accept
                assert old_process(LONG, state) == COUNT
                assert future.result(LONG) == MAIN_DATA
        else:
            with worker(lambda: old_process(timeout, state)) as (future, parked):
                # The sender waits for the acknowledgement before it is given.
                assert new_process(LONG, parked) == MAIN_DATA
                assert future.result(LONG) == COUNT


@pytest.mark.parametrize("timeout", PASSED)
@pytest.mark.parametrize("side", ["incoming", "outgoing"])
def test_a_handoff_step_whose_timeout_passed(sockdir: Path, side: str, timeout: Any) -> None:
    cpr = str(sockdir / "cpr")
    chans = channels(cpr, str(sockdir / "main"))
    with ExitStack() as stack:
        state = stack.enter_context(state_of(1, "native"))
        call: Callable[[], object]
        if side == "incoming":
            inc = stack.enter_context(blocking.Incoming(chans))
            inc.listen_cpr()
            call = functools.partial(inc.receive_cpr, timeout=timeout)

            def wake() -> None:  # a peer that connects and closes: a HandoffError
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:
                    peer.connect(cpr)

        else:
            out = stack.enter_context(blocking.Outgoing(chans))
            call = functools.partial(out.send_cpr, state, timeout=timeout)

            def wake() -> None:  # a receiver that closes unread: a HandoffError
                server = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
                server.bind(cpr)
                server.listen()
                server.settimeout(LONG)
                server.accept()[0].close()

        with worker(call) as (future, _):
            try:
                with pytest.raises(fdchannel.HandoffTimeout, match=r"within -?(0|1|inf) s"):
                    future.result(SHORT * 3)
            finally:
                if not future.done():
                    wake()  # a call that waits instead ends here


# --- the async layer takes the same values (the reference) --------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("timeout", FAR)
async def test_the_async_layer_takes_them(sockdir: Path, timeout: Any) -> None:
    chans = channels(str(sockdir / "cpr"), str(sockdir / "main"))
    one = f"cpr,addr.transport=socket,addr.type=unix,addr.path={sockdir / 'one'}"
    with anyio.fail_after(LONG), state_of(COUNT, "native") as state:
        async with fdchannel.Incoming(chans) as inc, fdchannel.Outgoing(chans) as out:
            await inc.listen_cpr()
            async with anyio.create_task_group() as tg:

                async def old_process() -> None:
                    await out.send_cpr(state, timeout=timeout)
                    await out.send_main(MAIN_DATA, timeout=timeout)

                tg.start_soon(old_process)
                with await inc.receive_cpr(timeout=timeout) as received:
                    check_state(received, COUNT, "native")
                    await inc.listen_main()
                assert await inc.receive_main(timeout=timeout) == MAIN_DATA
        # The one-call functions too.
        async with anyio.create_task_group() as tg:

            async def receiver() -> None:
                cpr = await fdchannel.receive_cpr(one, timeout=timeout)
                cpr.state.close()
                await cpr.accept()

            tg.start_soon(receiver)
            ack = await fdchannel.send_cpr(one, state, timeout=timeout)
            assert ack.kind == "accepted"


@pytest.mark.anyio
@pytest.mark.parametrize("timeout", PASSED)
async def test_the_async_layer_times_out_at_once(sockdir: Path, timeout: Any) -> None:
    chans = channels(str(sockdir / "cpr"), str(sockdir / "main"))
    one = f"cpr,addr.transport=socket,addr.type=unix,addr.path={sockdir / 'one'}"
    with anyio.fail_after(LONG), state_of(1, "native") as state:
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: fdchannel.receive_cpr(one, timeout=timeout),
            lambda: fdchannel.send_cpr(one, state, timeout=timeout),
        ]
        for call in calls:
            with pytest.raises(fdchannel.HandoffTimeout, match=r"within -?(0|1|inf) s"):
                await call()
        async with fdchannel.Incoming(chans) as inc:
            with pytest.raises(fdchannel.HandoffTimeout, match=r"within -?(0|1|inf) s"):
                await inc.receive_cpr(timeout=timeout)
