"""A QEMU live update by cpr-transfer: ``fdchannel.blocking.update_qemu`` next to QMP by hand.

The guest: 256 MiB of RAM in a shared memfd, ROMs too (``aux-ram-share``),
TCG, running.  QEMU 10.0 runs with ``chroot`` from the Debian 13 root that
``FDCHANNEL_QEMU10_ROOT`` names (``tests/interop/qemu_root.py``; as root,
``python -m tests.interop.qemu_cache run -- python -m bench qemu-update``
builds or reuses it), with the host's /proc and /dev bound in while the
figure runs; 10.0 -> 11.1 joins when ``FDCHANNEL_QEMU11_ROOT`` names the
other root (both QEMUs then run the machine type ``pc-i440fx-10.0``).

Each round moves one freshly started guest each way, in turns:

* by hand: the least a program must do over raw QMP sockets.  On the old
  QEMU's monitor: ``migrate-set-capabilities`` events, ``migrate-set-parameters``
  ``mode=cpr-transfer``; the new QEMU started with ``-incoming`` main and cpr
  JSON channels on abstract unix names and its monitor on an inherited
  socket; wait until it listens on the cpr name (/proc/net/unix: QEMU
  connects it once, without retrying); ``migrate`` with both channels; the
  new QEMU's greeting (it greets once it has read the cpr state),
  ``qmp_capabilities``; STOP on the old QEMU, RESUME on the new; ``quit`` the
  old QEMU and see it exit (pidfd).
* fdchannel: ``fdchannel.blocking.update_qemu`` with the old QEMU's QMP
  socket and the new QEMU's command line (which also checks the old QEMU
  first, and waits for its migration to complete before ``quit``).

Per row: the downtime (STOP -> RESUME by QEMU's own event timestamps); the
total, from connecting to the old QEMU's QMP socket to seeing it exit, on
this process's clock; the new QEMU's start-up; and total minus start-up:
what the update costs beyond starting a QEMU.  The start-up has two parts
(steps named as update_qemu's report names them): launched until it
listens on its cpr channel (``start-new``, ``new-listens``), and, once
``migrate`` has sent the cpr state, until its monitor greets
(``cpr-state-read``): QEMU creates its devices and monitors only after it
has read the state, 35-50 ms here, which would otherwise count as the
update's own cost, by hand too.  The guest runs meanwhile.  The issue's
targets: fdchannel's downtime at most the one by hand, and its total minus
start-up at most ``OVERHEAD_MS``.  After each update the guest must run on
the new QEMU (``query-status`` on a monitor of its own); then both QEMUs
are killed.  One round per route comes first, not counted (WARMUP).

``python -m bench qemu-update [--qemu-update-rounds N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._report import Figure, Row

__all__ = [
    "BY_HAND",
    "FDCHANNEL",
    "HELP",
    "MEASURES",
    "NAME",
    "OVERHEAD_MS",
    "STARTUP_STEPS",
    "Monitor",
    "ResumeMissed",
    "Route",
    "Sample",
    "add_arguments",
    "listening",
    "resumed",
    "routes",
    "run",
    "skip_reason",
    "step_lines",
    "verdicts",
]

NAME = "qemu-update"
HELP = "a live QEMU update by cpr-transfer: fdchannel.blocking.update_qemu next to QMP by hand"

#: The issue's bound on what fdchannel's update takes beyond starting the new QEMU.
OVERHEAD_MS = 50.0
#: The variable naming each QEMU's root, by the flavour qemu_root.py builds.
ROOT_VARIABLES = {"10": "FDCHANNEL_QEMU10_ROOT", "11": "FDCHANNEL_QEMU11_ROOT"}
LABELS = {"10": "10.0", "11": "11.1"}
#: The longest any one update, or any wait around it, may take (one takes 0.1-0.2 s).
TIMEOUT = 10.0
#: Rounds not counted, per route: they bring QEMU and its firmware into the page cache.
WARMUP = 1
#: How often the by-hand update looks for the new QEMU's cpr listener.
LOOK_EVERY = 0.001
#: The guest, but for ``-machine``: RAM in a memfd QEMU can hand over.
GUEST = (
    "-object",
    "memory-backend-memfd,id=ram0,size=256M,share=on",
    "-m",
    "256",
    "-accel",
    "tcg",
    "-nodefaults",
    "-no-user-config",
    "-nographic",
    "-display",
    "none",
)
BY_HAND = "by hand (raw QMP)"
FDCHANNEL = "fdchannel.blocking.update_qemu"
#: (label, Sample field) of each measure, in the table's order.
MEASURES = (
    ("downtime", "downtime_ms"),
    ("total", "total_ms"),
    ("new QEMU start-up", "startup_ms"),
    ("total - start-up", "beyond_startup_ms"),
)
#: /proc/net/unix's flag of a listening socket (__SO_ACCEPTCON).
ACCEPTING = 0x10000


@dataclass(frozen=True)
class Route:
    """A QEMU version to update from and one to update to."""

    old: str
    new: str

    @property
    def label(self) -> str:
        return f"{LABELS[self.old]} -> {LABELS[self.new]}"

    @property
    def machine(self) -> str:
        """The machine type both QEMUs know: 11.1's ``pc`` is not 10.0's."""
        return "pc" if self.old == self.new else "pc-i440fx-10.0"


@dataclass(frozen=True)
class Sample:
    """One update, in milliseconds."""

    downtime_ms: float
    total_ms: float
    startup_ms: float
    #: Each step's time, as update_qemu's report names them.
    steps: dict[str, float] = field(default_factory=dict)

    @property
    def beyond_startup_ms(self) -> float:
        return self.total_ms - self.startup_ms


#: The steps in which the new QEMU starts: launched, until it listens on its cpr
#: channel; then, once ``migrate`` has sent the cpr state, until its monitor greets
#: (QEMU creates its devices and monitors only after it has read the state).
STARTUP_STEPS = ("start-new", "new-listens", "cpr-state-read")


def startup_ms(steps: dict[str, float]) -> float:
    """The new QEMU's start-up among ``steps``."""
    return sum(steps[name] for name in STARTUP_STEPS)


class UpdateFailed(RuntimeError):
    """An update did not leave the guest running on the new QEMU."""


class ResumeMissed(UpdateFailed):
    """The new QEMU ran the guest before its monitor left capabilities negotiation:
    QEMU sends no events to a monitor in that mode, so RESUME (and the downtime) was
    lost.  Seen under load, when we are slow to answer the greeting."""


def add_arguments(parser: argparse._ArgumentGroup) -> None:
    """This figure's options."""
    parser.add_argument(
        "--qemu-update-rounds",
        type=int,
        default=11,
        metavar="N",
        help="updates of each kind per QEMU route, taken in turns (default 11)",
    )


# --- which QEMUs ---------------------------------------------------------------------------


def skip_reason() -> str | None:
    """Why the figure cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (chroot, mount --bind)"
    if not os.environ.get(ROOT_VARIABLES["10"]):
        return (
            f"{ROOT_VARIABLES['10']} is not set: `python -m tests.interop.qemu_cache run -- "
            "python -m bench qemu-update` sets it when run as root, to a cached Debian 13 "
            "root holding QEMU 10.0"
        )
    return None


def routes() -> list[Route]:
    """10.0 -> 10.0, and 10.0 -> 11.1 when 11.1's root is named too."""
    found = [Route("10", "10")]
    if os.environ.get(ROOT_VARIABLES["11"]):
        found.append(Route("10", "11"))
    return found


def root_of(flavour: str) -> Path:
    return Path(os.environ[ROOT_VARIABLES[flavour]]).absolute()


@contextlib.contextmanager
def roots_in_use(flavours: Sequence[str]) -> Iterator[dict[str, Path]]:
    """The roots, held (nobody rebuilds them meanwhile) with /proc and /dev bound in."""
    from tests.interop.qemu_root import bind_mounts, is_complete, root_lock

    with contextlib.ExitStack() as held:
        roots: dict[str, Path] = {}
        for flavour in sorted(set(flavours)):
            root = root_of(flavour)
            variable = ROOT_VARIABLES[flavour]
            if not root.is_dir():
                raise RuntimeError(f"{variable}={root} does not exist")
            held.enter_context(root_lock(root, shared=True, busy=f"waiting to use {root}"))
            if not is_complete(root, flavour):
                raise RuntimeError(
                    f"{variable}={root} is not a QEMU {LABELS[flavour]} root: "
                    f"tests/interop/qemu_root.py --version {flavour} builds one"
                )
            held.enter_context(bind_mounts(root))
            roots[flavour] = root
        yield roots


# --- processes -----------------------------------------------------------------------------


class Processes:
    """Every QEMU a round starts, each killed and reaped at the end, whatever happened."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[bytes]] = []
        #: QEMUs our process is the parent of, whose Popen someone else holds.
        self.adopted: list[int] = []

    def start(self, argv: Sequence[str], log: Path, pass_fds: Sequence[int] = ()) -> int:
        with open(log, "ab") as output:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                pass_fds=pass_fds,
                start_new_session=True,
            )
        self.children.append(process)
        return process.pid

    def adopt(self, pid: int) -> None:
        """update_qemu's new QEMU: our child, its Popen dropped in the library."""
        self.adopted.append(pid)

    def kill_all(self) -> None:
        for pid in self.adopted:
            kill(pid)
            # subprocess may have reaped it already, for the Popen it dropped.
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        for process in self.children:
            kill(process.pid)
            process.wait()
        self.adopted.clear()
        self.children.clear()


def kill(pid: int) -> None:
    """SIGKILL ``pid`` (chroot execs QEMU: it is QEMU) and wait until it has exited.

    Only our unreaped children come here, so the pid names no other process."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        select.select([pidfd], [], [], TIMEOUT)
    finally:
        os.close(pidfd)


def exited(pid: int, timeout: float) -> bool:
    """Whether ``pid`` exits within ``timeout`` (a pidfd turns readable)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


# --- QMP by hand ---------------------------------------------------------------------------


class Monitor:
    """A QMP connection, blocking; every read bounded by ``deadline`` (time.monotonic)."""

    def __init__(self, sock: socket.socket, name: str, deadline: float) -> None:
        self.sock = sock
        self.name = name
        self.deadline = deadline
        self.buffer = b""
        self.events: list[dict[str, Any]] = []
        self.ids = 0

    @classmethod
    def connect(cls, path: Path, name: str, deadline: float) -> Monitor:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            sock.connect(str(path))
        except BaseException:
            sock.close()
            raise
        return cls(sock, name, deadline)

    def close(self) -> None:
        self.sock.close()

    def _message(self) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name} did not answer in time")
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            if not data:
                raise UpdateFailed(f"{self.name} closed its monitor")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        return message

    def greet(self) -> None:
        """QEMU's greeting, then command mode (events only reach a monitor in it)."""
        if "QMP" not in self._message():
            raise UpdateFailed(f"{self.name} did not greet")
        self.execute("qmp_capabilities")

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        self.ids += 1
        request: dict[str, Any] = {"execute": command, "id": self.ids}
        if arguments is not None:
            request["arguments"] = arguments
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        while True:
            message = self._message()
            if "event" in message:
                self.events.append(message)
            elif message.get("id") == self.ids:
                if "error" in message:
                    raise UpdateFailed(f"{self.name}: {command}: {message['error']['desc']}")
                return message["return"]

    def wait_event(self, name: str, within: float | None = None) -> float:
        """The time QEMU stamped on event ``name`` (one that came already counts);
        TimeoutError if none came ``within`` seconds, if given."""
        deadline = self.deadline
        if within is not None:
            self.deadline = min(deadline, time.monotonic() + within)
        try:
            while True:
                for event in self.events:
                    if event["event"] == name:
                        self.events.remove(event)
                        stamp = event["timestamp"]
                        return float(stamp["seconds"]) + float(stamp["microseconds"]) / 1e6
                self.events.append(self._message())
        finally:
            self.deadline = deadline


def listening(name: str, table: str = "/proc/net/unix") -> bool:
    """Whether a socket listens on the abstract unix ``name``."""
    with open(table) as sockets:
        next(sockets)  # the header
        for line in sockets:
            fields = line.split()
            if len(fields) >= 8 and fields[7] == "@" + name and int(fields[3], 16) & ACCEPTING:
                return True
    return False


def channel(kind: str, name: str) -> dict[str, Any]:
    """An incoming or outgoing channel on the abstract unix ``name``."""
    return {
        "channel-type": kind,
        "addr": {"transport": "socket", "type": "unix", "path": name, "abstract": True},
    }


# --- one update ----------------------------------------------------------------------------


@dataclass
class Place:
    """A fresh directory in a root's /tmp: ``host`` is our path, ``inside`` QEMU's."""

    root: Path
    host: Path

    @classmethod
    def make(cls, root: Path) -> Place:
        return cls(
            root, Path(tempfile.mkdtemp(prefix=f"fdc-bench-{os.getpid()}-", dir=root / "tmp"))
        )

    @property
    def inside(self) -> Path:
        return Path("/") / self.host.relative_to(self.root)

    def qemu(self, name: str, machine: str) -> list[str]:
        """``chroot ROOT qemu-system-x86_64`` with the guest and a QMP socket ``name.qmp``."""
        return [
            "chroot",
            str(self.root),
            "qemu-system-x86_64",
            "-name",
            f"fdchannel-bench-{os.getpid()}-{name}",
            *GUEST,
            "-machine",
            f"{machine},aux-ram-share=on,memory-backend=ram0",
            "-qmp",
            f"unix:{self.inside / name}.qmp,server=on,wait=off",
        ]

    def qmp(self, name: str) -> Path:
        return self.host / f"{name}.qmp"


def start_old(processes: Processes, place: Place, machine: str) -> int:
    """The old QEMU, its guest running; its pid.  A monitor on an inherited socket
    says when QEMU is up (its QMP socket then exists), so no update waits for it."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        argv = [
            *place.qemu("old", machine),
            "-chardev",
            f"socket,id=bench,fd={theirs.fileno()}",
            "-mon",
            "chardev=bench,mode=control",
        ]
        pid = processes.start(argv, place.host / "old.log", [theirs.fileno()])
        theirs.close()
        control = Monitor(ours, "the old QEMU", time.monotonic() + TIMEOUT)
        control.greet()
        status = control.execute("query-status")["status"]
    if status != "running":
        raise UpdateFailed(f"the old QEMU's guest is {status}, not running")
    return pid


def check_new(place: Place) -> None:
    """The guest runs on the new QEMU (asked on the new QEMU's own QMP socket)."""
    monitor = Monitor.connect(place.qmp("new"), "the new QEMU", time.monotonic() + TIMEOUT)
    try:
        monitor.greet()
        status = monitor.execute("query-status")["status"]
    finally:
        monitor.close()
    if status != "running":
        raise UpdateFailed(f"after the update the guest is {status} on the new QEMU")


class Steps:
    """Each step's time, named as update_qemu names its steps."""

    def __init__(self) -> None:
        self.started = self.mark = time.perf_counter()
        self.steps: dict[str, float] = {}

    def done(self, name: str) -> None:
        at = time.perf_counter()
        self.steps[name] = (at - self.mark) * 1000
        self.mark = at

    def total_ms(self) -> float:
        return (self.mark - self.started) * 1000


#: Seconds after which a missing RESUME is looked into: the switch takes milliseconds.
RESUME_LOOK = 2.0
#: Times a by-hand update is done again after ResumeMissed, per round.
REDO = 3


def resumed(target: Monitor) -> float:
    """The new QEMU's RESUME; ResumeMissed if the guest runs there without one."""
    try:
        return target.wait_event("RESUME", within=RESUME_LOOK)
    except TimeoutError:
        status = target.execute("query-status")["status"]
        if status == "running" and not any(e["event"] == "RESUME" for e in target.events):
            raise ResumeMissed(
                "the new QEMU resumed the guest before its monitor took qmp_capabilities: "
                "no RESUME event"
            ) from None
        return target.wait_event("RESUME")


def by_hand(processes: Processes, old: Place, new: Place, route: Route, old_pid: int) -> Sample:
    """The update over raw QMP, the least that works."""
    token = f"fdc-bench-{os.getpid()}-{secrets.token_hex(4)}"
    channels = [channel("main", f"{token}-main"), channel("cpr", f"{token}-cpr")]
    clock = Steps()
    deadline = time.monotonic() + TIMEOUT
    source = Monitor.connect(old.qmp("old"), "the old QEMU", deadline)
    target: Monitor | None = None
    try:
        source.greet()
        clock.done("connect-old")
        source.execute(
            "migrate-set-capabilities", {"capabilities": [{"capability": "events", "state": True}]}
        )
        source.execute("migrate-set-parameters", {"mode": "cpr-transfer"})
        clock.done("check-old")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        target = Monitor(ours, "the new QEMU", deadline)
        with theirs:
            argv = new.qemu("new", route.machine)
            for each in channels:
                argv += ["-incoming", json.dumps(each)]
            argv += [
                "-chardev",
                f"socket,id=m,fd={theirs.fileno()}",
                "-mon",
                "chardev=m,mode=control",
            ]
            new_pid = processes.start(argv, new.host / "new.log", [theirs.fileno()])
        clock.done("start-new")
        while not listening(f"{token}-cpr"):
            if exited(new_pid, LOOK_EVERY):
                raise UpdateFailed("the new QEMU exited before it listened")
            if time.monotonic() > deadline:
                raise TimeoutError("the new QEMU did not listen in time")
        clock.done("new-listens")
        source.execute("migrate", {"channels": channels})
        clock.done("migrate")
        target.greet()
        clock.done("cpr-state-read")
        stop = source.wait_event("STOP")
        resume = resumed(target)
        clock.done("switch")
        source.execute("quit")
        if not exited(old_pid, max(0.0, deadline - time.monotonic())):
            raise TimeoutError("the old QEMU did not exit after quit")
        clock.done("old-exited")
    finally:
        source.close()
        if target is not None:
            target.close()
    return Sample(
        downtime_ms=(resume - stop) * 1000,
        total_ms=clock.total_ms(),
        startup_ms=startup_ms(clock.steps),
        steps=clock.steps,
    )


def with_fdchannel(
    processes: Processes, old: Place, new: Place, route: Route, old_pid: int
) -> Sample:
    """The update by ``fdchannel.blocking.update_qemu``; the total is this process's
    clock around the call (the report's own total starts inside it)."""
    from fdchannel import blocking

    command = new.qemu("new", route.machine)
    started = time.perf_counter()
    report = blocking.update_qemu(
        str(old.qmp("old")), command, timeout=TIMEOUT, log=str(new.host / "new.log")
    )
    ended = time.perf_counter()
    if report.new_pid is not None and report.ok:
        processes.adopt(report.new_pid)  # its Popen stayed in update_qemu
    if not report.ok or report.downtime_ms is None:
        raise UpdateFailed(f"update_qemu: {report.result}: {report.reason}")
    if report.warnings:
        raise UpdateFailed(f"update_qemu: {'; '.join(report.warnings)}")
    if not exited(old_pid, 0):
        raise UpdateFailed("update_qemu returned with the old QEMU still running")
    steps = dict(report.steps)
    total_ms = (ended - started) * 1000
    # Before the report's clock started and after it stopped.
    steps["outside the report"] = total_ms - sum(steps.values())
    return Sample(
        downtime_ms=report.downtime_ms,
        total_ms=total_ms,
        startup_ms=startup_ms(steps),
        steps=steps,
    )


Update = Callable[[Processes, Place, Place, Route, int], Sample]
UPDATES: tuple[tuple[str, Update], ...] = ((BY_HAND, by_hand), (FDCHANNEL, with_fdchannel))


def one_update(update: Update, roots: dict[str, Path], route: Route) -> Sample:
    """A fresh guest on the old QEMU, updated once; nothing left running or on disk."""
    processes = Processes()
    places: list[Place] = []
    try:
        places.append(Place.make(roots[route.old]))
        places.append(Place.make(roots[route.new]))
        old, new = places
        old_pid = start_old(processes, old, route.machine)
        sample = update(processes, old, new, route, old_pid)
        check_new(new)
        return sample
    finally:
        # Every QEMU goes before the mounts do.
        processes.kill_all()
        for place in places:
            shutil.rmtree(place.host, ignore_errors=True)


# --- the figure ----------------------------------------------------------------------------


def measure_route(roots: dict[str, Path], route: Route, rounds: int) -> tuple[list[Row], int]:
    """``rounds`` updates of each kind, in turns (who goes first alternates), after
    WARMUP rounds; also how many by-hand updates were done again (ResumeMissed)."""
    samples: dict[str, list[Sample]] = {label: [] for label, _ in UPDATES}
    errors: dict[str, str] = {}
    redone = 0
    for index in range(-WARMUP, rounds):
        order = UPDATES if index % 2 == 0 else UPDATES[::-1]
        for label, update in order:
            if label in errors:
                continue
            for attempt in range(REDO + 1):
                try:
                    sample = one_update(update, roots, route)
                except ResumeMissed as exc:
                    if attempt == REDO:
                        errors[label] = f"{type(exc).__name__}: {exc}"
                        break
                    redone += 1
                    continue
                except Exception as exc:
                    errors[label] = f"{type(exc).__name__}: {exc}"
                else:
                    if index >= 0:
                        samples[label].append(sample)
                break
        print(".", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    rows = []
    for measure, attribute in MEASURES:
        for label, _ in UPDATES:
            rows.append(
                Row(
                    (route.label, measure, label),
                    tuple(getattr(s, attribute) for s in samples[label]),
                    group=f"{route.label} {measure}",
                    baseline=label == BY_HAND,
                    error=errors.get(label),
                    details={"steps_ms": step_medians(samples[label])}
                    if measure == "total"
                    else {},
                )
            )
    return rows, redone


def step_medians(samples: Sequence[Sample]) -> dict[str, float]:
    """Each step's median time over ``samples``, in the order the steps come."""
    names = dict.fromkeys(name for sample in samples for name in sample.steps)
    return {
        name: round(statistics.median(s.steps[name] for s in samples if name in s.steps), 3)
        for name in names
    }


def verdicts(figure: Figure) -> list[str]:
    """Per route: fdchannel's downtime next to the one by hand, its cost beyond start-up
    next to OVERHEAD_MS."""
    lines = []

    def value(route: str, measure: str, label: str) -> tuple[float | None, Row | None]:
        for row in figure.rows:
            if row.labels == (route, measure, label):
                return figure.value(row), row
        return None, None

    for route in dict.fromkeys(row.labels[0] for row in figure.rows):
        ours, _ = value(route, "downtime", FDCHANNEL)
        theirs, by_hand_row = value(route, "downtime", BY_HAND)
        if ours is not None and theirs is not None and by_hand_row is not None:
            spread = f"{min(by_hand_row.samples):.1f}-{max(by_hand_row.samples):.1f}"
            held = "holds" if ours <= theirs else "does NOT hold"
            lines.append(
                f"{route}: downtime {ours:.1f} ms with fdchannel, {theirs:.1f} ms by hand "
                f"({ours - theirs:+.1f} ms; by hand {spread} ms): 'at most by hand's' {held}"
            )
        beyond, _ = value(route, "total - start-up", FDCHANNEL)
        base, _ = value(route, "total - start-up", BY_HAND)
        if beyond is not None:
            held = "holds" if beyond <= OVERHEAD_MS else "does NOT hold"
            extra = "" if base is None else f" ({beyond - base:+.1f} ms next to by hand's)"
            lines.append(
                f"{route}: total minus start-up {beyond:.1f} ms with fdchannel{extra}: "
                f"'at most {OVERHEAD_MS:.0f} ms' {held}"
            )
    return lines


def step_lines(figure: Figure) -> list[str]:
    """Per route: each step's median, by hand / with fdchannel."""
    lines = []
    for route in dict.fromkeys(row.labels[0] for row in figure.rows):
        found: dict[str, dict[str, float]] = {}
        for row in figure.rows:
            if row.labels[:2] == (route, "total") and row.error is None:
                steps = row.details.get("steps_ms")
                if isinstance(steps, dict):
                    found[row.labels[2]] = steps
        if len(found) < len(UPDATES):
            continue
        hand, ours = found[BY_HAND], found[FDCHANNEL]
        parts = [
            f"{name} {hand[name]:.1f}/{ours[name]:.1f}"
            if name in hand
            else f"{name} -/{ours[name]:.1f}"
            for name in dict.fromkeys([*hand, *ours])
            if name in ours
        ]
        lines.append(f"{route} steps, median ms by hand/fdchannel: {', '.join(parts)}")
    return lines


def run(options: argparse.Namespace) -> Figure:
    """Update guests ``--qemu-update-rounds`` times each way and return the table."""
    rounds = max(1, options.qemu_update_rounds)
    figure = Figure(
        name=NAME,
        title="QEMU live update by cpr-transfer, 256 MiB guest",
        columns=("QEMU", "measure", "update"),
        unit="ms",
        ratio_heading="vs by hand",
        value_format="{:.1f}",
        higher_is_better=False,
        statistic="median",
        paired=True,
        parameters={
            "rounds": rounds,
            "warmup": WARMUP,
            "overhead_ms": OVERHEAD_MS,
            "guest_ram": "256 MiB",
        },
        notes=[
            "downtime: STOP -> RESUME by QEMU's event timestamps; total: connect to the old "
            "QEMU's QMP socket -> it exited; new QEMU start-up: launched -> listens on cpr, "
            "and cpr state sent -> its monitor greets (steps start-new, new-listens, "
            "cpr-state-read)",
        ],
    )
    reason = skip_reason()
    if reason is not None:
        figure.notes.append(f"skipped: {reason}")
        print(f"  skipped: {reason}", file=sys.stderr)
        return figure
    chosen = routes()
    if len(chosen) == 1:
        figure.notes.append(f"10.0 -> 11.1 skipped: {ROOT_VARIABLES['11']} is not set")
    try:
        with roots_in_use([f for r in chosen for f in (r.old, r.new)]) as roots:
            versions = {f: installed(root) for f, root in roots.items()}
            figure.parameters["qemu"] = versions
            for route in chosen:
                print(f"  {route.label}, {rounds} rounds ", end="", file=sys.stderr, flush=True)
                rows, redone = measure_route(roots, route, rounds)
                figure.rows += rows
                if redone:
                    figure.notes.append(
                        f"{route.label}: {redone} update(s) by hand done again: the new QEMU "
                        "resumed the guest before its monitor took qmp_capabilities (no RESUME)"
                    )
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        measured = {row.labels[0] for row in figure.rows}
        for route in chosen:
            if route.label not in measured:
                figure.rows += [
                    Row(
                        (route.label, measure, label),
                        group=f"{route.label} {measure}",
                        baseline=label == BY_HAND,
                        error=error,
                    )
                    for measure, _ in MEASURES
                    for label, _ in UPDATES
                ]
        return figure
    figure.notes += step_lines(figure)
    figure.notes += verdicts(figure)
    return figure


def installed(root: Path) -> str | None:
    """The qemu-system-x86 package version in ``root``."""
    from tests.interop.qemu_root import installed_qemu

    return installed_qemu(root)


def main(argv: Sequence[str] | None = None) -> int:
    """Run this figure alone."""
    from . import _report

    parser = argparse.ArgumentParser(prog="python -m bench.qemu_update")
    add_arguments(parser.add_argument_group(NAME))
    figure = run(parser.parse_args(argv))
    print(_report.render(figure))
    return 1 if figure.failed else 0


if __name__ == "__main__":
    sys.exit(main())
