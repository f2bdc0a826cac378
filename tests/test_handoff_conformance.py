"""Conformance: each handoff scenario ends the same in every pairing of the two layers.

A scenario is two scripts, the old process's and the new one's, each a
list of calls with the outcome each must have (a value, or the exact
error type), and the state each side's machine ends in.  It runs in every
pairing of the async layer and ``fdchannel.blocking`` (async→async,
async→blocking, blocking→async, blocking→blocking; a scenario with one
side only runs once per layer of that side), from one test body: a
blocking side is driven from async code, each call in a worker thread
bounded by its own timeout (``test_layer_parity.InThreads``).  The table
has one outcome per row for every pairing, so a layer that differs fails
its pairings.

The scripts meet at named points (one side signals, the other waits), or
where the kernel tells (a peer queued on a listening socket), never by
sleeping.
The old process's descriptors must come out of every scenario open and
intact (the rollback), and the new process's received state complete.
"""

from __future__ import annotations

import functools
import select
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

import fdchannel
from fdchannel import (
    ConnectionLostError,
    FdChannelError,
    HandoffError,
    HandoffTimeout,
    ProtocolError,
    StateError,
    TransportTimeout,
    UnixAddress,
    VerdictGiven,
)
from fdchannel.handoff import State
from fdchannel.transfer import Codec

from .blocking_peer import MAIN_DATA, REJECTION, channels, check_state, state_of
from .intruder import NOBODY, intruder, lines, needs_root
from .test_layer_parity import MODULES, Acked, incoming, outgoing

pytestmark = pytest.mark.anyio

#: Bounds each call that must succeed; SHORT each one that must time out.
LONG = 20.0
SHORT = 0.3
#: More than one message of descriptors (SCM_MAX_FD, 253).
COUNT = 300
LAYERS = ["async", "blocking"]
#: More main data than a unix socket holds (the library asks for 4 MiB buffers;
#: the kernel doubles what it grants).
HUGE_MAIN = b"main" * (1 << 22)

# --- scripts ---------------------------------------------------------------------------------

#: What a call gave: "ok", "acked" (the Ack the codec gives), "got" (the whole state), an
#: error's exact type, or what came instead of the expected value.
Outcome = str | Acked | type[BaseException]


@dataclass(frozen=True)
class Call:
    """Call ``method`` on the side (``timeout`` if given); ``expect`` is its outcome."""

    method: str
    expect: Outcome = "ok"
    timeout: float | None = None


@dataclass(frozen=True)
class Signal:
    """Tell the other side this script reached ``name``."""

    name: str


@dataclass(frozen=True)
class Wait:
    """Wait until the other side signalled ``name``."""

    name: str


@dataclass(frozen=True)
class Queued:
    """Wait until a peer is queued on this side's cpr listener, not yet accepted."""


Step = Call | Signal | Wait | Queued


@dataclass
class Play:
    """What both scripts share while they run."""

    codec: Codec
    count: int
    state: fdchannel.FdState
    window: int | None = None
    main: bytes = MAIN_DATA
    events: defaultdict[str, anyio.Event] = field(default_factory=lambda: defaultdict(anyio.Event))
    sides: dict[str, Any] = field(default_factory=dict)
    #: The receiver's cpr listener, once it listens.
    listener: Any = None


Action = Callable[[Any, Call, Play], Awaitable[Outcome]]


def _timeout(call: Call) -> dict[str, float]:
    return {} if call.timeout is None else {"timeout": call.timeout}


async def _send_cpr(side: Any, call: Call, play: Play) -> Outcome:
    ack = await side.send_cpr(play.state, **_timeout(call))
    got = Acked(ack.codec, ack.descriptors, ack.kind)
    # QEMU's protocol has no verdict: a qemu sender reads any close as the ack.
    kind = "accepted" if play.codec == "native" else "closed"
    return "acked" if got == Acked(play.codec, play.count, kind) else got


async def _receive_cpr(side: Any, call: Call, play: Play) -> Outcome:
    with await side.receive_cpr(**_timeout(call)) as state:
        assert side.codec == play.codec
        check_state(state, play.count, play.codec)
    return "got"


async def _receive_main(side: Any, call: Call, play: Play) -> Outcome:
    data = await side.receive_main(**_timeout(call))
    return "ok" if data == play.main else f"{len(data)} bytes"


async def _send_main(side: Any, call: Call, play: Play) -> Outcome:
    await side.send_main(play.main, **_timeout(call))
    return "ok"


async def _listen_cpr(side: Any, call: Call, play: Play) -> Outcome:
    play.listener = await side.listen_cpr()
    return "ok"


def _readable(fd: int, timeout: float) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


def _plain(name: str, *args: object) -> Action:
    """A call whose value does not matter: "ok" if it returned."""

    async def act(side: Any, call: Call, play: Play) -> Outcome:
        await getattr(side, name)(*args, **_timeout(call))
        return "ok"

    return act


#: The handoff sides' calls.
HANDOFF: dict[str, Action] = {
    "send_cpr": _send_cpr,
    "connect_main": _plain("connect_main"),
    "send_main": _send_main,
    "listen_cpr": _listen_cpr,
    "receive_cpr": _receive_cpr,
    "listen_main": _plain("listen_main"),
    "reject": _plain("reject", REJECTION),
    "accept_main": _plain("accept_main"),
    "receive_main": _receive_main,
    "abort": _plain("abort"),
}


async def perform(
    role: str, steps: Sequence[Step], actions: dict[str, Action], play: Play
) -> list[Outcome]:
    """Run one side's script; each call's outcome, in order (a step that failed
    does not stop the script: the next steps say what the side does after it)."""
    side = play.sides[role]
    seen: list[Outcome] = []
    for step in steps:
        if isinstance(step, Signal):
            play.events[step.name].set()
        elif isinstance(step, Wait):
            await play.events[step.name].wait()
        elif isinstance(step, Queued):
            # A listening socket is readable while its accept queue holds a peer.
            ready = functools.partial(_readable, play.listener.fileno(), LONG)
            assert await anyio.to_thread.run_sync(ready)
        else:
            try:
                seen.append(await actions[step.method](side, step, play))
            except FdChannelError as exc:
                seen.append(type(exc))
    return seen


async def perform_both(
    sender: Sequence[Step], receiver: Sequence[Step], actions: dict[str, Action], play: Play
) -> tuple[list[Outcome], list[Outcome]]:
    """Both scripts at once."""
    seen: dict[str, list[Outcome]] = {}

    async def one(role: str, steps: Sequence[Step]) -> None:
        seen[role] = await perform(role, steps, actions, play)

    async with anyio.create_task_group() as tg:
        for role, steps in zip(ROLES, (sender, receiver), strict=True):
            if steps:
                tg.start_soon(one, role, steps)
    return seen.get("sender", []), seen.get("receiver", [])


ROLES = ("sender", "receiver")


def pairings(sender: Sequence[Step], receiver: Sequence[Step]) -> list[tuple[str, str]]:
    """Every pairing of layers; with one side only, each layer of that side ("-": absent)."""
    if not receiver:
        return [(layer, "-") for layer in LAYERS]
    if not sender:
        return [("-", layer) for layer in LAYERS]
    return [(s, r) for s in LAYERS for r in LAYERS]


# --- the handoff: Outgoing and Incoming ---------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """Two scripts, and the state each side's machine ends in (None: no such side)."""

    name: str
    codec: Codec
    sender: tuple[Step, ...]
    receiver: tuple[Step, ...]
    ends: tuple[State | None, State | None]
    #: The descriptors in the state, and the native codec's window (send_state only).
    count: int = COUNT
    window: int | None = None
    #: What ``send_main`` sends.
    main: bytes = MAIN_DATA
    #: Pairings known to differ: (sender layer, receiver layer) -> the reason.
    known: dict[tuple[str, str], str] = field(default_factory=dict)


def call(method: str, expect: Outcome = "ok", timeout: float | None = LONG) -> Call:
    return Call(method, expect, timeout)


#: The new process until it holds the state: listening (and saying so), then the state.
LISTENED = (Call("listen_cpr"), Signal("listening"))
RECEIVED = (*LISTENED, call("receive_cpr", "got"))
#: The old process: once the new one listens, the state and its ack.
ACKED = (Wait("listening"), call("send_cpr", "acked"))
ANSWERED_AGAIN = (call("listen_main", VerdictGiven), call("reject", VerdictGiven))
D, F, A, R = State.DONE, State.FAILED, State.ABORTED, State.REJECTED


def outcomes() -> list[Scenario]:
    """Accepted and rejected, with either codec: a close is QEMU's only answer."""
    rows = []
    for codec in ("native", "qemu"):
        rows.append(
            Scenario(
                f"accepted-{codec}",
                codec,
                (*ACKED, call("send_main")),
                (*RECEIVED, call("listen_main"), *ANSWERED_AGAIN, call("receive_main")),
                (D, D),
            )
        )
    rows.append(
        Scenario(
            "rejected-native",
            "native",
            # Rejected: the machine refuses what only an acked handoff may do.
            (*ACKED[:-1], call("send_cpr", HandoffError), call("connect_main", HandoffError)),
            (*RECEIVED, call("reject"), *ANSWERED_AGAIN),
            (F, R),
        )
    )
    rows.append(
        Scenario(
            "rejected-qemu",
            "qemu",
            # Read as the ack (what follows: receiver-gone-before-answering-qemu).
            ACKED,
            (*RECEIVED, call("reject"), *ANSWERED_AGAIN),
            (State.ACKED, R),
        )
    )
    return rows


def never_answered(codec: Codec, answer: Call, end: State) -> Scenario:
    """The old process waits for the ack in vain and gives up; then the new one answers.

    Accepting then: the native codec's STATUS frame finds the old process
    gone; QEMU's bare close cannot tell.
    """
    return Scenario(
        f"send_cpr-never-answered-{answer.method}-{codec}",
        codec,
        (*ACKED[:-1], call("send_cpr", HandoffTimeout, SHORT), Signal("gave-up")),
        (*RECEIVED, Wait("gave-up"), answer),
        (F, end),
    )


def timeouts() -> list[Scenario]:
    """A step whose peer never does its part: HandoffTimeout."""
    return [
        Scenario(
            "send_cpr-nobody-listens",
            "native",
            (call("send_cpr", HandoffTimeout, SHORT),),
            (),
            (F, None),
        ),
        Scenario(
            "receive_cpr-nobody-sends",
            "native",
            (),
            (call("receive_cpr", HandoffTimeout, SHORT),),
            (None, F),
        ),
        never_answered("native", call("listen_main", HandoffError), F),
        never_answered("native", call("reject"), R),  # the reason goes nowhere: no error
        never_answered("qemu", call("listen_main"), State.LISTENING_MAIN),
        Scenario(
            "connect_main-nobody-listens",
            "native",
            (*ACKED, Wait("gone"), call("connect_main", HandoffTimeout, SHORT)),
            (*RECEIVED, call("listen_main"), Call("abort"), Signal("gone")),
            (F, A),
        ),
        Scenario(
            "send_main-never-read",
            "native",
            # More main data than the socket holds: the old process waits for room.
            (*ACKED, call("send_main", HandoffTimeout, SHORT), Signal("gave-up")),
            (
                *RECEIVED,
                call("listen_main"),
                call("accept_main"),
                Wait("gave-up"),
                call("receive_main", HandoffError),  # cut short
            ),
            (F, F),
            main=HUGE_MAIN,
        ),
        Scenario(
            "send_main-read-too-late",
            "native",
            # All of it fits in the socket: the old process waits for the close,
            # gives up, and the new one reads it all afterwards.  Each side has its
            # own verdict (a timeout cannot tell how far the peer got).
            (*ACKED, call("send_main", HandoffTimeout, SHORT), Signal("gave-up")),
            (
                *RECEIVED,
                call("listen_main"),
                call("accept_main"),
                Wait("gave-up"),
                call("receive_main"),
            ),
            (F, D),
        ),
        Scenario(
            "accept_main-nobody-connects",
            "native",
            (*ACKED, Wait("gave-up")),
            (
                *RECEIVED,
                call("listen_main"),
                call("accept_main", HandoffTimeout, SHORT),
                call("receive_main", HandoffError, SHORT),  # the machine refuses: it failed
                Signal("gave-up"),
            ),
            (State.ACKED, F),
        ),
    ]


def losses() -> list[Scenario]:
    """The peer goes away (``abort``) at each step."""
    rows = [
        Scenario(
            "receiver-gone-before-accepting",
            "native",
            (Wait("gone"), call("send_cpr", HandoffTimeout, SHORT)),
            (*LISTENED, Call("abort"), Signal("gone")),
            (F, A),
        ),
    ]
    for codec in ("native", "qemu"):
        rows.append(
            Scenario(
                f"receiver-gone-with-the-state-unread-{codec}",
                codec,
                (*ACKED[:-1], call("send_cpr", HandoffError)),
                (*LISTENED, Queued(), Call("abort")),
                (F, A),
            )
        )
    rows += [
        Scenario(
            "receiver-gone-before-answering-native",
            "native",
            (*ACKED[:-1], call("send_cpr", HandoffError)),
            (*RECEIVED, Call("abort")),
            (F, A),
        ),
        Scenario(
            "receiver-gone-before-answering-qemu",
            "qemu",
            # A close is QEMU's ack: the old process learns on main.
            (*ACKED, Wait("gone"), call("connect_main", HandoffTimeout, SHORT)),
            (*RECEIVED, Call("abort"), Signal("gone")),
            (F, A),
        ),
        Scenario(
            "receiver-gone-mid-main",
            "native",
            (*ACKED, call("connect_main"), Wait("gone"), call("send_main", HandoffError)),
            (*RECEIVED, call("listen_main"), call("accept_main"), Call("abort"), Signal("gone")),
            (F, A),
        ),
        Scenario(
            "sender-gone-after-ack",
            "native",
            (*ACKED, Call("abort"), Signal("gone")),
            (
                *RECEIVED,
                call("listen_main"),
                Wait("gone"),
                call("receive_main", HandoffTimeout, SHORT),
            ),
            (A, F),
        ),
        Scenario(
            "sender-gone-mid-main",
            "native",
            (*ACKED, call("connect_main"), Wait("accepted"), Call("abort"), Signal("gone")),
            (
                *RECEIVED,
                call("listen_main"),
                call("accept_main"),
                Signal("accepted"),
                Wait("gone"),
                call("receive_main", HandoffError),
            ),
            (A, F),
        ),
    ]
    return rows


SCENARIOS = [*outcomes(), *timeouts(), *losses()]


@dataclass(frozen=True)
class Seen:
    """What each side's calls gave, and where each side's machine ended."""

    sender: list[Outcome]
    receiver: list[Outcome]
    ends: tuple[State | None, ...]

    @classmethod
    def expected(cls, scenario: Scenario) -> Seen:
        def outcomes(steps: Sequence[Step]) -> list[Outcome]:
            return [step.expect for step in steps if isinstance(step, Call)]

        return cls(outcomes(scenario.sender), outcomes(scenario.receiver), scenario.ends)


def cases(scenarios: Sequence[Scenario]) -> list[Any]:
    """(scenario, sender layer, receiver layer), a known difference marked xfail."""
    params = []
    for scenario in scenarios:
        for sender, receiver in pairings(scenario.sender, scenario.receiver):
            reason = scenario.known.get((sender, receiver))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            ident = f"{scenario.name}-{sender}>{receiver}"
            params.append(pytest.param(scenario, sender, receiver, marks=marks, id=ident))
    return params


@asynccontextmanager
async def sides(
    sender: str, receiver: str, chans: list[Any], codec: Codec
) -> AsyncIterator[dict[str, Any]]:
    """Each side in its layer (none for "-"); leaving gives up what is not finished."""
    async with AsyncExitStack() as stack:
        found: dict[str, Any] = {}
        if sender != "-":
            found["sender"] = await stack.enter_async_context(outgoing(sender, chans, codec))
        if receiver != "-":
            found["receiver"] = await stack.enter_async_context(incoming(receiver, chans))
        yield found


async def play_handoff(
    scenario: Scenario, sender: str, receiver: str, chans: list[Any], play: Play
) -> None:
    """Run the scenario's scripts on these layers; assert every outcome and end state."""
    async with sides(sender, receiver, chans, scenario.codec) as found:
        play.sides.update(found)
        sent, received = await perform_both(scenario.sender, scenario.receiver, HANDOFF, play)
        ends = tuple(found[role].state if role in found else None for role in ROLES)
    assert Seen(sent, received, ends) == Seen.expected(scenario)
    check_state(play.state, play.count, play.codec)  # the old process still holds it all


@pytest.mark.parametrize(("scenario", "sender", "receiver"), cases(SCENARIOS))
async def test_handoff(sockdir: Path, scenario: Scenario, sender: str, receiver: str) -> None:
    chans = channels(str(sockdir / "cpr"), str(sockdir / "main"))
    with state_of(scenario.count, scenario.codec) as state, anyio.fail_after(LONG * 2):
        play = Play(scenario.codec, scenario.count, state, main=scenario.main)
        await play_handoff(scenario, sender, receiver, chans, play)


# --- an intruder on the cpr channel ----------------------------------------------------------


INTRUDED = Scenario(
    "intruder-refused",
    "native",
    (*ACKED, call("send_main")),
    (
        Call("listen_cpr"),
        Signal("cpr-up"),
        Wait("intruder-connected"),  # queued first: accept meets it first
        Signal("listening"),
        call("receive_cpr", "got"),
        call("listen_main"),
        call("receive_main"),
    ),
    (D, D),
)


@needs_root
@pytest.mark.parametrize(("scenario", "sender", "receiver"), cases([INTRUDED]))
async def test_an_intruder_is_refused_unread(
    sockdir: Path,
    scenario: Scenario,
    sender: str,
    receiver: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A peer of another uid connects to cpr first: refused unread, then the handoff goes on."""
    name = f"fdc-conformance-{sockdir.name}"
    cpr = f"cpr,addr.transport=socket,addr.type=unix,addr.path={name},addr.abstract=on"
    chans = [f"unix:{sockdir / 'main'}", cpr]
    with state_of(COUNT, scenario.codec) as state, anyio.fail_after(LONG * 2):
        play = Play(scenario.codec, COUNT, state)
        async with anyio.create_task_group() as tg:
            tg.start_soon(play_handoff, scenario, sender, receiver, chans, play)
            await play.events["cpr-up"].wait()
            async with await intruder(name) as bad:
                assert await lines(bad, 1) == [b"connected"]
                play.events["intruder-connected"].set()
                assert await lines(bad, 1) == [b"closed"]  # closed with its bytes unread
                assert await bad.wait() == 0
    assert f"uid {NOBODY}" in caplog.text  # each layer says whom it refused


# --- send_state and receive_state: windows and a peer lost mid-state ---------------------------


class End:
    """One end of a unix stream in either layer: what send_state and receive_state run on."""

    state = None  # no machine

    def __init__(self, layer: str, address: UnixAddress) -> None:
        self.layer = layer
        self.address = address
        self.listener: Any = None
        self.stream: Any = None

    async def _run(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.layer == "async":
            return await function(*args, **kwargs)
        return await anyio.to_thread.run_sync(functools.partial(function, *args, **kwargs))

    def _bounded(self, timeout: float | None) -> dict[str, float | None]:
        """A blocking wait's own timeout; an async one waits under the test's deadline."""
        return {} if self.layer == "async" else {"timeout": timeout}

    async def listen(self) -> None:
        self.listener = await self._run(MODULES[self.layer].listen, self.address)

    async def accept(self, timeout: float | None) -> None:
        self.stream = await self._run(self.listener.accept, **self._bounded(timeout))

    async def connect(self, timeout: float | None) -> None:
        self.stream = await self._run(
            MODULES[self.layer].connect, self.address, **self._bounded(timeout)
        )

    async def send_state(self, play: Play, timeout: float | None) -> None:
        send = MODULES[self.layer].send_state
        await self._run(
            send, self.stream, play.state, play.codec, window=play.window, timeout=timeout
        )

    async def receive_state(self, timeout: float | None) -> fdchannel.FdState:
        state: fdchannel.FdState = await self._run(
            MODULES[self.layer].receive_state, self.stream, timeout=timeout
        )
        return state

    async def receive_some(self, timeout: float | None) -> bytes:
        data: bytes = await self._run(self.stream.receive, 1, **self._bounded(timeout))
        return data

    async def close(self) -> None:
        for resource in (self.stream, self.listener):
            if resource is not None:
                await self._run(resource.aclose if self.layer == "async" else resource.close)
        self.stream = self.listener = None


async def _receive_state(side: End, call: Call, play: Play) -> Outcome:
    with await side.receive_state(call.timeout) as state:
        check_state(state, play.count, play.codec)
    return "got"


def _end(name: str) -> Action:
    async def act(side: End, call: Call, play: Play) -> Outcome:
        method = getattr(side, name)
        if name == "send_state":
            await method(play, call.timeout)
        elif name in ("listen", "close"):
            await method()
        else:
            await method(call.timeout)
        return "ok"

    return act


TRANSFER: dict[str, Action] = {
    **{name: _end(name) for name in ("listen", "accept", "connect", "send_state", "close")},
    "receive_state": _receive_state,
    "receive_some": _end("receive_some"),
}

SERVING = (Call("listen"), Signal("listening"), call("accept"))
CONNECT = (Wait("listening"), call("connect"))
#: The whole state, then the close.
SENT = (*CONNECT, call("send_state"), Call("close"))
GOT = (*SERVING, call("receive_state", "got"), Call("close"))
#: Descriptors in several windows of a few messages each.
MANY = 800


def transfer_row(
    name: str, window: int | None, count: int = MANY, codec: Codec = "native"
) -> Scenario:
    return Scenario(name, codec, SENT, GOT, (None, None), count=count, window=window)


def refused_window(window: int) -> Scenario:
    """A window that is not a whole number of messages, for a state of several."""
    return Scenario(
        f"window-{window}-of-{MANY}-refused",
        "native",
        (*CONNECT, call("send_state", StateError), Call("close")),
        (*SERVING, call("receive_state", ProtocolError), Call("close")),
        (None, None),
        window=window,
    )


TRANSFERS = [
    transfer_row("window-253", 253),
    transfer_row("window-506", 506),
    transfer_row("window-none", 0),
    transfer_row("window-default", None),
    transfer_row("window-16-of-16", 16, count=16),
    transfer_row("window-1-of-1", 1, count=1),
    refused_window(1),
    refused_window(16),
    transfer_row("qemu", None, count=COUNT, codec="qemu"),
    Scenario(
        "receiver-gone-mid-state",
        "native",
        (*CONNECT, call("send_state", ConnectionLostError), Call("close")),
        (*SERVING, call("receive_some"), Call("close")),
        (None, None),
        window=253,
    ),
    Scenario(
        "sender-gone-mid-state",
        "native",
        # The first window, then no ack comes: the sender gives up and closes.
        (
            *CONNECT,
            call("send_state", TransportTimeout, SHORT),
            Call("close"),
            Signal("gone"),
        ),
        (
            *SERVING,
            Wait("gone"),
            call("receive_state", ConnectionLostError),
            Call("close"),
        ),
        (None, None),
        window=253,
    ),
]


@pytest.mark.parametrize(("scenario", "sender", "receiver"), cases(TRANSFERS))
async def test_transfer(sockdir: Path, scenario: Scenario, sender: str, receiver: str) -> None:
    address = UnixAddress(str(sockdir / "state"))
    with state_of(scenario.count, scenario.codec) as state, anyio.fail_after(LONG * 2):
        play = Play(scenario.codec, scenario.count, state, window=scenario.window)
        play.sides.update(sender=End(sender, address), receiver=End(receiver, address))
        try:
            sent, received = await perform_both(scenario.sender, scenario.receiver, TRANSFER, play)
        finally:
            for end in play.sides.values():
                await end.close()
        assert Seen(sent, received, (None, None)) == Seen.expected(scenario)
        check_state(state, scenario.count, scenario.codec)  # the sender still holds it all
