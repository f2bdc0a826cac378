"""Descriptor rate between two processes: raw stdlib SCM_RIGHTS, fdchannel's native and qemu codecs.

The sender (this process) creates its memfds once and passes them all in
every transfer; the receiver (a child process) keeps what arrives until the
last descriptor is there, then closes them.  A transfer is timed from the
sender's first send to the moment the receiver holds the last descriptor;
both read CLOCK_MONOTONIC, one clock for every process on Linux.  On two
or more CPUs the sender runs on one and every receiver on another
(``--no-pin`` leaves them to the scheduler).

* stdlib: blocking ``socket.send_fds``/``socket.recv_fds``, 253 descriptors
  and one byte per message: the baseline, with no framing at all.
* native: ``send_state(..., codec="native")`` and ``receive_state``; 253 per
  message, with its table, checksum and acknowledged windows.
* qemu: the same calls with ``codec="qemu"``: one descriptor per message,
  as QEMU sends them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import os
import resource
import shutil
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Literal, Protocol, TypeVar

import anyio

from . import _loops
from ._peer import Peer, PeerError, start_peer
from ._report import Figure, Row

__all__ = ["HELP", "NAME", "add_arguments", "run"]

NAME = "fdrate"
HELP = "descriptors per second between two processes, 253 per message (qemu: 1)"

Codec = Literal["native", "qemu"]
Implementation = Literal["stdlib", Codec]
#: Linux's SCM_MAX_FD: the most descriptors one message may carry.
PER_MESSAGE = 253
#: Descriptors each process keeps free beyond the ones measured.
HEADROOM = 256
#: Unmeasured transfers first: a transfer takes milliseconds, and the first
#: one also pays for page faults, caches and lazy imports.
WARM_UP = 1
#: Fewest measured transfers per case, whatever --repeat says.
MIN_ROUNDS = 41
#: How long a child may take to import and start listening.
START_TIMEOUT = 60.0
#: What measure() times, for a figure's notes.
TIMED = (
    "timed from the sender's first send until the receiver holds the last descriptor, "
    "after an unmeasured warm-up transfer"
)

#: Called at a step of a transfer (see ``Measured``); a blocking call, even on a loop.
Hook = Callable[[], object]


def nothing() -> None:
    """The hook that does nothing: the plain transfer, as this figure runs it."""


class Measured(Protocol):
    """A case as the harness here runs it: this figure's ``Case`` and ``bench.blocking``'s.

    Hashable, and picklable for the receiving child.
    """

    @property
    def loop(self) -> _loops.Loop | None:
        """The event loop its transfers run on; None for none."""

    @property
    def name(self) -> str:
        """Its socket file's name, unique among the figure's cases."""

    def row(self) -> Row:
        """Its row of the table, before any measurement."""

    def progress(self, row: Row) -> str:
        """The line that reports the measured (or failed) ``row``."""

    def send(self, transfer: Transfer, memfds: list[int], connected: Hook = nothing) -> int:
        """Sender: connect, call ``connected``, pass every memfd; the monotonic_ns() of
        the first send (taken after ``connected`` returns)."""

    def receive(
        self, conn: Connection, transfer: Transfer, repeat: int, accepted: Hook = nothing
    ) -> None:
        """Receiver (in the child): listen, say Ready, take ``repeat`` transfers,
        calling ``accepted`` once each is connected, before it is received."""


@dataclass(frozen=True)
class Case:
    """One row of the table; ``loop`` is None for blocking stdlib sockets."""

    implementation: Implementation
    loop: _loops.Loop | None

    @property
    def name(self) -> str:
        return f"{self.implementation}-{self.loop or 'blocking'}"

    def row(self) -> Row:
        per_message = "1" if self.implementation == "qemu" else str(PER_MESSAGE)
        labels = (self.implementation, self.loop or "blocking", per_message)
        return Row(labels, baseline=self.implementation == "stdlib")

    def progress(self, row: Row) -> str:
        done = " ".join(f"{s:,.0f}" for s in row.samples) if row.error is None else row.error
        return f"{self.implementation:7} {self.loop or 'blocking':8} {done}"

    def send(self, transfer: Transfer, memfds: list[int], connected: Hook = nothing) -> int:
        if self.implementation == "stdlib":
            return _send_stdlib(transfer, memfds, connected)
        assert self.loop is not None
        codec: Codec = self.implementation
        return _loops.run(self.loop, _send_state, codec, transfer, memfds, connected)

    def receive(
        self, conn: Connection, transfer: Transfer, repeat: int, accepted: Hook = nothing
    ) -> None:
        if self.implementation == "stdlib":
            _receive_stdlib(conn, transfer, repeat, accepted)
        else:
            assert self.loop is not None
            _loops.run(self.loop, _receive_state, conn, transfer, repeat, accepted)


@dataclass(frozen=True)
class Transfer:
    """Where to meet and how many descriptors to move."""

    path: str
    count: int
    #: Allowed for one whole transfer before it counts as hung.
    timeout: float
    #: The CPU the receiver runs on (None: wherever the scheduler puts it).
    cpu: int | None = None


@dataclass(frozen=True)
class Ready:
    """The receiver listens."""


@dataclass(frozen=True)
class Accepted:
    """The receiver holds a connection and goes on to receive (when asked to say so)."""


@dataclass(frozen=True)
class Received:
    """One transfer as the receiver saw it."""

    count: int
    #: time.monotonic_ns() when the receiver held the last descriptor.
    end_ns: int


def add_arguments(parser: argparse._ArgumentGroup) -> None:
    """This figure's options."""
    parser.add_argument(
        "--fds",
        type=_positive,
        default=10_000,
        metavar="N",
        help="descriptors (memfds) per transfer (default 10000)",
    )
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="leave the sender and receivers wherever the scheduler puts them "
        "(default: one CPU each)",
    )


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def split_cpus() -> tuple[int, int] | None:
    """A CPU for the sender and another for the receivers, if there are two.

    With both processes free to move, the scheduler sometimes wakes the
    receiver on the sender's CPU and keeps them there for many transfers,
    each then taking as long as both sides together: on two CPUs that
    decided whole runs, for whichever case it happened to.  Pinned, every
    case and the baseline get the same two CPUs.
    """
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else None


def cases() -> list[Case]:
    """The blocking baseline first, then each codec on every loop."""
    out = [Case("stdlib", None)]
    for implementation in ("native", "qemu"):
        for loop in _loops.LOOPS:
            out.append(Case(implementation, loop))
    return out


def raise_fd_limit(count: int) -> str | None:
    """Raise the soft RLIMIT_NOFILE to the hard one; say why ``count`` fds cannot fit, if so."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = hard
    if hard == resource.RLIM_INFINITY:
        # The kernel caps any limit at fs.nr_open.
        with open("/proc/sys/fs/nr_open") as f:
            ceiling = int(f.read())
    if soft < ceiling:
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
    if count + HEADROOM > ceiling:
        return (
            f"{count} descriptors need RLIMIT_NOFILE of at least {count + HEADROOM}; "
            f"the hard limit is {ceiling} (raise it with ulimit -Hn, or measure fewer with --fds)"
        )
    return None


def run(options: argparse.Namespace) -> Figure:
    """Measure every case and return the table."""
    count: int = options.fds
    # A transfer lasts milliseconds, as long as this machine's hiccups: take
    # enough of them for the median to see past one.
    repeat: int = max(options.repeat, MIN_ROUNDS)
    figure = new_figure(
        NAME,
        f"fdrate: {count} memfds between two processes",
        count,
        repeat,
        TIMED,
        "ratio: the median over rounds of each transfer's rate over the stdlib transfer of "
        "the same round; target for native: at least 0.80",
    )
    too_many = raise_fd_limit(count)
    # The sender's window follows its (now raised) descriptor limit.
    from fdchannel.codecs import native

    window = native.default_window()
    figure.parameters["native_window"] = window
    figure.notes.append(f"native: the receiver acknowledges every {window} descriptors")
    cpus = split_cpus() if options.pin else None
    figure.parameters["pinned"] = cpus is not None
    measure_figure(figure, cases(), count, repeat, cpus, too_many)
    return figure


def new_figure(name: str, title: str, count: int, repeat: int, *notes: str) -> Figure:
    """An empty table of fds/s, its rows paired round by round with the stdlib baseline's."""
    return Figure(
        name=name,
        title=title,
        columns=("implementation", "loop", "per message"),
        unit="fds/s",
        ratio_heading="vs stdlib",
        value_format="{:,.0f}",
        paired=True,
        parameters={"fds": count, "repeat": repeat},
        notes=list(notes),
    )


M = TypeVar("M", bound=Measured)


def measure_figure(
    figure: Figure,
    cases: Sequence[M],
    count: int,
    repeat: int,
    cpus: tuple[int, int] | None,
    too_many: str | None,
    rows: Callable[[Sequence[M], list[int], int, str, int | None], list[Row]] | None = None,
) -> None:
    """Add a row per case to ``figure``: ``repeat`` transfers of ``count`` memfds each.

    ``cpus``: the sender's and the receivers' (see split_cpus), or None to
    leave them unpinned; ``too_many``: why ``count`` descriptors cannot fit
    (see raise_fd_limit), every row's error then; ``rows``: what measures
    them, given what ``measure`` is given (bench.cold has its own).
    """
    sockdir = tempfile.mkdtemp(prefix="fdchbench-")
    memfds: list[int] = []
    affinity = os.sched_getaffinity(0)
    if cpus is not None:
        os.sched_setaffinity(0, {cpus[0]})
        figure.notes.append(f"the sender runs on CPU {cpus[0]}, every receiver on CPU {cpus[1]}")
    try:
        if too_many is None:
            memfds.extend(
                os.memfd_create(f"{figure.name}{i}", os.MFD_CLOEXEC) for i in range(count)
            )
        # The harness's own objects (10,000 descriptors and their states) out
        # of the collector's way: a full collection walking them would land
        # in whichever transfer happens to trigger it.
        gc.collect()
        gc.freeze()
        if too_many is None:
            receiver_cpu = None if cpus is None else cpus[1]
            figure.rows.extend((rows or measure)(cases, memfds, repeat, sockdir, receiver_cpu))
        else:
            figure.rows.extend(dataclasses.replace(c.row(), error=too_many) for c in cases)
    finally:
        for fd in memfds:
            os.close(fd)
        shutil.rmtree(sockdir, ignore_errors=True)
        os.sched_setaffinity(0, affinity)


def measure(
    cases: Sequence[Measured], memfds: list[int], repeat: int, sockdir: str, cpu: int | None = None
) -> list[Row]:
    """``repeat`` transfers of every memfd per case, as fds/s samples.

    The cases take turns, one transfer each per round: this machine's speed
    drifts by tens of percent within seconds, and turns give every case,
    the baseline included, the same share of fast and slow moments.
    """
    rows = {case: case.row() for case in cases}
    samples: dict[Measured, list[float]] = {case: [] for case in cases}
    # Generous: a hang is a failure, a slow run is a number.
    timeout = 60.0 + len(memfds) / 1000
    with contextlib.ExitStack() as stack:
        peers: dict[Measured, tuple[Peer, Transfer]] = {}
        for case in cases:
            if case.loop is not None and (why := _loops.missing(case.loop)) is not None:
                rows[case] = dataclasses.replace(rows[case], error=why)
                continue
            path = os.path.join(sockdir, f"{case.name}.sock")
            transfer = Transfer(path, len(memfds), timeout, cpu)
            try:
                peer = stack.enter_context(start_peer(_receiver, case, transfer, WARM_UP + repeat))
                peer.expect(Ready, START_TIMEOUT)
            except Exception as exc:
                rows[case] = _failed(rows[case], exc)
                continue
            peers[case] = (peer, transfer)
        for round_ in range(WARM_UP + repeat):
            for case, (peer, transfer) in list(peers.items()):
                try:
                    received, start_ns = _one_transfer(peer, case, transfer, memfds)
                    if received.count != len(memfds):
                        raise PeerError(f"the receiver got {received.count} of {len(memfds)}")
                except Exception as exc:
                    # One broken case must not cost the rest of the table.
                    rows[case] = _failed(rows[case], exc)
                    del peers[case]
                    continue
                if round_ >= WARM_UP:
                    samples[case].append(received.count / ((received.end_ns - start_ns) / 1e9))
    for case in cases:
        row = rows[case]
        if row.error is None:
            rows[case] = row = dataclasses.replace(row, samples=tuple(samples[case]))
        print(f"  {case.progress(row)}", file=sys.stderr, flush=True)
    return [rows[case] for case in cases]


def _failed(row: Row, exc: Exception) -> Row:
    return dataclasses.replace(row, error=f"{type(exc).__name__}: {exc}")


def _one_transfer(
    peer: Peer, case: Measured, transfer: Transfer, memfds: list[int]
) -> tuple[Received, int]:
    try:
        start_ns = case.send(transfer, memfds)
    except Exception as exc:
        raise peer.explain(exc) from exc
    return peer.expect(Received, transfer.timeout), start_ns


def _kernel_timeout(sock: socket.socket, seconds: float) -> None:
    # SO_RCVTIMEO/SO_SNDTIMEO bound a hang and keep the calls plain blocking
    # ones (settimeout() would make Python poll() before each).
    timeval = struct.pack("ll", int(seconds), 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


# --- the receiving child -------------------------------------------------------------------


def _receiver(
    conn: Connection, case: Measured, transfer: Transfer, repeat: int, announce: bool = False
) -> None:
    """Child process: listen, then take ``repeat`` transfers, reporting each;
    ``announce``: also say Accepted once each is connected, before receiving it."""
    if transfer.cpu is not None:
        os.sched_setaffinity(0, {transfer.cpu})
    too_many = raise_fd_limit(transfer.count)
    if too_many is not None:
        raise RuntimeError(too_many)
    accepted: Hook = nothing
    if announce:
        accepted = functools.partial(conn.send, Accepted())
    try:
        case.receive(conn, transfer, repeat, accepted)
    finally:
        # A stdlib listener leaves its socket file behind (fdchannel's removes it).
        if os.path.lexists(transfer.path):
            os.unlink(transfer.path)


def _receive_stdlib(
    conn: Connection, transfer: Transfer, repeat: int, accepted: Hook = nothing
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(transfer.path)
        server.listen()
        _kernel_timeout(server, transfer.timeout)
        conn.send(Ready())
        for _ in range(repeat):
            peer, _ = server.accept()
            with peer:
                _kernel_timeout(peer, transfer.timeout)
                accepted()
                held: list[int] = []
                try:
                    while len(held) < transfer.count:
                        data, fds, _flags, _ = socket.recv_fds(peer, PER_MESSAGE, PER_MESSAGE)
                        held.extend(fds)
                        if not data:
                            break
                    end_ns = time.monotonic_ns()
                finally:
                    for fd in held:
                        os.close(fd)
            conn.send(Received(len(held), end_ns))


async def _receive_state(
    conn: Connection, transfer: Transfer, repeat: int, accepted: Hook = nothing
) -> None:
    # The names a program imports at its top: no lazy export in the timed path.
    from fdchannel import listen, receive_state
    from fdchannel.address import UnixAddress

    async with await listen(UnixAddress(transfer.path)) as listener:
        conn.send(Ready())
        for _ in range(repeat):
            with anyio.fail_after(transfer.timeout):
                async with await listener.accept() as stream:
                    accepted()
                    with await receive_state(stream) as state:
                        end_ns = time.monotonic_ns()
                        held = len(state.fds)
            conn.send(Received(held, end_ns))


# --- the sending parent --------------------------------------------------------------------


def _send_stdlib(transfer: Transfer, memfds: list[int], connected: Hook = nothing) -> int:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        _kernel_timeout(sock, transfer.timeout)
        sock.connect(transfer.path)
        connected()
        start_ns = time.monotonic_ns()
        for i in range(0, len(memfds), PER_MESSAGE):
            socket.send_fds(sock, [b"x"], memfds[i : i + PER_MESSAGE])
        sock.shutdown(socket.SHUT_WR)
    return start_ns


async def _send_state(
    codec: Codec, transfer: Transfer, memfds: list[int], connected: Hook = nothing
) -> int:
    # The names a program imports at its top: no lazy export in the timed path.
    from fdchannel import FdState, NamedFd, connect, send_state
    from fdchannel.address import UnixAddress

    state = FdState([NamedFd("fd", i, fd) for i, fd in enumerate(memfds)])
    with anyio.fail_after(transfer.timeout):
        async with await connect(UnixAddress(transfer.path)) as stream:
            connected()
            start_ns = time.monotonic_ns()
            await send_state(stream, state, codec=codec)
    return start_ns
