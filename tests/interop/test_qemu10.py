"""QEMU 10's cpr-transfer against fdchannel, both ways (``make interop-qemu10``).

Debian 12 has no QEMU with cpr-transfer, so QEMU 10 runs from a Debian 13
root (``qemu10_root.py``) with ``chroot``; the test runs only when
``FDCHANNEL_QEMU10_ROOT`` names that root.  Socket paths live in the root's
/tmp: ours are ``ROOT/tmp/...``, QEMU's the same files as ``/tmp/...``.

What QEMU 10 does, from migration/migration.c, cpr.c and cpr-transfer.c and
seen here:

* Source.  ``migrate`` in mode cpr-transfer needs a cpr channel.  Inside
  the command QEMU connects the cpr unix socket once (no retry: our
  listener must be up first), writes ``QCPR``, version 1 and its list of
  descriptors (``cpr_save_fd``: the memory backend under its object id,
  each ROM under its RAM block's name, all id 0, newest first), flushes
  and shuts down writing.  It then watches the socket for HUP and only
  then connects the main channel (``qmp_migrate_finish``).  Any close
  counts: a receiver that died also "acks", and then main fails to connect.
* The main stream is an ordinary precopy stream (``QEVM``, version 3),
  but RAM blocks whose descriptors went over cpr are not in it:
  ``query-migrate`` reports a RAM total of 0 and a 256 MiB guest needs
  about 110 KB.
* Destination.  With a cpr channel in ``-incoming``, QEMU listens on it at
  start-up, before it creates devices or monitors (its QMP connection comes
  only once the state is read, so our handoff and the QMP handshake run
  concurrently), accepts one client, reads the state, and creates each
  memory backend and ROM from the descriptor filed under its name
  (``cpr_find_fd``).  It keeps the cpr socket open until its main
  listener exists: with ``-incoming defer`` that is ``migrate-incoming``
  (``qemu_start_incoming_migration`` ends with ``cpr_state_close``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import anyio
import anyio.abc
import pytest

import fdchannel
from fdchannel import Channel, FdState

from .qemu import (
    FINAL_MIGRATION_STATES,
    MIGRATION_MAGIC,
    MIGRATION_VERSION,
    JsonObject,
    QmpClient,
    accept_monitor,
    migration_header,
    show_log,
    spawn_with_monitor,
)
from .qemu10_root import bind_mounts, is_complete

ROOT_VARIABLE = "FDCHANNEL_QEMU10_ROOT"

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.interop,
    pytest.mark.skipif(
        not os.environ.get(ROOT_VARIABLE),
        reason=f"{ROOT_VARIABLE} is not set: `make interop-qemu10` runs this as root, with QEMU 10",
    ),
]

#: A paused guest whose RAM is a shared memfd, as cpr-transfer requires
#: (``aux-ram-share`` puts the ROMs in memfds too); TCG keeps it off /dev/kvm.
GUEST_ARGS: tuple[str, ...] = (
    "-object",
    "memory-backend-memfd,id=ram0,size=256M,share=on",
    "-machine",
    "pc,aux-ram-share=on,memory-backend=ram0",
    "-m",
    "256",
    "-accel",
    "tcg",
    "-nodefaults",
    "-no-user-config",
    "-nographic",
    "-display",
    "none",
    "-S",
)
RAM_SIZE = 256 * 1024 * 1024

#: What QEMU 10.0 sends for that guest (vectors/qemu-cpr-v1.md): (name, id),
#: newest first.  ROMs are named after their RAM blocks, RAM after its backend.
EXPECTED_ENTRIES = [
    ("/rom@etc/acpi/rsdp", 0),
    ("/rom@etc/table-loader", 0),
    ("/rom@etc/acpi/tables", 0),
    ("pc.rom", 0),
    ("pc.bios", 0),
    ("ram0", 0),
]

#: Seconds a whole test may take; one takes well under a second.
TEST_TIMEOUT = 30
#: Where we write a pattern into guest RAM (inside the 256 MiB), and its size.
PATTERN_ADDR = 0x200000
PATTERN_SIZE = 4096
#: The main stream of a 256 MiB guest whose RAM stays in its memfd is about
#: 110 KB; a stream this large would mean the RAM was copied.
MAX_MAIN_STREAM = 1024 * 1024


# --------------------------------------------------------------------------
# The root, the shared directory, QEMU processes.


@pytest.fixture(scope="module")
def qemu10_root() -> Iterator[Path]:
    """The Debian 13 root, with the host's /proc and /dev bound in while the tests run."""
    root = Path(os.environ[ROOT_VARIABLE]).absolute()
    if not is_complete(root):
        pytest.fail(f"{ROOT_VARIABLE}={root} is not a QEMU 10 root: make interop-qemu10 builds one")
    if os.geteuid() != 0:
        pytest.fail("chroot and mount --bind need root")
    with bind_mounts(root):
        yield root


@dataclass(frozen=True)
class Place:
    """A directory both sides see: ``host`` is our path to it, ``guest`` QEMU's (chrooted)."""

    host: Path
    guest: PurePosixPath

    def channel(self, kind: str, name: str) -> Channel:
        """Our side's unix channel of ``kind`` (main or cpr) on socket ``name``."""
        return unix_channel(kind, str(self.host / name))

    def qapi(self, kind: str, name: str) -> JsonObject:
        """The same channel as QEMU spells and sees it."""
        return unix_channel(kind, str(self.guest / name)).to_qapi()


def unix_channel(kind: str, path: str) -> Channel:
    """A channel on a unix socket, built from its QAPI form."""
    addr = {"transport": "socket", "type": "unix", "path": path}
    return Channel.from_qapi({"channel-type": kind, "addr": addr})


@pytest.fixture
def place(qemu10_root: Path) -> Iterator[Place]:
    """A fresh directory in the root's /tmp, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="fdc-", dir=qemu10_root / "tmp") as d:
        host = Path(d)
        yield Place(host, PurePosixPath("/") / host.relative_to(qemu10_root))


@dataclass
class Qemu10:
    """A QEMU 10 started in the root; its QMP monitor connects to our listener."""

    name: str
    process: anyio.abc.Process
    listener: fdchannel.Listener
    log: Path
    qmp: QmpClient | None = field(default=None)

    async def connect(self, timeout: float = 10) -> QmpClient:
        """Accept QEMU's QMP connection and read its greeting, or say why it never came."""
        try:
            stream = await accept_monitor(self.listener, self.process, self.name, timeout)
        finally:
            await self.listener.aclose()
        self.qmp = QmpClient(stream, timeout=timeout)
        version = await self.qmp.handshake()
        assert version["major"] >= 10, f"QEMU {version} has no cpr-transfer"
        return self.qmp

    async def quit(self) -> None:
        """Ask QEMU to quit and wait until it has exited with status 0."""
        assert self.qmp is not None
        await self.qmp.execute("quit")
        with anyio.fail_after(10):
            await self.process.wait()
        assert self.process.returncode == 0


@asynccontextmanager
async def start_qemu10(root: Path, place: Place, name: str, *args: str) -> AsyncIterator[Qemu10]:
    """Run ``chroot ROOT qemu-system-x86_64 GUEST_ARGS ARGS``; killed and reaped on the way out.

    QMP is not connected yet (``connect``): a destination QEMU connects only
    after it has read its cpr state.  If anything failed, QEMU's output goes
    to stderr, where pytest shows it with the failure.
    """
    log = place.host / f"{name}.log"
    qmp_socket = f"{name}-qmp.sock"
    # Without server=on QEMU is the client: no polling for its socket file.
    command = [
        "chroot",
        str(root),
        "qemu-system-x86_64",
        "-name",
        name,
        *GUEST_ARGS,
        "-qmp",
        f"unix:{place.guest / qmp_socket}",
        *args,
    ]
    process, listener = await spawn_with_monitor(command, place.host / qmp_socket, log)
    vm = Qemu10(name, process, listener, log)
    try:
        yield vm
    except BaseException:
        await show_log(name, command, log)
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await listener.aclose()
            if vm.qmp is not None:
                await vm.qmp.aclose()
            if process.returncode is None:
                # chroot exec'd QEMU, so the pid is QEMU's.
                process.kill()
            await process.aclose()
        assert process.returncode is not None


# --------------------------------------------------------------------------
# Checks.


def check_state(state: FdState) -> int:
    """QEMU's entries as the vector shows them, each a memfd; returns guest RAM's descriptor."""
    assert [(entry.name, entry.id) for entry in state.fds] == EXPECTED_ENTRIES
    for entry in state.fds:
        target = os.readlink(f"/proc/self/fd/{entry.fd}")
        assert target.startswith("/memfd:"), f"{entry.name} is {target}, not a memfd"
    ram = state.get("ram0", 0)
    # The backend's memfd carries the type's name, not the object's id.
    assert os.readlink(f"/proc/self/fd/{ram}") == "/memfd:memory-backend-memfd (deleted)"
    assert os.fstat(ram).st_size == RAM_SIZE
    return ram


async def guest_memory(qmp: QmpClient, place: Place, name: str) -> bytes:
    """The pattern's page of guest RAM, as QEMU's ``pmemsave`` writes it out."""
    await qmp.execute(
        "pmemsave",
        {"val": PATTERN_ADDR, "size": PATTERN_SIZE, "filename": str(place.guest / name)},
    )
    return await anyio.Path(place.host / name).read_bytes()


async def migration_done(qmp: QmpClient) -> JsonObject:
    """Wait for the MIGRATION event of a final state; return ``query-migrate``."""
    await qmp.wait_event("MIGRATION", lambda data: data["status"] in FINAL_MIGRATION_STATES)
    info: JsonObject = await qmp.execute("query-migrate")
    assert info["status"] == "completed", info
    return info


async def start_cpr_transfer(qmp: QmpClient, place: Place) -> None:
    """Make the source migrate in mode cpr-transfer to ``main.sock`` and ``cpr.sock``."""
    await qmp.enable_migration_events()
    await qmp.execute("migrate-set-parameters", {"mode": "cpr-transfer"})
    channels = [place.qapi("main", "main.sock"), place.qapi("cpr", "cpr.sock")]
    # Returns once the state is written and half-closed; main waits for the HUP.
    await qmp.execute("migrate", {"channels": channels})


# --------------------------------------------------------------------------
# QEMU 10 -> fdchannel.Incoming


async def test_qemu10_hands_its_state_to_us(qemu10_root: Path, place: Place) -> None:
    """Our Incoming takes QEMU's memfds, acks by closing, and gets QEMU's main stream."""
    pattern = os.urandom(PATTERN_SIZE)
    with anyio.fail_after(TEST_TIMEOUT):
        async with (
            start_qemu10(qemu10_root, place, "src") as src,
            fdchannel.Incoming(
                [place.channel("main", "main.sock"), place.channel("cpr", "cpr.sock")]
            ) as incoming,
        ):
            qmp = await src.connect()
            assert (await qmp.execute("query-status"))["status"] == "prelaunch"
            await incoming.listen_cpr()  # before migrate: QEMU connects once
            await start_cpr_transfer(qmp, place)
            with await incoming.receive_cpr() as state:
                assert incoming.codec == "qemu"
                ram = check_state(state)
                # The memfd is the running guest's RAM, not a copy of it.
                os.pwrite(ram, pattern, PATTERN_ADDR)
                assert await guest_memory(qmp, place, "src.mem") == pattern
            await incoming.listen_main()  # closes cpr: QEMU's ack
            # The main stream is QEMU's own, not fdchannel's length-prefixed one.
            async with await incoming.accept_main() as main:
                data = bytearray()
                while len(data) <= MAX_MAIN_STREAM:
                    try:
                        data += await main.receive()
                    except anyio.EndOfStream:
                        break
            assert len(data) <= MAX_MAIN_STREAM, "the guest RAM was copied"
            assert migration_header(bytes(data)) == (MIGRATION_MAGIC, MIGRATION_VERSION)
            info = await migration_done(qmp)
            assert info["ram"]["total"] == 0  # every RAM block travelled as a memfd
            assert (await qmp.execute("query-status"))["status"] == "postmigrate"
            await src.quit()


# --------------------------------------------------------------------------
# QEMU 10 -> fdchannel.Incoming, fdchannel.Outgoing(codec="qemu") -> QEMU 10


async def test_we_hand_qemu10_state_to_a_new_qemu10(qemu10_root: Path, place: Place) -> None:
    """A live update carried by fdchannel: the new QEMU runs on the memfds we passed."""
    pattern = os.urandom(PATTERN_SIZE)
    cpr_in = json.dumps(place.qapi("cpr", "dst-cpr.sock"))
    with anyio.fail_after(TEST_TIMEOUT):
        async with (
            start_qemu10(qemu10_root, place, "src") as src,
            # Waits for its state on dst-cpr.sock before anything else.
            start_qemu10(
                qemu10_root, place, "dst", "-incoming", cpr_in, "-incoming", "defer"
            ) as dst,
            fdchannel.Incoming(
                [place.channel("main", "main.sock"), place.channel("cpr", "cpr.sock")]
            ) as incoming,
            fdchannel.Outgoing(
                [place.channel("main", "dst-main.sock"), place.channel("cpr", "dst-cpr.sock")],
                codec="qemu",
            ) as outgoing,
        ):
            src_qmp = await src.connect()
            await incoming.listen_cpr()
            await start_cpr_transfer(src_qmp, place)
            with await incoming.receive_cpr() as state:
                os.pwrite(check_state(state), pattern, PATTERN_ADDR)
                async with anyio.create_task_group() as tg:
                    # QEMU answers QMP only once it has read the state, and
                    # acks the state only once migrate-incoming listens.
                    tg.start_soon(outgoing.start, state)
                    dst_qmp = await dst.connect()
                    assert (await dst_qmp.execute("query-status"))["status"] == "inmigrate"
                    await dst_qmp.enable_migration_events()
                    channels = [place.qapi("main", "dst-main.sock")]
                    await dst_qmp.execute("migrate-incoming", {"channels": channels})
            # Acked: the new QEMU holds its own copies of the descriptors.
            async with await outgoing.finish() as to_dst:
                await incoming.listen_main()  # the old QEMU may go on now
                async with await incoming.accept_main() as from_src:
                    sent = 0
                    while True:
                        try:
                            chunk = await from_src.receive()
                        except anyio.EndOfStream:
                            break
                        await to_dst.send(chunk)
                        sent += len(chunk)
                        assert sent <= MAX_MAIN_STREAM, "the guest RAM was copied"
                await to_dst.send_eof()
                await migration_done(dst_qmp)
                await to_dst.wait_peer_closed()
            await migration_done(src_qmp)
            # Guest RAM the main stream never carried: only the memfd brought it.
            assert await guest_memory(dst_qmp, place, "dst.mem") == pattern
            # The source never ran, so neither does the destination.
            assert (await dst_qmp.execute("query-status"))["status"] == "prelaunch"
            await src.quit()
            await dst.quit()
