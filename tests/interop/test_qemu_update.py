"""``fdchannel.update_qemu`` and ``fdchannel.blocking.update_qemu`` against real QEMUs.

A running guest (TCG, its RAM and ROMs in shared memfds) is moved from an
old QEMU to a new one by cpr-transfer, QEMU 10.0 and 11.1 from the Debian 13
roots (``FDCHANNEL_QEMU10_ROOT``, ``FDCHANNEL_QEMU11_ROOT``; see
test_qemu_versions.py), on 10.0 -> 10.0, 11.1 -> 11.1 and 10.0 -> 11.1.
The old QEMU's memfds, written into before the update, must be the very
files (device and inode) the new QEMU runs the guest on.  Then the ways an
update fails, each of which must leave the guest running on the old QEMU,
and ``check_qemu``.

fdchannel's side is the async API, except in the rows named "blocking":
there ``fdchannel.blocking`` runs in a worker thread; the library's own
timeout bounds it.

How a new QEMU is made to fail at a chosen point, without guessing at
timing: QEMU reads its cpr state before it creates any character device
(system/vl.c), then opens the devices in command-line order.  A
``-chardev file`` on a FIFO blocks QEMU in open(2) until a reader comes
(/proc/PID/wchan: ``wait_for_partner``), with the guest's memfds already in
/proc/PID/fd, its cpr connection open, no monitor greeting sent and no main
listener.  Nobody opens it: QEMU hangs there.  A ``-chardev socket`` client
on our listener just before it tells us when QEMU got that far, and who it
is (SO_PEERCRED): killed then, QEMU has read the state and nothing more.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import select
import signal
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeAlias

import anyio
import anyio.to_thread
import pytest

import fdchannel
from fdchannel import UpdateReport, blocking
from fdchannel.transports import FdAttribute

from . import test_qemu_versions
from .matrix import row
from .qemu import (
    CPR_GUEST_ARGS,
    DEFAULT_TIMEOUT,
    PATTERN_ADDR,
    PATTERN_SIZE,
    RAM_MEMFD,
    ChrootQemu,
    Place,
    QmpClient,
    cpr_machine,
    guest_memory,
    show_log,
    spawn_with_monitor,
    start_chroot_qemu,
    write_guest_ram,
)
from .test_qemu_versions import (
    CROSS_MACHINE,
    QEMU10,
    QEMU11,
    VERSIONS,
    Places,
    QemuVersion,
    connect,
)

pytestmark = [pytest.mark.anyio, pytest.mark.interop]

# test_qemu_versions.py's fixtures, for pytest to find here: the roots with
# /proc and /dev bound in, and fresh directories in their /tmp.
roots = test_qemu_versions.roots
places = test_qemu_versions.places

#: Seconds a whole test may take; an update takes about 0.1 s, 0.3 s across versions.
TEST_TIMEOUT = 30
#: The update's own bound when it should succeed.
UPDATE_TIMEOUT = 20.0
#: The bound of an update whose new QEMU hangs: what it waits before it rolls back.
#: The hang comes 0.1-0.2 s into the update (QEMU's start-up, mostly).
HANG_TIMEOUT = 1.0
#: The steps of an update that succeeded, in order.
STEPS = [
    "connect-old",
    "check-old",
    "start-new",
    "new-listens",
    "migrate",
    "cpr-state-read",
    "switch",
    "old-exited",
]
#: A running guest (no -S) that can be updated: RAM and ROMs in memfds.
RUNNING_GUEST = tuple(arg for arg in CPR_GUEST_ARGS if arg != "-S")
#: A running guest whose RAM is QEMU's own (plain -m): no cpr-transfer.
PRIVATE_RAM_GUEST = (
    "-m",
    "256",
    "-accel",
    "tcg",
    "-nodefaults",
    "-no-user-config",
    "-nographic",
    "-display",
    "none",
    "-machine",
    "pc",
)


def children() -> list[int]:
    """This process's children, zombies too, from each process's /proc/PID/stat
    (/proc/PID/task/TID/children needs CONFIG_PROC_CHILDREN, which not every kernel has)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:  # gone while we look
                continue
            # The parent is the second field after the name, which may hold ")".
            if int(stat.rpartition(")")[2].split()[1]) == os.getpid():
                found.append(int(entry))
    return found


@pytest.fixture(autouse=True)
def no_process_left() -> Iterator[None]:
    """No process a test started outlives it: old QEMUs reaped, new ones killed and reaped."""
    before = set(children())
    yield
    assert set(children()) - before == set()


# --------------------------------------------------------------------------
# QEMUs and their memory.


def monitor_socket(place: Place, name: str) -> Path:
    """Our path to the QMP server socket of QEMU ``name`` (``-qmp ...,server=on``)."""
    return place.host / f"{name}.qmp"


def serve_qmp(place: Place, name: str) -> tuple[str, ...]:
    """``-qmp`` for a QMP server socket that update_qemu and check_qemu connect to."""
    return ("-qmp", f"unix:{place.guest / f'{name}.qmp'},server=on,wait=off")


def new_qemu(place: Place, name: str, *args: str, machine: str = "pc") -> list[str]:
    """A NEW-QEMU-ARGV: QEMU in ``place``'s root, a running guest, a QMP server of its own."""
    return [
        "chroot",
        str(place.root),
        "qemu-system-x86_64",
        "-name",
        name,
        *RUNNING_GUEST,
        *cpr_machine(machine),
        *serve_qmp(place, name),
        *args,
    ]


@asynccontextmanager
async def running_qemu(
    place: Place, version: QemuVersion, name: str = "old", machine: str = "pc"
) -> AsyncIterator[ChrootQemu]:
    """A QEMU running its guest, with our QMP connection and a QMP server socket.

    Started paused, as start_chroot_qemu does, and continued: QEMU answers
    only once its start-up is over, so its server socket listens by then.
    """
    async with start_chroot_qemu(place, name, *serve_qmp(place, name), machine=machine) as vm:
        await connect(vm, version)
        await vm.qmp.execute("cont")
        yield vm


@asynccontextmanager
async def private_ram_qemu(
    place: Place, version: QemuVersion, name: str = "private"
) -> AsyncIterator[ChrootQemu]:
    """A running QEMU whose guest RAM is not a shareable memory backend."""
    qmp = place.host / f"{name}-qmp.sock"
    command = [
        "chroot",
        str(place.root),
        "qemu-system-x86_64",
        "-name",
        name,
        *PRIVATE_RAM_GUEST,
        "-S",
        "-qmp",
        f"unix:{place.guest / qmp.name}",
        *serve_qmp(place, name),
    ]
    log = place.host / f"{name}.log"
    process, listener = await spawn_with_monitor(command, qmp, log)
    vm = ChrootQemu(name, process, listener, log)
    try:
        await connect(vm, version)
        await vm.qmp.execute("cont")
        yield vm
    except BaseException:
        await show_log(name, command, log)
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await listener.aclose()
            if vm.qmp_client is not None:
                await vm.qmp_client.aclose()
            # chroot exec'd QEMU: the group is its; anyio reaps it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.aclose()


@asynccontextmanager
async def qmp_client(path: Path) -> AsyncIterator[QmpClient]:
    """A QMP connection to the server socket at ``path``, past the greeting."""
    client = QmpClient(await fdchannel.connect(f"unix:{path}"))
    try:
        await client.handshake()
        yield client
    finally:
        await client.aclose()


async def kill_process(pid: int) -> None:
    """SIGKILL the process group ``pid`` leads and wait (bounded) until ``pid`` is gone.

    For the new QEMUs update_qemu started and left running: our children,
    that no Process object of ours waits for.  Reaped here, unless the
    subprocess module did it first (it reaps the dropped Popen objects of
    children it finds exited).
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        await anyio.to_thread.run_sync(reap, pid, pidfd)
    finally:
        os.close(pidfd)


def reap(pid: int, pidfd: int) -> None:
    """Wait (bounded) until ``pid`` has exited, and reap it if nobody did."""
    # A pidfd is readable once its process has exited.
    ready, _, _ = select.select([pidfd], [], [], DEFAULT_TIMEOUT)
    assert ready, f"pid {pid} outlived SIGKILL by {DEFAULT_TIMEOUT:g} s"
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


@asynccontextmanager
async def killed_afterwards() -> AsyncIterator[list[int]]:
    """A list to put the pids of new QEMUs in: each is killed on the way out."""
    pids: list[int] = []
    try:
        yield pids
    finally:
        with anyio.CancelScope(shield=True):
            for pid in pids:
                await kill_process(pid)


#: The memfds a process holds: (name, st_dev, st_ino) of each, sorted.
Memfds: TypeAlias = list[tuple[str, int, int]]


def memfds(pid: int) -> Memfds:
    """The memfds process ``pid`` holds.

    stat(2) on /proc/PID/fd/N follows the link to the file itself: two
    processes hold the same memory exactly when these are equal.
    """
    found = []
    for link in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # closed while we look
            target = os.readlink(link)
            if target.startswith("/memfd:"):
                stat = os.stat(link)
                found.append((target, stat.st_dev, stat.st_ino))
    return sorted(found)


def read_guest_ram(pid: int, size: int = PATTERN_SIZE, offset: int = PATTERN_ADDR) -> bytes:
    """Read a running QEMU's RAM memfd, reached through /proc/PID/fd (write_guest_ram's twin)."""
    for link in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):
            if os.readlink(link) == RAM_MEMFD:
                ram = os.open(link, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    return os.pread(ram, size, offset)
                finally:
                    os.close(ram)
    raise AssertionError(f"QEMU pid {pid} holds no {RAM_MEMFD}")


async def migration_mode(qmp: QmpClient) -> str:
    parameters = await qmp.execute("query-migrate-parameters")
    return str(parameters["mode"])


# --------------------------------------------------------------------------
# Either API, awaited: one test body serves both.


async def async_update(
    qmp: str,
    command: Sequence[str],
    *,
    timeout: float,
    log: str | None = None,
    mode: str = "cpr-transfer",
) -> UpdateReport:
    return await fdchannel.update_qemu(qmp, command, timeout=timeout, log=log, mode=mode)


async def blocking_update(
    qmp: str,
    command: Sequence[str],
    *,
    timeout: float,
    log: str | None = None,
    mode: str = "cpr-transfer",
) -> UpdateReport:
    call = functools.partial(
        blocking.update_qemu, qmp, command, timeout=timeout, log=log, mode=mode
    )
    return await anyio.to_thread.run_sync(call)


async def async_check(qmp: str, mode: str = "cpr-transfer") -> UpdateReport:
    return await fdchannel.check_qemu(qmp, timeout=DEFAULT_TIMEOUT, mode=mode)


async def blocking_check(qmp: str, mode: str = "cpr-transfer") -> UpdateReport:
    call = functools.partial(blocking.check_qemu, qmp, timeout=DEFAULT_TIMEOUT, mode=mode)
    return await anyio.to_thread.run_sync(call)


class Update(Protocol):
    """update_qemu of either API, awaited."""

    def __call__(
        self,
        qmp: str,
        command: Sequence[str],
        *,
        timeout: float,
        log: str | None = None,
        mode: str = "cpr-transfer",
    ) -> Awaitable[UpdateReport]: ...


class Check(Protocol):
    """check_qemu of either API, awaited."""

    def __call__(self, qmp: str, mode: str = "cpr-transfer") -> Awaitable[UpdateReport]: ...


@dataclass(frozen=True)
class Api:
    """fdchannel's async API or its blocking one, as a test awaits it."""

    #: What the matrix's rows call it: nothing, or "blocking ".
    prefix: str
    update: Update
    check: Check


ASYNC = Api("", async_update, async_check)
BLOCKING = Api("blocking ", blocking_update, blocking_check)


# --------------------------------------------------------------------------
# The update, on each route.


@dataclass(frozen=True)
class Route:
    """An update from QEMU ``src`` to QEMU ``dst``."""

    src: QemuVersion
    dst: QemuVersion

    @property
    def matrix_column(self) -> str:
        same = self.src == self.dst
        return self.src.label if same else f"{self.src.label} → {self.dst.label}"

    @property
    def machine(self) -> str:
        """Across versions, the new QEMU must be told the old one's machine type."""
        return "pc" if self.src == self.dst else CROSS_MACHINE


ROUTES = (Route(QEMU10, QEMU10), Route(QEMU11, QEMU11), Route(QEMU10, QEMU11))


def route_params() -> list[object]:
    return [
        pytest.param(r, id=f"{r.src.label}-to-{r.dst.label}", marks=[r.src.skip, r.dst.skip])
        for r in ROUTES
    ]


UpdateTest = Callable[[Route, Places, Callable[[str, object], None]], Awaitable[None]]


def updates(api: Api) -> UpdateTest:
    """The test of row "update_qemu" with ``api``."""

    @row(f"{api.prefix}update_qemu")
    @pytest.mark.parametrize("route", route_params())
    async def test(
        route: Route, places: Places, record_property: Callable[[str, object], None]
    ) -> None:
        """The guest runs on in the new QEMU, on the old QEMU's memory: the same files."""
        here, there = places(route.src), places(route.dst)
        pattern = os.urandom(PATTERN_SIZE)
        with anyio.fail_after(TEST_TIMEOUT):
            async with (
                running_qemu(here, route.src, machine=route.machine) as old,
                killed_afterwards() as started,
            ):
                ready = await api.check(str(monitor_socket(here, "old")))
                assert (ready.result, ready.reason) == ("ready", None)
                write_guest_ram(old.process.pid, pattern)
                memory = memfds(old.process.pid)
                assert RAM_MEMFD in [name for name, _, _ in memory]
                report = await api.update(
                    str(monitor_socket(here, "old")),
                    new_qemu(there, "new", machine=route.machine),
                    timeout=UPDATE_TIMEOUT,
                    log=str(there.host / "new.log"),
                )
                if report.new_pid is not None:
                    started.append(report.new_pid)
                assert (report.result, report.reason) == ("updated", None)
                assert report.ok
                assert isinstance(report.downtime_ms, float)
                assert report.downtime_ms > 0
                record_property("downtime_ms", report.downtime_ms)
                assert [name for name, _ in report.steps] == STEPS
                assert report.old_pid == old.process.pid
                assert str(report.old_version).startswith(f"{route.src.label}.")
                assert str(report.new_version).startswith(f"{route.dst.label}.")
                assert report.new_pid is not None
                assert await old.exited() == 0  # it quit
                # The new QEMU holds the old one's memfds, not copies: RAM and each ROM.
                assert memfds(report.new_pid) == memory
                assert read_guest_ram(report.new_pid) == pattern
                async with qmp_client(monitor_socket(there, "new")) as new:
                    assert (await new.execute("query-status"))["status"] == "running"
                    assert await guest_memory(new, there, "new.mem") == pattern

    return test


test_update_qemu = updates(ASYNC)
test_blocking_update_qemu = updates(BLOCKING)


@pytest.mark.parametrize("version", [pytest.param(QEMU10, id=QEMU10.label, marks=QEMU10.skip)])
async def test_update_qemu_warns_nothing(version: QemuVersion, places: Places) -> None:
    """A successful update leaves nothing to warn about in the caller's process."""
    place = places(version)
    with anyio.fail_after(TEST_TIMEOUT):
        async with running_qemu(place, version), killed_afterwards() as started:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                report = await async_update(
                    str(monitor_socket(place, "old")),
                    new_qemu(place, "new"),
                    timeout=UPDATE_TIMEOUT,
                    log=str(place.host / "new.log"),
                )
                if report.new_pid is not None:
                    started.append(report.new_pid)
                gc.collect()
            assert report.result == "updated", report.reason
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


# --------------------------------------------------------------------------
# The ways an update fails: the guest stays on the old QEMU.

#: The FIFO a new QEMU opens for writing, and blocks on (module docstring).
FIFO = "gate.fifo"
#: Our listener a new QEMU connects to just before.
GATE = "gate.sock"


def hang_after_cpr_state(place: Place) -> tuple[str, ...]:
    """Character devices that stop a new QEMU right after it read the cpr state."""
    return ("-chardev", f"file,id=fdc-gate,path={place.guest / FIFO}")


def report_then_hang(place: Place) -> tuple[str, ...]:
    """As hang_after_cpr_state, but QEMU connects to our ``GATE`` first."""
    return (
        "-chardev",
        f"socket,id=fdc-report,path={place.guest / GATE}",
        *hang_after_cpr_state(place),
    )


@dataclass(frozen=True)
class Failure:
    """A new QEMU that does not take over, and what the update must say."""

    #: The end of the matrix row's name, and the test's id.
    name: str
    #: The NEW-QEMU-ARGV.
    command: Callable[[Place], list[str]]
    #: "failed": the new QEMU never took the cpr state and the guest never
    #: stopped; "rolled-back": the old QEMU's guest had to be continued.
    result: str
    #: What the reason must say.
    reason: tuple[str, ...]
    timeout: float = UPDATE_TIMEOUT
    #: Killed with SIGKILL once it reports at our GATE.
    killed: bool = False

    @property
    def matrix_row(self) -> str:
        return self.name

    @property
    def id(self) -> str:
        return self.name.split(" (")[0].replace(" ", "-")


FAILURES = (
    Failure(
        "bad option",
        lambda place: new_qemu(place, "new", "-no-such-option"),
        "failed",
        (
            "the new QEMU exited before it listened for the cpr state",
            "exited with status 1",
            "-no-such-option: invalid option",
        ),
    ),
    Failure(
        "no such program",
        lambda place: [str(place.host / "no-such-qemu"), "-name", "new"],
        "failed",
        ("cannot start the new QEMU", "No such file or directory"),
    ),
    Failure(
        "killed after the cpr state",
        lambda place: new_qemu(place, "new", *report_then_hang(place)),
        "failed",
        (
            "the new QEMU did not take the cpr state",
            "closed its monitor",
            f"exited with status -{signal.SIGKILL:d}",
        ),
        killed=True,
    ),
    Failure(
        "hangs after the cpr state",
        lambda place: new_qemu(place, "new", *hang_after_cpr_state(place)),
        "failed",
        ("the new QEMU did not take the cpr state", "did not answer within", "greeting"),
        timeout=HANG_TIMEOUT,
    ),
    Failure(
        # The guest stops on the old QEMU and, with -S, never runs on the new one.
        "never resumes (-S)",
        lambda place: new_qemu(place, "new", "-S"),
        "rolled-back",
        ("the new QEMU did not answer within", "RESUME"),
        timeout=HANG_TIMEOUT,
    ),
)


def failure_params() -> list[object]:
    return [pytest.param(f, id=f.id) for f in FAILURES]


def version_params() -> list[object]:
    return [pytest.param(v, id=v.label, marks=v.skip) for v in VERSIONS]


async def attempt(api: Api, place: Place, failure: Failure, memory: Memfds) -> UpdateReport:
    """Run the update ``failure`` describes, killing the new QEMU at the gate if it says so.

    ``memory``: the old QEMU's memfds, which a new QEMU at the gate must hold.
    """
    reports: list[UpdateReport] = []
    killed: list[int] = []
    waiting = anyio.CancelScope()
    async with await fdchannel.listen(place.uri(GATE)) as gate, anyio.create_task_group() as tg:

        async def update() -> None:
            report = await api.update(
                str(monitor_socket(place, "old")),
                failure.command(place),
                timeout=failure.timeout,
                log=str(place.host / "new.log"),
            )
            reports.append(report)
            waiting.cancel()

        tg.start_soon(update)
        if failure.killed:
            with waiting:
                async with await gate.accept() as reporting:
                    pid = reporting.extra(FdAttribute.peer_credentials).pid
                    # It holds the guest's memory: it has read the cpr state.
                    assert memfds(pid) == memory
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
    (report,) = reports
    if failure.killed:
        assert killed == [report.new_pid], f"not killed at the gate: {report}"
    return report


def rollbacks(api: Api) -> Callable[..., Awaitable[None]]:
    """The tests of rows "update_qemu rollback: ..." with ``api``."""

    @row(f"{api.prefix}update_qemu rollback")
    @pytest.mark.parametrize("failure", failure_params())
    @pytest.mark.parametrize("version", version_params())
    async def test(version: QemuVersion, failure: Failure, places: Places) -> None:
        """The old QEMU runs the guest on as before, and can still be updated."""
        place = places(version)
        os.mkfifo(place.host / FIFO)  # used by some failures only
        pattern = os.urandom(PATTERN_SIZE)
        with anyio.fail_after(TEST_TIMEOUT):
            async with running_qemu(place, version) as old, killed_afterwards() as started:
                write_guest_ram(old.process.pid, pattern)
                memory = memfds(old.process.pid)
                report = await attempt(api, place, failure, memory)
                assert report.result == failure.result, report
                for words in failure.reason:
                    assert words in str(report.reason), report
                assert report.old_pid == old.process.pid
                assert report.downtime_ms is None
                # Nothing of the new QEMU is left.
                if report.new_pid is not None:
                    with pytest.raises(ProcessLookupError):
                        os.kill(report.new_pid, 0)
                # The same process runs the guest on the same memory, mode as before.
                assert old.process.returncode is None
                assert (await old.qmp.execute("query-status"))["status"] == "running"
                assert memfds(old.process.pid) == memory
                assert read_guest_ram(old.process.pid) == pattern
                assert await migration_mode(old.qmp) == "normal"
                # And the next update, with a good command line, succeeds.
                again = await api.update(
                    str(monitor_socket(place, "old")),
                    new_qemu(place, "again"),
                    timeout=UPDATE_TIMEOUT,
                    log=str(place.host / "again.log"),
                )
                if again.new_pid is not None:
                    started.append(again.new_pid)
                assert (again.result, again.reason) == ("updated", None)
                assert again.new_pid is not None
                assert await old.exited() == 0
                assert memfds(again.new_pid) == memory
                assert read_guest_ram(again.new_pid) == pattern

    return test


test_update_qemu_rolls_back = rollbacks(ASYNC)
test_blocking_update_qemu_rolls_back = rollbacks(BLOCKING)


# --------------------------------------------------------------------------
# check_qemu


def checks(api: Api) -> Callable[..., Awaitable[None]]:
    """The test of row "check_qemu" with ``api``."""

    @row(f"{api.prefix}check_qemu")
    @pytest.mark.parametrize("version", version_params())
    async def test(version: QemuVersion, places: Places) -> None:
        """Ready with shared RAM; not ready, and why, with QEMU's own RAM; an update
        refuses that QEMU for the same reasons before it starts anything; nothing changed."""
        place = places(version)
        with anyio.fail_after(TEST_TIMEOUT):
            async with (
                running_qemu(place, version) as good,
                private_ram_qemu(place, version) as bad,
            ):
                ready = await api.check(str(monitor_socket(place, "old")))
                assert (ready.result, ready.reason, ready.problems) == ("ready", None, [])
                assert ready.old_pid == good.process.pid
                assert str(ready.old_version).startswith(f"{version.label}.")
                refused = await api.check(str(monitor_socket(place, "private")))
                assert refused.result == "not-ready"
                assert not refused.ok
                assert refused.old_pid == bad.process.pid
                assert refused.reason == "; ".join(refused.problems)
                # fdchannel's words first, then each RAM block QEMU itself refuses.
                assert "pc.ram not shared: give them share=on" in refused.reason
                assert "-machine aux-ram-share=on" in refused.reason
                assert "Memory region pc.ram is not compatible with CPR" in refused.reason
                update = await api.update(
                    str(monitor_socket(place, "private")),
                    new_qemu(place, "new"),
                    timeout=UPDATE_TIMEOUT,
                    log=str(place.host / "new.log"),
                )
                assert (update.result, update.reason) == ("failed", refused.reason)
                assert update.new_pid is None
                assert [name for name, _ in update.steps] == ["connect-old"]
                for vm in (good, bad):
                    assert (await vm.qmp.execute("query-status"))["status"] == "running"
                    assert await migration_mode(vm.qmp) == "normal"

    return test


test_check_qemu = checks(ASYNC)
test_blocking_check_qemu = checks(BLOCKING)


# --------------------------------------------------------------------------
# cpr-exec (QEMU 10.2 and later: 11.1 here): the old QEMU execs the new one.


def exec_command(place: Place, name: str, program: str = "qemu-system-x86_64") -> list[str]:
    """A NEW-QEMU-ARGV for cpr-exec: what the old QEMU execs, in its own root."""
    return [program, "-name", name, *RUNNING_GUEST, *cpr_machine(), *serve_qmp(place, name)]


def exec_updates(api: Api) -> Callable[..., Awaitable[None]]:
    """The test of row "update_qemu cpr-exec" with ``api``."""

    @row(f"{api.prefix}update_qemu cpr-exec")
    @pytest.mark.parametrize("version", [pytest.param(QEMU11, id=QEMU11.label, marks=QEMU11.skip)])
    async def test(
        version: QemuVersion, places: Places, record_property: Callable[[str, object], None]
    ) -> None:
        """The same process runs the guest on: the same pid, the same memfds, the pattern."""
        place = places(version)
        pattern = os.urandom(PATTERN_SIZE)
        with anyio.fail_after(TEST_TIMEOUT):
            async with running_qemu(place, version) as old:
                pid = old.process.pid
                ready = await api.check(str(monitor_socket(place, "old")), mode="cpr-exec")
                assert (ready.result, ready.reason) == ("ready", None)
                write_guest_ram(pid, pattern)
                memory = memfds(pid)
                report = await api.update(
                    str(monitor_socket(place, "old")),
                    exec_command(place, "new"),
                    timeout=UPDATE_TIMEOUT,
                    mode="cpr-exec",
                )
                assert (report.result, report.reason, report.mode) == ("updated", None, "cpr-exec")
                assert report.old_pid == report.new_pid == pid
                assert isinstance(report.downtime_ms, float) and report.downtime_ms > 0
                record_property("downtime_ms", report.downtime_ms)
                assert [name for name, _ in report.steps] == EXEC_STEPS
                assert memfds(pid) == memory  # never copied: the very same files
                assert read_guest_ram(pid) == pattern
                async with qmp_client(monitor_socket(place, "new")) as new:
                    assert (await new.execute("query-status"))["status"] == "running"
                    assert await guest_memory(new, place, "new.mem") == pattern
                # No state file is left in QEMU's root.
                assert not list((place.root / "tmp").glob("fdchannel-*.vmstate"))

    return test


#: The steps of a cpr-exec update, in order.
EXEC_STEPS = ["connect-old", "check-old", "migrate", "exec", "new-listens", "switch"]

test_update_qemu_cpr_exec = exec_updates(ASYNC)
test_blocking_update_qemu_cpr_exec = exec_updates(BLOCKING)


def exec_refusals(api: Api) -> Callable[..., Awaitable[None]]:
    """The test of row "update_qemu cpr-exec rollback: no such program" with ``api``."""

    @row(f"{api.prefix}update_qemu cpr-exec rollback: no such program")
    @pytest.mark.parametrize("version", [pytest.param(QEMU11, id=QEMU11.label, marks=QEMU11.skip)])
    async def test(version: QemuVersion, places: Places) -> None:
        """Checked before the exec, which would leave no QEMU: the old one runs on."""
        place = places(version)
        with anyio.fail_after(TEST_TIMEOUT):
            async with running_qemu(place, version) as old:
                report = await api.update(
                    str(monitor_socket(place, "old")),
                    exec_command(place, "new", program="no-such-qemu"),
                    timeout=UPDATE_TIMEOUT,
                    mode="cpr-exec",
                )
                assert report.result == "failed"
                assert "would not find no-such-qemu" in str(report.reason)
                assert (await old.qmp.execute("query-status"))["status"] == "running"
                assert await migration_mode(old.qmp) == "normal"
                assert old.process.returncode is None

    return test


test_update_qemu_cpr_exec_refused = exec_refusals(ASYNC)
test_blocking_update_qemu_cpr_exec_refused = exec_refusals(BLOCKING)
