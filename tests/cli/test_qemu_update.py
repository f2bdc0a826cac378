"""``fdchannel qemu-update``: the command's contract against real QEMUs.

Exit statuses, the text and ``--json`` reports, the one error line, signals
(they roll back), and a stdout that the new QEMU, which outlives the
command, does not hold.  What an update does with QEMU in each case is
tested by the library's matrix (tests/interop/test_qemu_update.py).

The host's QEMU (Debian 12: 7.2) has no cpr-transfer: a check must say so.
The updates run QEMU 10.0 and 11.1 from the Debian 13 roots named by
``FDCHANNEL_QEMU10_ROOT`` and ``FDCHANNEL_QEMU11_ROOT`` (``make test`` sets
them when run as root), each started with ``-daemonize``: QEMU's parent
exits once the monitor listens, so nothing polls for the socket.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import pytest

from fdchannel.blocking._handoff import drive
from fdchannel.protocol.monitor import connect_monitor
from fdchannel.protocol.qemu_update import UpdateReport

from ..interop.qemu_root import bind_mounts, is_complete
from .helpers import DEADLINE, Child, Done, cli, run

HOST_QEMU = shutil.which("qemu-system-x86_64")
needs_host_qemu = pytest.mark.skipif(
    HOST_QEMU is None, reason="no qemu-system-x86_64 (make test installs it)"
)
#: The keys of every --json report: UpdateReport.as_json().
REPORT_KEYS = set(UpdateReport("failed", "cpr-transfer").as_json())
#: The steps of an update, in order.
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
#: A guest that can be updated: RAM and ROMs in memfds (tests/interop/qemu.py).
GUEST = (
    "-object",
    "memory-backend-memfd,id=ram0,size=256M,share=on",
    "-m",
    "256",
    "-accel",
    "tcg",
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
)
#: The newest machine type both QEMUs know, for updates between them.
CROSS_MACHINE = "pc-i440fx-10.0"


def machine(name: str) -> tuple[str, ...]:
    return ("-machine", f"{name},aux-ram-share=on,memory-backend=ram0")


# --------------------------------------------------------------------------
# The command line alone.

# (args after "qemu-update", words of the one error line)
USAGE_ERRORS = [
    pytest.param([], "required: --qmp", id="no-qmp"),
    pytest.param(["--qmp", "q.sock"], "command line is needed after '--'", id="no-argv"),
    pytest.param(["--qmp", "q.sock", "--"], "command line is needed after '--'", id="empty-argv"),
    pytest.param(["--qmp", "q.sock", "qemu"], "put the new QEMU's command line after '--'",
                 id="misplaced-argv"),
    pytest.param(["--qmp", "q.sock", "--mode", "bogus", "--", "qemu"], "invalid choice",
                 id="unknown-mode"),
    pytest.param(["--qmp", "q.sock", "--mode", "cpr-exec", "--log", "x.log", "--", "qemu"],
                 "--log does not apply to --mode cpr-exec", id="cpr-exec-log"),
    pytest.param(["--qmp", "q.sock", "--timeout", "0", "--", "qemu"], "positive", id="timeout"),
    pytest.param(["--check", "--log", "x.log", "--qmp", "q.sock"], "--log does not apply",
                 id="check-log"),
    pytest.param(["--qmp", "q.sock", "--bogus", "--", "qemu"], "unrecognized arguments",
                 id="unknown-option"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "words"), USAGE_ERRORS)
def test_usage_errors_exit_2(args: list[str], words: str) -> None:
    done = run(cli("qemu-update", *args))
    assert done.returncode == 2, done.stderr
    line = done.error_line()
    assert line.startswith("fdchannel") and ": error: " in line
    assert words in line
    assert done.stdout == ""


@pytest.mark.parametrize("json_output", [True, False], ids=["json", "text"])
def test_unreachable_qemu_fails_with_the_reason(sockdir: Path, json_output: bool) -> None:
    """Nobody behind --qmp: failed, nothing started, one line saying why."""
    flags = ["--json"] if json_output else []
    done = run(cli("qemu-update", *flags, "--qmp", str(sockdir / "nobody.sock"), "--", "true"))
    assert done.returncode == 1
    expected = f"fdchannel: error: failed: cannot reach the old QEMU's QMP socket {sockdir}"
    assert done.error_line().startswith(expected)
    if json_output:
        report = json_report(done)
        assert (report["result"], report["new_pid"], report["steps"]) == ("failed", None, [])
        assert report["reason"] in done.error_line()
    else:
        assert "result       failed" in done.stdout.splitlines()


def json_report(done: Done) -> dict[str, Any]:
    """stdout as exactly one JSON object with the report's keys."""
    report = json.loads(done.stdout)  # one document: anything after it fails to parse
    assert isinstance(report, dict)
    assert set(report) == REPORT_KEYS
    return report


# --------------------------------------------------------------------------
# Real QEMUs, each in a directory of its own; whatever names the directory is
# killed once the test is over.


@dataclass(frozen=True)
class Place:
    """A directory for one QEMU: ``host`` is our path to it, ``inside`` QEMU's."""

    #: How QEMU is run: the host's, or ``chroot ROOT qemu-system-x86_64``.
    qemu: tuple[str, ...]
    host: Path
    inside: Path

    def qmp(self, name: str) -> tuple[str, ...]:
        return ("-qmp", f"unix:{self.inside / name},server=on,wait=off")


#: Makes a fresh Place for a QEMU from a root (None: the host's QEMU).
Places: TypeAlias = Callable[["Version | None"], Place]


@dataclass(frozen=True)
class Version:
    """A QEMU from a root: its label, qemu_root.py flavour and the variable naming it."""

    label: str
    flavour: str
    variable: str

    @property
    def skip(self) -> pytest.MarkDecorator:
        """Skip unless this version's root is named (test_qemu_versions.py's wording)."""
        return pytest.mark.skipif(
            not os.environ.get(self.variable),
            reason=f"{self.variable} is not set: `make test` or `make interop-qemu` sets it "
            f"when run as root, to a cached Debian 13 root holding QEMU {self.label}",
        )

    @property
    def root(self) -> Path:
        return Path(os.environ[self.variable]).absolute()


QEMU10 = Version("10.0", "10", "FDCHANNEL_QEMU10_ROOT")
QEMU11 = Version("11.1", "11", "FDCHANNEL_QEMU11_ROOT")


@pytest.fixture(scope="module")
def roots() -> Iterator[None]:
    """The roots named in the environment, with the host's /proc and /dev bound in."""
    named = [v for v in (QEMU10, QEMU11) if os.environ.get(v.variable)]
    if os.geteuid() != 0:
        pytest.fail("chroot and mount --bind need root")
    for version in named:
        if not is_complete(version.root, version.flavour):
            pytest.fail(f"{version.variable}={version.root} is not a QEMU {version.flavour} root")
    with contextlib.ExitStack() as mounts:
        for version in named:
            mounts.enter_context(bind_mounts(version.root))
        yield


@pytest.fixture
def places(sockdir: Path) -> Iterator[Places]:
    """Fresh directories; the QEMUs (and anything else) naming one are killed afterwards."""
    made: list[Path] = []

    def place(version: Version | None) -> Place:
        if version is None:
            assert HOST_QEMU is not None
            host = Path(tempfile.mkdtemp(prefix="q-", dir=sockdir))
            made.append(host)
            return Place((HOST_QEMU,), host, host)
        host = Path(tempfile.mkdtemp(prefix="fdc-", dir=version.root / "tmp"))
        made.append(host)
        qemu = ("chroot", str(version.root), "qemu-system-x86_64")
        return Place(qemu, host, Path("/") / host.relative_to(version.root))

    try:
        yield place
    finally:
        for host in made:
            kill_naming(host.name)
            shutil.rmtree(host, ignore_errors=True)


def kill_naming(word: str) -> None:
    """SIGKILL every process whose command line holds ``word``; wait until each is gone."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if word.encode() not in (entry / "cmdline").read_bytes():
                continue
            pidfd = os.pidfd_open(int(entry.name))
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                wait_exited(pidfd)
            finally:
                os.close(pidfd)


def wait_exited(pidfd: int, timeout: float = DEADLINE) -> None:
    ready, _, _ = select.select([pidfd], [], [], timeout)
    assert ready, f"the process behind pidfd {pidfd} did not exit in {timeout} s"


def exited(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie too: not everyone's parent reaps)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([pidfd], [], [], 0)
        return bool(ready)
    finally:
        os.close(pidfd)


@dataclass(frozen=True)
class Qemu:
    """A QEMU running a guest, its QMP monitor at ``qmp`` (our path)."""

    pid: int
    qmp: Path


def start_old(place: Place, *args: str) -> Qemu:
    """Start QEMU in ``place`` with ``-qmp unix:PATH,server=on,wait=off``, daemonized: it
    returns once QEMU listens."""
    pidfile = place.inside / "old.pid"
    command = [*place.qemu, *args, *place.qmp("old.sock"), "-daemonize", "-pidfile", str(pidfile)]
    done = run(command, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"{command} failed: {done.stderr}"
    pid = int((place.host / "old.pid").read_text())
    return Qemu(pid, place.host / "old.sock")


def qmp(path: Path, command: str) -> Any:
    """One QMP command on the monitor at ``path``."""
    monitor = drive(connect_monitor(str(path), "the QEMU", DEADLINE))
    try:
        return drive(monitor.execute(command, timeout=DEADLINE))
    finally:
        monitor.stream.close()


# --------------------------------------------------------------------------
# QEMU 7.2, the host's: no cpr-transfer.


@pytest.mark.interop
@needs_host_qemu
@pytest.mark.parametrize(
    ("args", "json_output"),
    [(["--check"], False), (["--check"], True), (["--", "true"], True)],
    ids=["check", "check-json", "update-json"],
)
def test_qemu_7_2_is_not_ready(places: Places, args: list[str], json_output: bool) -> None:
    """A check says not-ready and why (the version); an update fails the same way,
    the new QEMU never started."""
    old = start_old(places(None), "-machine", "pc", "-accel", "tcg", "-m", "64", "-nodefaults")
    flags = ["--json"] if json_output else []
    done = run(cli("qemu-update", *flags, "--qmp", str(old.qmp), *args))
    assert done.returncode == 1, done.stderr
    line = done.error_line()
    problem = "QEMU 7.2"
    result = "not-ready" if "--check" in args else "failed"
    assert line.startswith(f"fdchannel: error: {result}: {problem}")
    assert line.endswith("has no cpr-transfer (QEMU 10.0 and later)")
    if json_output:
        report = json_report(done)
        assert (report["result"], report["old_pid"]) == (result, old.pid)
        assert report["old_version"].startswith("7.2.")
        assert report["new_pid"] is None
        if result == "not-ready":
            (found,) = report["problems"]
            assert found in line
        else:
            assert [step["name"] for step in report["steps"]] == ["connect-old"]
    else:
        lines = done.stdout.splitlines()
        assert lines[0].startswith("old          QEMU 7.2.")
        assert lines[0].endswith(f", pid {old.pid}")
        assert lines[1].startswith(f"problem      {problem}")
        assert lines[2:] == ["result       not-ready"]
    assert qmp(old.qmp, "query-status")["status"] == "running"  # nothing changed


# --------------------------------------------------------------------------
# QEMU 10.0 and 11.1, from the roots.


@pytest.mark.interop
@QEMU10.skip
@pytest.mark.usefixtures("roots")
def test_check_ready_changes_nothing(places: Places) -> None:
    old = start_old(places(QEMU10), *GUEST, *machine("pc"))
    done = run(cli("qemu-update", "--check", "--json", "--qmp", str(old.qmp)))
    assert (done.returncode, done.stderr) == (0, "")
    report = json_report(done)
    assert (report["result"], report["problems"], report["reason"]) == ("ready", [], None)
    assert report["old_version"].startswith("10.0.")
    # The check set mode=cpr-transfer to ask QEMU for blockers, and set it back.
    assert qmp(old.qmp, "query-migrate-parameters")["mode"] == "normal"
    assert qmp(old.qmp, "query-migrate") == {}  # never migrated


@dataclass(frozen=True)
class Route:
    src: Version
    dst: Version

    @property
    def machine(self) -> str:
        return "pc" if self.src == self.dst else CROSS_MACHINE


def route(src: Version, dst: Version, json_output: bool) -> Any:
    label = src.label if src == dst else f"{src.label}-to-{dst.label}"
    return pytest.param(
        Route(src, dst),
        json_output,
        id=f"{label}-{'json' if json_output else 'text'}",
        marks=[src.skip, dst.skip],
    )


@pytest.mark.interop
@pytest.mark.usefixtures("roots")
@pytest.mark.parametrize(
    ("route", "json_output"),
    [route(QEMU10, QEMU10, True), route(QEMU10, QEMU10, False), route(QEMU10, QEMU11, True)],
)
def test_update_returns_while_the_new_qemu_runs(
    places: Places, route: Route, json_output: bool
) -> None:
    """Updated: exit 0, the report, and stdout and stderr end when the command exits
    (``report=$(fdchannel qemu-update --json ...)`` returns) though the new QEMU runs on."""
    old = start_old(places(route.src), *GUEST, *machine("pc"))
    there = places(route.dst)
    new_argv = [*there.qemu, *GUEST, *machine(route.machine), *there.qmp("new.sock")]
    flags = ["--json"] if json_output else []
    log = str(there.host / "new.log")
    update = cli(
        "qemu-update", *flags, "--timeout", str(DEADLINE), "--log", log, "--qmp", str(old.qmp)
    )
    with Child([*update, "--", *new_argv]) as child:
        done = child.finish()  # reads stdout and stderr to their end
    assert (done.returncode, done.stderr) == (0, "")
    assert qmp(there.host / "new.sock", "query-status")["status"] == "running"
    assert exited(old.pid)
    if json_output:
        report = json_report(done)
        assert (report["result"], report["reason"], report["old_pid"]) == ("updated", None, old.pid)
        assert [step["name"] for step in report["steps"]] == STEPS
        assert report["new_version"].startswith(f"{route.dst.label}.")
        assert 0 < report["downtime_ms"] < report["total_ms"]
        assert not exited(report["new_pid"])
    else:
        lines = done.stdout.splitlines()
        assert [line.split()[:2] for line in lines[: len(STEPS)]] == [["step", s] for s in STEPS]
        assert all(line.endswith(" ms") for line in lines[: len(STEPS)])
        result, downtime, total, log_line = lines[len(STEPS) :]
        assert result.startswith("result       updated: QEMU 10.0.")
        assert f"(pid {old.pid}) -> QEMU 10.0." in result
        assert downtime.startswith("downtime     ") and downtime.endswith(" ms")
        assert total.startswith("total        ") and total.endswith(" ms")
        assert log_line == f"log          {log} (the new QEMU's output)"


@pytest.mark.interop
@QEMU10.skip
@pytest.mark.usefixtures("roots")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_rolls_back(places: Places, signum: signal.Signals) -> None:
    """SIGINT and SIGTERM alike: the new QEMU is killed, the old one runs as before, the
    report says "interrupted", exit status 1."""
    here = places(QEMU10)
    old = start_old(here, *GUEST, *machine("pc"))
    # A new QEMU that hangs at start-up, after saying it started.
    started = here.host / "started"
    os.mkfifo(started)
    hanging = ["sh", "-c", f"echo started > {started}; exec sleep {DEADLINE * 3}"]
    log = str(here.host / "new.log")
    update = cli("qemu-update", "--json", "--log", log, "--qmp", str(old.qmp), "--", *hanging)
    with Child(update) as child:
        reader = os.open(started, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            assert select.select([reader], [], [], DEADLINE)[0], "the new QEMU never started"
        finally:
            os.close(reader)
        done = child.signal(signum)
    assert done.returncode == 1, done.stderr
    name = signal.Signals(signum).name
    assert done.error_line() == f"fdchannel: error: failed: interrupted ({name})"
    report = json_report(done)
    assert (report["result"], report["reason"]) == ("failed", f"interrupted ({name})")
    # The interruption came after start-up (it may not have been counted yet).
    assert [step["name"] for step in report["steps"]] in (STEPS[:2], STEPS[:3])
    assert exited(report["new_pid"])
    # The old QEMU: the guest runs, the migration mode is what it was.
    assert qmp(old.qmp, "query-status")["status"] == "running"
    assert qmp(old.qmp, "query-migrate-parameters")["mode"] == "normal"
