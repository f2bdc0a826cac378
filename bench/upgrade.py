"""Upgrades: the pause of a handover, and request latency while a server is upgraded.

* pause: examples/upgrade_handover.py runs with ``--handover --memory 1G``;
  100 client connections request throughout (one byte each, paced to 1000
  requests/s in all, from a thread here), and the server is upgraded 21
  times.  Each pause runs from the old generation entering its ``pause``
  hook (it stops accepting and serving, then hands every connection and
  the 1 GiB memfd over) to the new generation serving the handed
  connections; both ends are ``time.monotonic()`` in the two processes
  (CLOCK_MONOTONIC: one clock on the host).  The issue's bound: a median
  of at most 5 ms.  Also: the pause up to the new generation's ``ready()``
  returning the handed state; ``handover_seconds`` (the Upgrader's own
  clock: ``pause()`` to the acknowledgement); the pause cut into PHASES,
  each labelled with who spends it (the example, fdchannel, anyio); and
  the whole upgrade (request to commit, the new process's start
  included).  Every client request must succeed, every connection must be
  answered by every generation (none reconnects), and every generation
  must read the memory back intact (in a thread, after the pause).
  Baseline: the same 101 descriptors (100 TCP connections and a 1 GiB
  memfd) in one ``socket.send_fds`` to a process that wraps each in a
  ``socket.socket``: the raw cost of the handover, without an upgrade
  around it.
* latency: wrk at 1000 requests/s over 10 connections against
  examples/upgrade_anyio.py (asyncio) for T seconds without upgrades,
  then T seconds with an upgrade every 0.5 s: p50, p99 and max of each
  (wrk's, corrected for coordinated omission), errors (must be 0).
  Skipped, with a note, when wrk is not installed.

``python -m bench upgrade [--upgrades N] [--upgrade-memory SIZE] ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import math
import os
import re
import selectors
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ._peer import start_peer
from ._report import Figure, Row, format_size, parse_size
from .fdrate import Ready, Received, _positive
from .load import LoadResult
from .upgrades import Generations

__all__ = [
    "BOUND_MS",
    "HELP",
    "NAME",
    "PHASES",
    "Summary",
    "add_arguments",
    "percentile",
    "phases",
    "run",
    "summarize",
    "verdict",
]

NAME = "upgrade"
HELP = "the pause of an upgrade handing over 100 connections and 1 GiB; p99 during upgrades"

#: The issue's bound on the median pause.
BOUND_MS = 5.0
SERVER = Path(__file__).resolve().parent.parent / "examples" / "upgrade_handover.py"
#: The handover example's answer: the serving pid and generation.
ANSWER = struct.Struct(">II")
#: The longest wait for anything: a generation's start, an upgrade, a memory check.
TIMEOUT = 60.0
#: Unmeasured raw transfers first (page faults, caches).
WARM_UP = 2


def add_arguments(parser: argparse._ArgumentGroup) -> None:
    """This figure's options."""
    parser.add_argument(
        "--upgrades", type=_positive, default=21, metavar="N", help="upgrades timed (default 21)"
    )
    parser.add_argument(
        "--upgrade-clients",
        type=_positive,
        default=100,
        metavar="N",
        help="client connections handed over in each upgrade (default 100)",
    )
    parser.add_argument(
        "--demo-runs",
        type=_positive,
        default=5,
        metavar="N",
        help="runs of make demo's live upgrade whose pause is reported (default 5)",
    )
    parser.add_argument(
        "--upgrade-no-switch",
        dest="upgrade_switch",
        action="store_false",
        help="stop serving the connections before handing them over, instead of handing "
        "them over first and switching once replaced (examples/upgrade_handover.py --switch)",
    )
    parser.add_argument(
        "--upgrade-memory",
        type=parse_size,
        default=1 << 30,
        metavar="SIZE",
        help="memory (a memfd) handed over with them (default 1G)",
    )
    parser.add_argument(
        "--upgrade-backend",
        choices=("asyncio", "uvloop", "trio"),
        default="asyncio",
        help="the event loop of the server whose pause is measured (default asyncio)",
    )
    parser.add_argument(
        "--upgrade-client-rate",
        type=float,
        default=1000.0,
        metavar="R",
        help="requests/s of all the clients together during the pause runs (default 1000)",
    )
    parser.add_argument(
        "--upgrade-load-seconds",
        type=_positive,
        default=10,
        metavar="T",
        help="length of each wrk run, without and with upgrades (default 10)",
    )
    parser.add_argument(
        "--upgrade-interval",
        type=float,
        default=0.5,
        metavar="S",
        help="seconds from one upgrade's start to the next during the wrk run (default 0.5)",
    )


# --- summaries (pure) ----------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), interpolated between the closest ranks."""
    if not values:
        raise ValueError("no values")
    if not 0 <= q <= 100:
        raise ValueError(f"a percentile is between 0 and 100, not {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Summary:
    """Median, extremes and 90th percentile of some samples."""

    median: float
    minimum: float
    p90: float
    maximum: float
    count: int

    def describe(self, unit: str = "ms") -> str:
        return (
            f"median {self.median:.2f} {unit}, min {self.minimum:.2f}, p90 {self.p90:.2f}, "
            f"max {self.maximum:.2f} over {self.count}"
        )


def summarize(values: Sequence[float]) -> Summary:
    """The summary of ``values`` (at least one)."""
    if not values:
        raise ValueError("no values")
    return Summary(
        statistics.median(values), min(values), percentile(values, 90), max(values), len(values)
    )


def verdict(median_ms: float, bound_ms: float = BOUND_MS) -> str:
    """``PASS`` if the median is within the bound, else ``FAIL``."""
    return "PASS" if median_ms <= bound_ms else "FAIL"


#: The pause in consecutive phases: (label, where it starts, where it ends), each
#: end an event field: ``paused.X`` from the old generation, ``serving.X`` from the new.
PHASES = (
    ("old: pause() hook (example)", "paused.at", "paused.returned_at"),
    ("send_cpr -> receive_cpr -> ack (fdchannel)", "paused.returned_at", "serving.acked_at"),
    ("new: ready() returns (fdchannel)", "serving.acked_at", "serving.ready_at"),
    ("new: Stream.from_fd each (fdchannel)", "serving.ready_at", "serving.wrapped_at"),
    ("new: a task each, waiting (example, anyio)", "serving.wrapped_at", "serving.at"),
)


#: The same with ``--switch``: the connections travel before the pause, and the
#: pause is the old generation stopping between requests, then its "go".
SWITCH_PHASES = (
    ("old: stop between requests (example)", "paused.at", "paused.switched_at"),
    ('"go" on the switch socket', "paused.switched_at", "serving.switch_at"),
    ("new: the gate opens (example)", "serving.switch_at", "serving.at"),
)


def phases(paused: dict[str, Any], serving: dict[str, Any]) -> dict[str, float]:
    """Milliseconds of each of PHASES in one upgrade (those whose times are missing left out).

    The phases add up to the pause: ``serving.at - paused.at``.
    """
    events = {"paused": paused, "serving": serving}

    def when(name: str) -> float | None:
        kind, _, key = name.partition(".")
        value = events[kind].get(key)
        return float(value) if isinstance(value, int | float) else None

    out = {}
    table = SWITCH_PHASES if paused.get("switched_at") is not None else PHASES
    for label, start, end in table:
        begun, ended = when(start), when(end)
        if begun is not None and ended is not None:
            out[label] = (ended - begun) * 1000
    return out


# --- the handover example's generations ----------------------------------------------------


# --- clients -------------------------------------------------------------------------------


@dataclass
class ClientStats:
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    #: Seconds from sending a request to its whole answer, the longest seen.
    longest: float = 0.0
    #: (time.monotonic() when sent, seconds to the answer) of every request.
    latencies: list[tuple[float, float]] = field(default_factory=list)
    #: The generations that answered on each connection.
    answered_by: list[set[int]] = field(default_factory=list)


class PacedClients:
    """``count`` keep-alive connections, each sending a request every ``count / rate``
    seconds (staggered) and waiting for its answer, from one thread with a selector."""

    def __init__(self, address: tuple[str, int], count: int, rate: float) -> None:
        self.address = address
        self.count = count
        self.interval = count / rate
        self.stats = ClientStats(answered_by=[set() for _ in range(count)])
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        self._thread = threading.Thread(target=self._run, name="clients", daemon=True)

    def __enter__(self) -> PacedClients:
        try:
            for _ in range(self.count):
                sock = socket.create_connection(self.address, timeout=TIMEOUT)
                sock.setblocking(False)
                self._socks.append(sock)
        except BaseException:
            self._close()
            raise
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)
        self._close()

    def _close(self) -> None:
        for sock in self._socks:
            sock.close()

    def _run(self) -> None:
        stats = self.stats
        start = time.monotonic()
        due = [(start + i * self.interval / self.count, i) for i in range(self.count)]
        heapq.heapify(due)
        sent_at = [0.0] * self.count
        received = [b""] * self.count
        waiting: set[int] = set()  # sent, not answered yet
        with selectors.DefaultSelector() as selector:
            for i, sock in enumerate(self._socks):
                selector.register(sock, selectors.EVENT_READ, i)
            while not self._stop.is_set():
                now = time.monotonic()
                while due and due[0][0] <= now:
                    _, i = heapq.heappop(due)
                    try:
                        self._socks[i].send(b"+")
                    except OSError as exc:
                        stats.errors.append(f"connection {i}: send: {exc!r}")
                        selector.unregister(self._socks[i])
                        continue
                    sent_at[i] = now
                    waiting.add(i)
                wait = min(due[0][0] - now, 0.05) if due else 0.05
                for key, _ in selector.select(max(wait, 0.0)):
                    i = key.data
                    sock = self._socks[i]
                    try:
                        data = sock.recv(ANSWER.size - len(received[i]))
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        data, error = b"", f"recv: {exc!r}"
                    else:
                        error = "the server closed the connection"
                    if not data:
                        stats.errors.append(f"connection {i}: {error}")
                        selector.unregister(sock)
                        continue
                    received[i] += data
                    if len(received[i]) < ANSWER.size:
                        continue
                    done = time.monotonic()
                    waiting.discard(i)
                    stats.requests += 1
                    stats.longest = max(stats.longest, done - sent_at[i])
                    stats.latencies.append((sent_at[i], done - sent_at[i]))
                    stats.answered_by[i].add(ANSWER.unpack(received[i])[1])
                    received[i] = b""
                    heapq.heappush(due, (max(done, sent_at[i] + self.interval), i))
        now = time.monotonic()
        for i in sorted(waiting):
            if now - sent_at[i] > 1.0:
                stats.errors.append(f"connection {i}: no answer for {now - sent_at[i]:.1f} s")


# --- the pause -----------------------------------------------------------------------------


@dataclass
class PauseRun:
    pauses_ms: list[float] = field(default_factory=list)
    phases_ms: dict[str, list[float]] = field(default_factory=dict)
    ready_ms: list[float] = field(default_factory=list)
    handover_ms: list[float] = field(default_factory=list)
    upgrade_ms: list[float] = field(default_factory=list)
    memory_ok: int = 0
    memory_checked: int = 0
    clients: ClientStats = field(default_factory=ClientStats)
    problems: list[str] = field(default_factory=list)


def measure_pause(options: argparse.Namespace, directory: Path) -> PauseRun:
    """Upgrade the handover example ``options.upgrades`` times under the clients' load."""
    from fdchannel.upgrade import request_upgrade

    out = PauseRun()
    args = [
        "--handover",
        *(["--switch"] if options.upgrade_switch else []),
        "--memory",
        str(options.upgrade_memory),
        "--backend",
        options.upgrade_backend,
    ]
    with Generations(SERVER, directory, *args) as server:
        first = server.wait_for("ready", 0)
        address = ("127.0.0.1", int(first["port"]))
        with PacedClients(address, options.upgrade_clients, options.upgrade_client_rate) as clients:
            time.sleep(0.2)  # every connection accepted and requesting
            for generation in range(1, options.upgrades + 1):
                result = request_upgrade(server.control, timeout=TIMEOUT)
                if result["generation"] != generation:
                    raise RuntimeError(f"upgrade {generation} made generation {result}")
                serving = server.wait_for("serving", generation)
                paused = server.wait_for("paused", generation - 1)
                memory = server.wait_for("memory", generation)  # read back before the next
                server.wait_for("exit", generation - 1)  # the old one is gone: a quiet machine
                out.pauses_ms.append((serving["at"] - paused["at"]) * 1000)
                out.ready_ms.append((serving["ready_at"] - paused["at"]) * 1000)
                for label, ms in phases(paused, serving).items():
                    out.phases_ms.setdefault(label, []).append(ms)
                out.handover_ms.append(result["handover_seconds"] * 1000)
                out.upgrade_ms.append(result["seconds"] * 1000)
                out.memory_checked += 1
                out.memory_ok += memory["memory_ok"] is True
                expected = options.upgrade_clients + 1 + options.upgrade_switch
                if serving["handed"] != expected:
                    out.problems.append(
                        f"generation {generation} was handed {serving['handed']} descriptors, "
                        f"not {expected}"
                    )
                print(
                    f"  upgrade {generation:2}: pause {out.pauses_ms[-1]:.2f} ms, "
                    f"handover {out.handover_ms[-1]:.2f} ms, whole {out.upgrade_ms[-1]:.0f} ms, "
                    f"memory read back in {memory['seconds']:.2f} s",
                    file=sys.stderr,
                    flush=True,
                )
            time.sleep(0.2)  # the last generation serves every connection too
        out.clients = clients.stats
    if out.clients.errors:
        out.problems.append(
            f"{len(out.clients.errors)} client errors, the first: {out.clients.errors[0]}"
        )
    if out.memory_ok != out.memory_checked:
        out.problems.append(
            f"the memory read back wrong in {out.memory_checked - out.memory_ok} generations"
        )
    moved = min((len(g) for g in out.clients.answered_by), default=0)
    if moved < options.upgrades + 1 and not out.clients.errors:
        out.problems.append(f"a connection was answered by only {moved} generations")
    return out


# --- the baseline: the same descriptors with socket.send_fds --------------------------------


def _raw_receiver(conn: Connection, path: str, rounds: int) -> None:
    """Child process: take ``rounds`` messages of descriptors, wrap each, report when done."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)
        conn.send(Ready())
        channel, _ = listener.accept()
        with channel:
            for _ in range(rounds):
                _, fds, _, _ = socket.recv_fds(channel, 1, 253)
                memory = fds.pop()
                wrapped = [socket.socket(fileno=fd) for fd in fds]
                for sock in wrapped:
                    sock.setblocking(False)
                end_ns = time.monotonic_ns()
                conn.send(Received(len(wrapped) + 1, end_ns))
                for sock in wrapped:
                    sock.close()
                os.close(memory)


def measure_raw(connections: int, memory: int, rounds: int, directory: Path) -> list[float]:
    """Milliseconds per handover of ``connections`` TCP sockets and a memfd, ``rounds`` times."""
    path = str(directory / "raw.sock")
    held: list[socket.socket] = []
    memfd = os.memfd_create("bench-raw", os.MFD_CLOEXEC)
    samples: list[float] = []
    try:
        os.ftruncate(memfd, memory)  # its size does not matter to passing its descriptor
        with socket.create_server(("127.0.0.1", 0), backlog=connections) as listener:
            for _ in range(connections):
                held.append(socket.create_connection(listener.getsockname()))
                held.append(listener.accept()[0])
        served = held[1::2]
        fds = [sock.fileno() for sock in served] + [memfd]
        with start_peer(_raw_receiver, path, WARM_UP + rounds) as peer:
            peer.expect(Ready, TIMEOUT)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as channel:
                channel.connect(path)
                for index in range(WARM_UP + rounds):
                    start_ns = time.monotonic_ns()
                    socket.send_fds(channel, [b"x"], fds)
                    received = peer.expect(Received, TIMEOUT)
                    if received.count != len(fds):
                        raise RuntimeError(f"the receiver got {received.count} of {len(fds)}")
                    if index >= WARM_UP:
                        samples.append((received.end_ns - start_ns) / 1e6)
                    time.sleep(0.01)
    finally:
        for sock in held:
            sock.close()
        os.close(memfd)
    return samples


# --- latency under wrk ---------------------------------------------------------------------


@dataclass
class LatencyRun:
    without: LoadResult
    with_upgrades: LoadResult
    upgrades: int
    failed: list[str]


def measure_latency(options: argparse.Namespace, directory: Path) -> LatencyRun:
    """wrk on examples/upgrade_anyio.py: T seconds without upgrades, T seconds with."""
    from fdchannel.errors import UpgradeError
    from fdchannel.upgrade import request_upgrade

    from .load import finish_wrk, run_wrk, start_wrk

    seconds = options.upgrade_load_seconds
    with Generations.http("anyio", "asyncio", directory) as servers:
        url = servers.ready(0, TIMEOUT)["url"]
        without = run_wrk(url, rate=1000, seconds=seconds, connections=10)
        wrk = start_wrk(url, rate=1000, seconds=seconds, connections=10)
        upgrades, failed = 0, []
        try:
            started = time.monotonic()
            time.sleep(options.upgrade_interval / 2)
            while time.monotonic() - started < seconds - options.upgrade_interval:
                began = time.monotonic()
                try:
                    request_upgrade(servers.control, timeout=TIMEOUT)
                    upgrades += 1
                except UpgradeError as exc:
                    failed.append(str(exc))
                time.sleep(max(0.0, options.upgrade_interval - (time.monotonic() - began)))
        finally:
            with_upgrades = finish_wrk(wrk, timeout=seconds + TIMEOUT)
    return LatencyRun(without, with_upgrades, upgrades, failed)


# --- the figure ----------------------------------------------------------------------------


def run(options: argparse.Namespace) -> Figure:
    """Measure the pause and its baseline, then the latency, and return the table."""
    connections: int = options.upgrade_clients
    memory: int = options.upgrade_memory
    handed = f"{connections} connections + {format_size(memory)}"
    figure = Figure(
        name=NAME,
        title=f"upgrade: handover pause ({handed}, {options.upgrade_backend}) and request "
        "latency during upgrades",
        columns=("measure", "case"),
        unit="ms",
        ratio_heading="vs baseline",
        value_format="{:.2f}",
        higher_is_better=False,
        statistic="median",
        parameters={
            "upgrades": options.upgrades,
            "connections": connections,
            "memory": memory,
            "backend": options.upgrade_backend,
            "client_rate": options.upgrade_client_rate,
            "load_seconds": options.upgrade_load_seconds,
            "upgrade_interval": options.upgrade_interval,
            "bound_ms": BOUND_MS,
        },
    )
    directory = Path(tempfile.mkdtemp(prefix="fdc-bench-upgrade-", dir="/tmp"))
    try:
        _pause_rows(figure, options, directory)
        _demo_rows(figure, options)
        _latency_rows(figure, options, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return figure


DEMO = Path(__file__).resolve().parent.parent / "examples" / "live_upgrade.py"
#: The demo's line with the pause, e.g. "pause (old stops serving -> new serving): 1.4 ms".
DEMO_PAUSE = re.compile(r"^pause \(old stops serving -> new serving\): ([0-9.]+) ms$", re.M)


def demo_pause_ms(output: str) -> float:
    """The pause the demo (``make demo``) printed; ValueError if it printed none."""
    found = DEMO_PAUSE.search(output)
    if found is None:
        raise ValueError(f"the demo printed no pause line; it ended: {output[-300:]!r}")
    return float(found.group(1))


def _demo_rows(figure: Figure, options: argparse.Namespace) -> None:
    """``make demo``'s own pause figure (100 clients, 1 GiB), over a few runs."""
    row = Row(("demo pause", "examples/live_upgrade.py, 100 clients + 1 GiB"), group="demo")
    samples = []
    try:
        for run in range(options.demo_runs):
            print(f"  demo run {run + 1}", file=sys.stderr, flush=True)
            done = subprocess.run(
                [sys.executable, str(DEMO)],
                capture_output=True,
                text=True,
                timeout=TIMEOUT * 4,
                check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(
                    f"the demo failed (status {done.returncode}): {done.stdout[-300:]}"
                )
            samples.append(demo_pause_ms(done.stdout))
    except Exception as exc:
        figure.rows.append(dataclasses.replace(row, error=f"{type(exc).__name__}: {exc}"))
        return
    figure.rows.append(dataclasses.replace(row, samples=tuple(samples)))
    median = statistics.median(samples)
    figure.notes.append(
        f"demo pause (make demo): median {median:.2f} ms over {len(samples)} runs, "
        f"min {min(samples):.2f}, max {max(samples):.2f}: {verdict(median)} "
        f"(bound: median <= {BOUND_MS:g} ms)"
    )


def _pause_rows(figure: Figure, options: argparse.Namespace, directory: Path) -> None:
    connections: int = options.upgrade_clients
    raw = Row(("handover", f"raw send_fds of {connections + 1} fds"), group="pause", baseline=True)
    print("  raw handover (baseline)", file=sys.stderr, flush=True)
    try:
        raw_ms = measure_raw(connections, options.upgrade_memory, options.upgrades, directory)
        figure.rows.append(dataclasses.replace(raw, samples=tuple(raw_ms)))
    except Exception as exc:
        figure.rows.append(dataclasses.replace(raw, error=f"{type(exc).__name__}: {exc}"))
    pause = Row(("handover", "upgrade: paused -> serving"), group="pause")
    ready = Row(("handover", "upgrade: paused -> ready() returns"), group="pause")
    handover = Row(("handover", "upgrade: handover_seconds"), group="pause")
    whole = Row(("whole upgrade", "request -> commit"), group="upgrade")
    try:
        result = measure_pause(options, directory)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        rows = (pause, ready, handover, whole)
        figure.rows += [dataclasses.replace(row, error=error) for row in rows]
        return
    figure.rows += [
        dataclasses.replace(
            pause, samples=tuple(result.pauses_ms), error="; ".join(result.problems) or None
        ),
        # With the switch, ready() returns before the pause: the row means nothing then.
        *(
            []
            if options.upgrade_switch
            else [dataclasses.replace(ready, samples=tuple(result.ready_ms))]
        ),
        dataclasses.replace(handover, samples=tuple(result.handover_ms)),
        *(
            Row(("pause phase", label), tuple(samples), group="phases")
            for label, samples in result.phases_ms.items()
        ),
        dataclasses.replace(whole, samples=tuple(result.upgrade_ms)),
    ]
    summary = summarize(result.pauses_ms)
    figure.parameters["pause_ms"] = dataclasses.asdict(summary)
    library = [
        sum(ms for label, ms in upgrade.items() if "(fdchannel)" in label)
        for upgrade in _per_upgrade(result.phases_ms)
    ]
    figure.notes += [
        f"pause = the new generation serving the handed connections - the old one entering "
        f"pause(), CLOCK_MONOTONIC in both: {summary.describe()} upgrades: "
        f"{verdict(summary.median)} (bound: median <= {BOUND_MS:g} ms)",
        "paused -> ready() returns: until the new generation holds what was handed over; "
        "pause phases: consecutive, they add up to the pause; "
        f"fdchannel's add up to a median of {statistics.median(library or [0]):.2f} ms",
        f"clients: {result.clients.requests} requests, {len(result.clients.errors)} errors, "
        f"p99 {_client_p99(result.clients):.2f} ms, longest {result.clients.longest * 1000:.1f} "
        f"ms (a pause, or the thread reading the memory back, which shares the GIL); "
        f"memory read back intact by {result.memory_ok}/{result.memory_checked} generations",
        "baseline: the same descriptors in one socket.send_fds to a process that wraps each "
        "in a socket.socket, no upgrade around it",
    ]


def _client_p99(stats: ClientStats) -> float:
    latencies = [seconds * 1000 for _, seconds in stats.latencies]
    return percentile(latencies, 99) if latencies else 0.0


def _per_upgrade(phases_ms: dict[str, list[float]]) -> list[dict[str, float]]:
    """The phases of each upgrade, from the samples of each phase."""
    count = max((len(samples) for samples in phases_ms.values()), default=0)
    return [
        {label: samples[i] for label, samples in phases_ms.items() if i < len(samples)}
        for i in range(count)
    ]


def _latency_rows(figure: Figure, options: argparse.Namespace, directory: Path) -> None:
    from .load import describe, find_wrk

    if find_wrk() is None:
        figure.notes.append(
            "latency during upgrades: skipped, wrk is not installed (Debian: apt-get install wrk)"
        )
        return
    interval = f"an upgrade every {options.upgrade_interval:g} s"
    labels = {"p50": "p50 latency", "p99": "p99 latency", "max": "max latency"}
    print("  wrk without upgrades, then with", file=sys.stderr, flush=True)
    try:
        result = measure_latency(options, directory)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        for kind, label in labels.items():
            figure.rows.append(Row((label, "without upgrades"), group=kind, baseline=True))
            figure.rows.append(Row((label, interval), group=kind, error=error))
        return
    errors = result.with_upgrades.total_errors + result.without.total_errors
    problem = None
    if errors or result.failed:
        problem = f"{errors} wrk errors, {len(result.failed)} failed upgrades"
    for kind, label in labels.items():
        key = f"{kind}_ms"
        figure.rows.append(
            Row(
                (label, "without upgrades"),
                (getattr(result.without, key),),
                group=kind,
                baseline=True,
            )
        )
        figure.rows.append(
            Row(
                (label, interval),
                (getattr(result.with_upgrades, key),),
                group=kind,
                error=problem,
                details={"upgrades": result.upgrades},
            )
        )
    p99 = result.with_upgrades.p99_ms / result.without.p99_ms if result.without.p99_ms else 0
    figure.notes += [
        f"latency: wrk at 1000 requests/s over 10 connections on examples/upgrade_anyio.py "
        f"(asyncio), {options.upgrade_load_seconds} s each; with {result.upgrades} upgrades: "
        f"p99 {result.with_upgrades.p99_ms:.2f} ms vs {result.without.p99_ms:.2f} ms "
        f"without ({p99:.2f}x)",
        f"without upgrades: {describe(result.without)}",
        f"with upgrades: {describe(result.with_upgrades)}",
    ]


def main(argv: list[str] | None = None) -> int:
    """This figure alone."""
    from . import _report

    parser = argparse.ArgumentParser(prog="python -m bench.upgrade", description=HELP)
    add_arguments(parser.add_argument_group(NAME))
    figure = run(parser.parse_args(argv))
    print(_report.render(figure))
    return 1 if figure.failed else 0


if __name__ == "__main__":
    sys.exit(main())
