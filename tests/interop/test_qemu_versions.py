"""QEMU 10.0 and 11.1's cpr-transfer against fdchannel, every way (``make interop-qemu``).

Debian 12 has no QEMU with cpr-transfer, so each QEMU runs from a Debian 13
root (``qemu_root.py``: 10.0 from trixie, 11.1 from trixie-backports) with
``chroot``.  A version's tests run only when its root is named:
``FDCHANNEL_QEMU10_ROOT``, ``FDCHANNEL_QEMU11_ROOT``; the cross-version
routes need both.  Sockets live in the roots' /tmp.

fdchannel's side is the async API, except in the rows named "blocking":
there ``fdchannel.blocking.Incoming`` or ``Outgoing`` faces QEMU, each of
its calls that may wait runs in a worker thread (``anyio.to_thread``) under
its own timeout, so that the test's deadline still holds.  Both kinds of row
run the same test body, made once per ``Api``.

What QEMU does, from migration/migration.c, cpr.c and cpr-transfer.c and
seen here (10.0.13 and 11.1.3 alike unless said):

* Source.  ``migrate`` in mode cpr-transfer needs a cpr channel.  Inside
  the command QEMU connects the cpr unix socket once (no retry: our
  listener must be up first), writes ``QCPR``, version 1 and its list of
  descriptors (the memory backend under its object id, each ROM under its
  RAM block's name, all id 0; 10.0 newest first, 11.1 in another order;
  11.1 then the ``CprState/vfio devices`` subsection), flushes and shuts
  down writing.  It then watches the socket for HUP and only then connects
  the main channel.  Any close counts: a receiver that died also "acks",
  and then main fails to connect.
* The main stream is an ordinary precopy stream (``QEVM``, version 3), but
  RAM blocks whose descriptors went over cpr are not in it:
  ``query-migrate`` reports a RAM total of 0 and a 256 MiB guest needs
  about 110 KB.
* Destination.  With a cpr channel in ``-incoming``, QEMU listens on it at
  start-up, before it creates devices or monitors (its QMP connection comes
  only once the state is read), accepts one client, reads the state, and
  creates each memory backend and ROM from the descriptor filed under its
  name.  It keeps the cpr socket open until its main listener exists: with
  ``-incoming defer`` that is ``migrate-incoming``.  QEMU 10.0 fails on
  any subsection (``vmstate_load_state`` -ENOENT) and exits.
* Across versions the machine type must be one both know: the ``pc``
  alias is ``pc-i440fx-10.0`` in 10.0 and ``pc-i440fx-11.1`` in 11.1, and
  a destination refuses a stream of another machine type.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, ExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol, TypeAlias

import anyio
import anyio.to_thread
import pytest

import fdchannel
from fdchannel import Ack, Channel, FdState, blocking
from fdchannel.codecs.qemu import VFIO_DEVICES

from .matrix import row
from .qemu import (
    CPR_ENTRIES,
    DEFAULT_TIMEOUT,
    MAX_MAIN_STREAM,
    MIGRATION_MAGIC,
    MIGRATION_VERSION,
    PATTERN_ADDR,
    PATTERN_SIZE,
    RAM_SIZE,
    AnyStream,
    ChrootQemu,
    Place,
    check_cpr_state,
    fdchannel_cli,
    guest_memory,
    migration_header,
    relay_stream,
    start_chroot_qemu,
    start_cpr_transfer,
    start_incoming,
    write_guest_ram,
)
from .qemu_root import bind_mounts, is_complete

pytestmark = [pytest.mark.anyio, pytest.mark.interop]

#: Seconds a whole test may take; one takes about a second.
TEST_TIMEOUT = 30
#: The captured cpr channels (tests/codecs/vectors): what a relay must carry unchanged.
VECTORS = Path(__file__).resolve().parents[1] / "codecs" / "vectors"
#: The newest machine type both QEMUs know, for migrations between them.
CROSS_MACHINE = "pc-i440fx-10.0"


@dataclass(frozen=True)
class QemuVersion:
    """A QEMU under test: its label, the qemu_root.py flavour and the variable naming its root."""

    label: str
    flavour: str
    variable: str

    @property
    def matrix_column(self) -> str:
        return self.label

    @property
    def skip(self) -> pytest.MarkDecorator:
        """Skip unless this version's root is named."""
        return pytest.mark.skipif(
            not os.environ.get(self.variable),
            reason=f"{self.variable} is not set: `make test` or `make interop-qemu` sets it "
            f"when run as root, to a cached Debian 13 root holding QEMU {self.label}",
        )


QEMU10 = QemuVersion("10.0", "10", "FDCHANNEL_QEMU10_ROOT")
QEMU11 = QemuVersion("11.1", "11", "FDCHANNEL_QEMU11_ROOT")
VERSIONS = (QEMU10, QEMU11)


@dataclass(frozen=True)
class Route:
    """A live update carried by fdchannel: QEMU ``src`` -> Incoming, Outgoing -> QEMU ``dst``."""

    src: QemuVersion
    dst: QemuVersion
    #: Outgoing's ``qemu_target``.
    target: str | None

    @property
    def matrix_column(self) -> str:
        same = self.src == self.dst
        return self.src.label if same else f"{self.src.label} → {self.dst.label}"

    @property
    def machine(self) -> str:
        return "pc" if self.src == self.dst else CROSS_MACHINE

    @property
    def id(self) -> str:
        return f"{self.src.label}-to-{self.dst.label}-target-{self.target}"


#: 11.1 -> 10.0 needs the target: 10.0 fails on 11.1's subsection.  10.0 ->
#: 11.1 works either way; with the target 11.1 gets what it would send itself.
ROUTES = (
    Route(QEMU10, QEMU10, None),
    Route(QEMU11, QEMU11, None),
    Route(QEMU11, QEMU10, "10.0"),
    Route(QEMU10, QEMU11, "11.1"),
)


#: Makes a fresh directory in a version's root (the fixture ``places``).
Places: TypeAlias = Callable[[QemuVersion], Place]


def version_params() -> list[object]:
    return [pytest.param(v, id=v.label, marks=v.skip) for v in VERSIONS]


def route_params(routes: tuple[Route, ...] = ROUTES) -> list[object]:
    return [pytest.param(r, id=r.id, marks=[r.src.skip, r.dst.skip]) for r in routes]


# --------------------------------------------------------------------------
# Roots and directories.


@pytest.fixture(scope="module")
def roots() -> Iterator[dict[QemuVersion, Path]]:
    """The roots named in the environment, with the host's /proc and /dev bound in."""
    found = {
        v: Path(os.environ[v.variable]).absolute() for v in VERSIONS if os.environ.get(v.variable)
    }
    if os.geteuid() != 0:
        pytest.fail("chroot and mount --bind need root")
    for version, root in found.items():
        if not is_complete(root, version.flavour):
            pytest.fail(
                f"{version.variable}={root} is not a QEMU {version.flavour} root: "
                f"tests/interop/qemu_root.py --version {version.flavour} builds one"
            )
    with ExitStack() as mounts:
        for root in found.values():
            mounts.enter_context(bind_mounts(root))
        yield found


@pytest.fixture
def places(roots: dict[QemuVersion, Path]) -> Iterator[Places]:
    """Make fresh directories in a version's root's /tmp; all removed afterwards."""
    with ExitStack() as made:

        def place(version: QemuVersion) -> Place:
            root = roots[version]
            tmp = made.enter_context(tempfile.TemporaryDirectory(prefix="fdc-", dir=root / "tmp"))
            return Place(root, Path(tmp))

        yield place


# --------------------------------------------------------------------------
# Checks.


async def connect(vm: ChrootQemu, version: QemuVersion) -> None:
    """Connect QMP and check that the root holds the QEMU we meant."""
    await vm.connect()
    assert str(vm.version[0]) == version.flavour, f"{version.variable}: QEMU {vm.version}"


def check_subsections(state: FdState, version: tuple[int, int]) -> None:
    """10.0 sends none; 10.1 and later an empty ``CprState/vfio devices`` (no VFIO device)."""
    if version < (10, 1):
        assert state.qemu_subsections == ()
        return
    (vfio,) = state.qemu_subsections
    assert (vfio.name, vfio.version_id, vfio.devices) == (VFIO_DEVICES, 1, ())


def cpr_channels(place: Place) -> list[Channel]:
    """Our main and cpr channels on ``main.sock`` and ``cpr.sock`` in ``place``."""
    return [place.channel("main", "main.sock"), place.channel("cpr", "cpr.sock")]


def incoming_args(place: Place) -> tuple[str, ...]:
    """``-incoming`` for a destination: its cpr channel first, main later (``defer``)."""
    return ("-incoming", json.dumps(place.qapi("cpr", "cpr.sock")), "-incoming", "defer")


def vector_size(version: tuple[int, int]) -> int:
    """Bytes of the cpr channel QEMU ``version`` sent when it was captured."""
    return (VECTORS / f"qemu-{version[0]}.{version[1]}-cpr.bin").stat().st_size


# --------------------------------------------------------------------------
# Either API, driven from async code: one test body serves both.


class IncomingSide(Protocol):
    """What the tests do with an Incoming; ``fdchannel.Incoming`` is one as it is."""

    @property
    def codec(self) -> str | None: ...

    @property
    def state(self) -> blocking.State: ...

    async def listen_cpr(self) -> object: ...

    async def receive_cpr(self) -> FdState: ...

    async def listen_main(self) -> object: ...

    async def accept_main(self) -> AnyStream: ...


class OutgoingSide(Protocol):
    """What the tests do with an Outgoing; ``fdchannel.Outgoing`` is one as it is."""

    async def send_cpr(self, state: FdState) -> Ack: ...

    async def connect_main(self) -> AnyStream: ...


class ThreadedIncoming(AbstractAsyncContextManager["ThreadedIncoming"]):
    """``blocking.Incoming`` as an IncomingSide: each call that may wait runs in a
    worker thread under its own timeout, so that the test's deadline still holds."""

    def __init__(self, channels: list[Channel]) -> None:
        self.incoming = blocking.Incoming(channels)

    async def __aexit__(self, *exc_info: object) -> None:
        self.incoming.close()

    @property
    def codec(self) -> str | None:
        return self.incoming.codec

    @property
    def state(self) -> blocking.State:
        return self.incoming.state

    async def listen_cpr(self) -> None:
        self.incoming.listen_cpr()  # never waits

    async def receive_cpr(self) -> FdState:
        return await anyio.to_thread.run_sync(self.incoming.receive_cpr, DEFAULT_TIMEOUT)

    async def listen_main(self) -> None:
        await anyio.to_thread.run_sync(self.incoming.listen_main, DEFAULT_TIMEOUT)

    async def accept_main(self) -> blocking.Stream:
        return await anyio.to_thread.run_sync(self.incoming.accept_main, DEFAULT_TIMEOUT)


class ThreadedOutgoing(AbstractAsyncContextManager["ThreadedOutgoing"]):
    """``blocking.Outgoing(codec="qemu")`` as an OutgoingSide, its waits in worker threads."""

    def __init__(self, channels: list[Channel], target: str | None) -> None:
        self.outgoing = blocking.Outgoing(channels, codec="qemu", qemu_target=target)

    async def __aexit__(self, *exc_info: object) -> None:
        self.outgoing.close()

    async def send_cpr(self, state: FdState) -> Ack:
        return await anyio.to_thread.run_sync(self.outgoing.send_cpr, state, DEFAULT_TIMEOUT)

    async def connect_main(self) -> blocking.Stream:
        return await anyio.to_thread.run_sync(self.outgoing.connect_main, DEFAULT_TIMEOUT)


def async_outgoing(channels: list[Channel], target: str | None) -> fdchannel.Outgoing:
    """``fdchannel.Outgoing(codec="qemu")`` with ``target``: the async API's OutgoingSide."""
    return fdchannel.Outgoing(channels, codec="qemu", qemu_target=target)


@dataclass(frozen=True)
class Api:
    """fdchannel's async API or its blocking one, as a test drives it."""

    #: What the matrix's rows call it: nothing, or "blocking ".
    prefix: str
    incoming: Callable[[list[Channel]], AbstractAsyncContextManager[IncomingSide]]
    #: An Outgoing with codec "qemu" and the given ``qemu_target``.
    outgoing: Callable[[list[Channel], str | None], AbstractAsyncContextManager[OutgoingSide]]


ASYNC = Api("", fdchannel.Incoming, async_outgoing)
BLOCKING = Api("blocking ", ThreadedIncoming, ThreadedOutgoing)

#: A test made for one Api; the matrix names its row after the Api, hence
#: one test function per Api rather than a parameter.
VersionTest = Callable[[QemuVersion, Places], Awaitable[None]]
RouteTest = Callable[[Route, Places], Awaitable[None]]


@asynccontextmanager
async def closing(stream: AnyStream) -> AsyncIterator[AnyStream]:
    """``stream``, closed on the way out, whichever API made it."""
    try:
        yield stream
    finally:
        if isinstance(stream, blocking.Stream):
            stream.close()
        else:
            await stream.aclose()


async def wait_peer_closed(stream: AnyStream) -> None:
    """Wait until the peer has closed ``stream`` (a blocking one: in a worker thread, bounded)."""
    if isinstance(stream, blocking.Stream):
        await anyio.to_thread.run_sync(stream.wait_peer_closed, DEFAULT_TIMEOUT)
    else:
        await stream.wait_peer_closed()


# --------------------------------------------------------------------------
# QEMU -> Incoming, async or blocking


def qemu_to_incoming(api: Api) -> VersionTest:
    """The test of row "QEMU → Incoming" with ``api``'s Incoming."""

    @row(f"QEMU → {api.prefix}Incoming")
    @pytest.mark.parametrize("version", version_params())
    async def test(version: QemuVersion, places: Places) -> None:
        """Our Incoming takes QEMU's memfds, acks by closing, and gets QEMU's main stream."""
        place = places(version)
        pattern = os.urandom(PATTERN_SIZE)
        with anyio.fail_after(TEST_TIMEOUT):
            async with (
                start_chroot_qemu(place, "src") as src,
                api.incoming(cpr_channels(place)) as incoming,
            ):
                await connect(src, version)
                assert (await src.qmp.execute("query-status"))["status"] == "prelaunch"
                await incoming.listen_cpr()  # before migrate: QEMU connects once
                await start_cpr_transfer(src.qmp, place)
                with await incoming.receive_cpr() as state:
                    assert incoming.codec == "qemu"
                    check_subsections(state, src.version)
                    ram = check_cpr_state(state, ordered=src.version == (10, 0))
                    # The memfd is the running guest's RAM, not a copy of it.
                    os.pwrite(ram, pattern, PATTERN_ADDR)
                    assert await guest_memory(src.qmp, place, "src.mem") == pattern
                # Until our close QEMU waits: the state is out, main not even connected.
                assert (await src.qmp.execute("query-migrate"))["status"] == "setup"
                await incoming.listen_main()
                assert incoming.state is blocking.State.LISTENING_MAIN  # cpr closed: QEMU's ack
                # The main stream is QEMU's own, not fdchannel's length-prefixed one.
                async with closing(await incoming.accept_main()) as main:
                    data = await relay_stream(main, None)
                assert migration_header(data) == (MIGRATION_MAGIC, MIGRATION_VERSION)
                info = await src.qmp.wait_migration()
                assert info["ram"]["total"] == 0  # every RAM block travelled as a memfd
                assert (await src.qmp.execute("query-status"))["status"] == "postmigrate"
                await src.quit()

    return test


test_qemu_hands_its_state_to_incoming = qemu_to_incoming(ASYNC)
test_qemu_hands_its_state_to_blocking_incoming = qemu_to_incoming(BLOCKING)


# --------------------------------------------------------------------------
# QEMU -> fdchannel.Incoming, Outgoing(codec="qemu") -> a new QEMU, with the
# async Outgoing or the blocking one


class LiveUpdate(NamedTuple):
    """A route's two QEMUs and our two sides, the old QEMU's cpr-transfer under way."""

    src: ChrootQemu
    dst: ChrootQemu
    #: The new QEMU's directory.
    there: Place
    incoming: fdchannel.Incoming
    outgoing: OutgoingSide


@asynccontextmanager
async def live_update(route: Route, api: Api, places: Places) -> AsyncIterator[LiveUpdate]:
    """Start both QEMUs, our Incoming and ``api``'s Outgoing, then the old QEMU's migrate."""
    here, there = places(route.src), places(route.dst)
    async with (
        start_chroot_qemu(here, "src", machine=route.machine) as src,
        # Waits for its state on cpr.sock before anything else.
        start_chroot_qemu(there, "dst", *incoming_args(there), machine=route.machine) as dst,
        fdchannel.Incoming(cpr_channels(here)) as incoming,
        api.outgoing(cpr_channels(there), route.target) as outgoing,
    ):
        await connect(src, route.src)
        await incoming.listen_cpr()
        await start_cpr_transfer(src.qmp, here)
        yield LiveUpdate(src, dst, there, incoming, outgoing)


def outgoing_to_qemu(api: Api) -> RouteTest:
    """The test of row "Outgoing → QEMU" with ``api``'s Outgoing (our Incoming is async)."""

    @row(f"{api.prefix}Outgoing → QEMU")
    @pytest.mark.parametrize("route", route_params())
    async def test(route: Route, places: Places) -> None:
        """A live update carried by fdchannel: the new QEMU runs on the memfds we passed."""
        pattern = os.urandom(PATTERN_SIZE)
        acks: list[Ack] = []
        with anyio.fail_after(TEST_TIMEOUT):
            async with live_update(route, api, places) as (src, dst, there, incoming, outgoing):
                with await incoming.receive_cpr() as state:
                    check_subsections(state, src.version)
                    os.pwrite(check_cpr_state(state, ordered=False), pattern, PATTERN_ADDR)

                    async def send_cpr() -> None:
                        acks.append(await outgoing.send_cpr(state))

                    async with anyio.create_task_group() as tg:
                        # QEMU answers QMP only once it has read the state, and
                        # acks the state only once migrate-incoming listens.
                        tg.start_soon(send_cpr)
                        await connect(dst, route.dst)
                        assert (await dst.qmp.execute("query-status"))["status"] == "inmigrate"
                        await start_incoming(dst.qmp, there, "main.sock")
                # Acked: the new QEMU holds its own copies of the descriptors.
                async with closing(await outgoing.connect_main()) as to_dst:
                    await incoming.listen_main()  # the old QEMU may go on now
                    async with await incoming.accept_main() as from_src:
                        await relay_stream(from_src, to_dst)
                    await dst.qmp.wait_migration()
                    await wait_peer_closed(to_dst)
                await src.qmp.wait_migration()
                # Guest RAM the main stream never carried: only the memfd brought it.
                assert await guest_memory(dst.qmp, there, "dst.mem") == pattern
                # The source never ran, so neither does the destination.
                assert (await dst.qmp.execute("query-status"))["status"] == "prelaunch"
                await src.quit()
                await dst.quit()
        (ack,) = acks
        assert (ack.codec, ack.descriptors, ack.kind) == ("qemu", len(CPR_ENTRIES), "closed")

    return test


test_outgoing_hands_on_to_a_new_qemu = outgoing_to_qemu(ASYNC)
test_blocking_outgoing_hands_on_to_a_new_qemu = outgoing_to_qemu(BLOCKING)


# --------------------------------------------------------------------------
# QEMU -> `fdchannel relay` -> QEMU, as child processes


@row("relay QEMU → QEMU")
@pytest.mark.parametrize("version", version_params())
async def test_relay_carries_a_cpr_transfer(version: QemuVersion, places: Places) -> None:
    """Two ``fdchannel relay`` processes carry the cpr and main channels between two QEMUs."""
    place = places(version)
    pattern = os.urandom(PATTERN_SIZE)
    relay = ("relay", "--json", "--timeout", str(TEST_TIMEOUT))
    with anyio.fail_after(TEST_TIMEOUT):
        async with (
            start_chroot_qemu(place, "dst", *incoming_args(place)) as dst,
            start_chroot_qemu(place, "src") as src,
            fdchannel_cli(*relay, place.uri("src-cpr.sock"), place.uri("cpr.sock")) as cpr,
            fdchannel_cli(*relay, place.uri("src-main.sock"), place.uri("main.sock")) as main,
        ):
            await connect(src, version)
            write_guest_ram(src.process.pid, pattern)
            await cpr.listening()
            await main.listening()
            await start_cpr_transfer(src.qmp, place, main="src-main.sock", cpr="src-cpr.sock")
            await connect(dst, version)
            await start_incoming(dst.qmp, place, "main.sock")
            await dst.qmp.wait_migration()
            await src.qmp.wait_migration()
            carried, streamed = await cpr.result(), await main.result()
            assert await guest_memory(dst.qmp, place, "dst.mem") == pattern
            await src.quit()
            await dst.quit()
    # The cpr channel went through unchanged: the captured size, one descriptor
    # per entry, nothing back, and the destination's close reached the source.
    assert carried["forward"] == {
        "bytes": vector_size(src.version),
        "fds": len(CPR_ENTRIES),
        "ended": True,
    }
    assert carried["backward"] == {"bytes": 0, "fds": 0, "ended": True}
    assert carried["closing"] == "the sender half-closed first, then the receiver closed (the ack)"
    assert streamed["forward"]["fds"] == 0
    assert 0 < streamed["forward"]["bytes"] <= MAX_MAIN_STREAM


# --------------------------------------------------------------------------
# QEMU -> `fdchannel probe --listen --json`, as a child process


@row("probe --listen ← QEMU")
@pytest.mark.parametrize("version", version_params())
async def test_probe_listen_describes_qemus_state(version: QemuVersion, places: Places) -> None:
    """probe lists QEMU's memfds, and its close is the ack: QEMU then sends main."""
    place = places(version)
    with anyio.fail_after(TEST_TIMEOUT):
        async with (
            start_chroot_qemu(place, "src") as src,
            await fdchannel.listen(place.channel("main", "main.sock")) as listener,
            fdchannel_cli(
                "probe", "--listen", "--json", "--timeout", str(TEST_TIMEOUT), place.uri("cpr.sock")
            ) as probe,
        ):
            await connect(src, version)
            await probe.listening()
            await start_cpr_transfer(src.qmp, place)
            report = await probe.result()  # printed once it has closed: the ack
            async with await listener.accept() as main:
                data = await relay_stream(main, None)
            assert migration_header(data) == (MIGRATION_MAGIC, MIGRATION_VERSION)
            await src.qmp.wait_migration()
            await src.quit()
    assert report["codec"] == "qemu"
    assert report["ack"] == "closed the connection"
    assert report["peer"]["pid"] == src.process.pid
    assert report["peer"]["argv"][0] == "qemu-system-x86_64"
    entries = {(d["name"], d["id"]): d["description"] for d in report["descriptors"]}
    assert sorted(entries) == sorted(CPR_ENTRIES)
    assert all(what["kind"] == "memfd" for what in entries.values()), entries
    assert entries["ram0", 0]["name"] == "memory-backend-memfd"
    assert entries["ram0", 0]["size"] == RAM_SIZE


# --------------------------------------------------------------------------
# Why the target matters: QEMU 10.0 refuses what 11.1 sent, as it was sent


@row("no target: 10.0 refuses 11.1's state")
@pytest.mark.parametrize("route", route_params((Route(QEMU11, QEMU10, None),)))
async def test_qemu10_refuses_a_state_with_subsections(route: Route, places: Places) -> None:
    """Without ``qemu_target="10.0"`` QEMU 10.0 reads 11.1's subsection, fails and exits."""
    with anyio.fail_after(TEST_TIMEOUT):
        async with live_update(route, ASYNC, places) as (src, dst, _, incoming, outgoing):
            with await incoming.receive_cpr() as state:
                check_subsections(state, src.version)
                # QEMU's exit closes the connection: to us it may look like the
                # ack (a close) or a failure (a reset, with our bytes unread).
                with contextlib.suppress(fdchannel.HandoffError):
                    await outgoing.send_cpr(state)
            assert await dst.exited() != 0
            log = dst.log.read_text(errors="replace")
    # -ENOENT: 10.0's CprState has no subsections.
    assert "vmstate_load_state error -2" in log, log
