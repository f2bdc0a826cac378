"""The first transfer in a fresh process, into one and out of one, next to raw SCM_RIGHTS.

A migration or an upgrade is one transfer into a process that has just
started, from a process that sends once.  Every measured transfer here
has a fresh process at one end: a child started for that transfer alone,
exec'd (multiprocessing's spawn: a new interpreter that shares no
objects, caches or heap with this one), that imported what it needs and
connected (or accepted) before the clock starts.  Whatever it has not run yet runs in
the timed path, as in a new generation of a server.

* receiver: the fresh process receives the state once, from this process.
* sender: the fresh process sends it once (its first ``send_state``, or
  ``send_fds``) to a receiver started once per row that has received every
  round before.

The state is ``--fds`` named memfds (10,000).  A transfer is timed from
the sender's first send until the receiver holds the last descriptor
(CLOCK_MONOTONIC in both processes).  Rows: raw stdlib
``socket.send_fds``/``recv_fds`` (253 per message, no framing: the
baseline), ``fdchannel.blocking``, and ``fdchannel`` on each event loop,
native codec: the ``blocking`` figure's cases, run by fdrate's harness.
The first round warms the ends that stay (this process, the receivers of
fresh senders) and is not counted.  In every round each row takes its
turn, in alternating order, so the machine's drift hits the baseline and
the rest alike; the ratio is the median over rounds of the baseline's
time over the row's, its speed next to raw.  The sender runs on one CPU
and the receiver on another (fdrate's ``--no-pin``: wherever).

``python -m bench cold [--rounds N] [--fds N]``; ``--quick`` takes fewer
than 21 rounds, to check that the figure runs, not to measure.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Literal

from . import _loops, blocking, fdrate
from ._peer import Peer, PeerError, start_peer
from ._report import Figure, Row
from .fdrate import Accepted, Hook, Ready, Received, Transfer, nothing

__all__ = [
    "HELP",
    "MIN_ROUNDS",
    "NAME",
    "TARGET",
    "add_arguments",
    "cases",
    "rounds_of",
    "run",
    "verdicts",
]

NAME = "cold"
HELP = "one transfer into (and out of) a freshly exec'd process, next to raw send_fds"

Fresh = Literal["receiver", "sender"]
#: Fewest rounds a measurement takes (--quick goes below).
MIN_ROUNDS = 21
#: Unmeasured rounds first, for the ends that stay.
WARM_UP = 1
#: The issue's target: fdchannel's speed next to raw.
TARGET = 0.9


@dataclass(frozen=True)
class Case:
    """One row: which end is fresh, and what both ends run (``bench.blocking``'s case).

    What fdrate's harness needs of a case (``fdrate.Measured``).
    """

    fresh: Fresh
    ends: blocking.Case

    @property
    def loop(self) -> _loops.Loop | None:
        return self.ends.loop

    @property
    def name(self) -> str:
        return f"{self.fresh}-{self.ends.name}"

    def row(self) -> Row:
        implementation, loop, _ = self.ends.row().labels
        return Row(
            (self.fresh, implementation, loop),
            group=self.fresh,
            baseline=self.ends.kind == "stdlib",
        )

    def progress(self, row: Row) -> str:
        done = " ".join(f"{s:.2f}" for s in row.samples) if row.error is None else row.error
        return f"{self.fresh:8} {self.ends.kind:8} {self.loop or 'none':8} {done}"

    def send(self, transfer: Transfer, memfds: list[int], connected: Hook = nothing) -> int:
        return self.ends.send(transfer, memfds, connected)

    def receive(
        self, conn: Connection, transfer: Transfer, repeat: int, accepted: Hook = nothing
    ) -> None:
        self.ends.receive(conn, transfer, repeat, accepted)


@dataclass(frozen=True)
class Connected:
    """The fresh sender is connected and waits for Go."""


@dataclass(frozen=True)
class Go:
    """Start the clock and send."""


@dataclass(frozen=True)
class Sent:
    """The fresh sender's transfer as it saw it."""

    #: time.monotonic_ns() just before its first send.
    start_ns: int


def cases() -> list[Case]:
    """Per fresh end: the stdlib baseline, fdchannel.blocking, then each event loop."""
    return [Case(fresh, ends) for fresh in ("receiver", "sender") for ends in blocking.cases()]


def add_arguments(parser: argparse._ArgumentGroup) -> None:
    """This figure's options (``--fds`` and ``--no-pin`` are fdrate's, shared)."""
    parser.add_argument(
        "--rounds",
        type=fdrate._positive,
        default=MIN_ROUNDS,
        metavar="N",
        help=f"paired rounds, a fresh process per row in each (default and least {MIN_ROUNDS})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="take --rounds as given, even below the least: a check that it runs",
    )


def rounds_of(options: argparse.Namespace) -> int:
    """The rounds to measure: ``--rounds``, at least MIN_ROUNDS unless ``--quick``."""
    rounds: int = options.rounds
    return rounds if options.quick else max(rounds, MIN_ROUNDS)


def run(options: argparse.Namespace) -> Figure:
    """Measure every case and return the table, a verdict per row in its notes."""
    count: int = getattr(options, "fds", 10_000)
    rounds = rounds_of(options)
    figure = Figure(
        name=NAME,
        title=f"cold: one transfer of {count} named memfds, one end a freshly exec'd process",
        columns=("fresh end", "implementation", "loop"),
        unit="ms",
        ratio_heading="speed vs stdlib",
        higher_is_better=False,
        paired=True,
        speed_ratio=True,
        parameters={"fds": count, "rounds": rounds, "warm_up": WARM_UP, "target": TARGET},
        notes=[
            "timed from the sender's first send until the receiver holds the last descriptor; "
            "the fresh end imported what it needs and connected before the clock starts, "
            f"the other end is warm ({WARM_UP} unmeasured round first)",
            "speed: the median over rounds of the stdlib time over the row's, "
            "rows taking turns in each round",
        ],
    )
    too_many = fdrate.raise_fd_limit(count)
    cpus = fdrate.split_cpus() if getattr(options, "pin", True) else None
    figure.parameters["pinned"] = cpus is not None
    fdrate.measure_figure(figure, cases(), count, rounds, cpus, too_many, measure)
    figure.notes.extend(verdicts(figure))
    if options.quick:
        figure.notes.append(f"quick: {rounds} round(s), a check that the figure runs")
    return figure


def verdicts(figure: Figure, target: float = TARGET) -> list[str]:
    """A line per measured fdchannel row: its speed next to raw, against ``target``."""
    notes = []
    for row in figure.rows:
        ratio = figure.ratio(row)
        if not row.baseline and ratio is not None:
            verdict = "meets" if ratio >= target else "BELOW"
            notes.append(f"{' '.join(row.labels)}: {ratio:.2f} x raw, {verdict} the {target}")
    return notes


def measure(
    cases: Sequence[Case], memfds: list[int], rounds: int, sockdir: str, cpu: int | None = None
) -> list[Row]:
    """``rounds`` transfers per case, each with a fresh process at one end, in ms.

    This process sends to the fresh receivers (``memfds``); each fresh
    sender's receiver is a child started here once per row, on ``cpu``.
    """
    rows = {case: case.row() for case in cases}
    samples: dict[Case, list[float]] = {case: [] for case in cases}
    timeout = 60.0 + len(memfds) / 1000
    with contextlib.ExitStack() as stack:
        live: list[Case] = []
        receivers: dict[Case, Peer] = {}
        for case in cases:
            if case.loop is not None and (why := _loops.missing(case.loop)) is not None:
                rows[case] = dataclasses.replace(rows[case], error=why)
                continue
            if case.fresh == "sender":
                transfer = Transfer(_path(sockdir, case, None), len(memfds), timeout, cpu)
                try:
                    receivers[case] = peer = stack.enter_context(
                        start_peer(fdrate._receiver, case, transfer, WARM_UP + rounds, True)
                    )
                    peer.expect(Ready, fdrate.START_TIMEOUT)
                except Exception as exc:
                    rows[case] = _failed(rows[case], exc)
                    continue
            live.append(case)
        for round_ in range(WARM_UP + rounds):
            # Alternate the order: a slow stretch then falls on different rows.
            for case in list(live if round_ % 2 == 0 else reversed(live)):
                try:
                    if case.fresh == "receiver":
                        transfer = Transfer(_path(sockdir, case, round_), len(memfds), timeout, cpu)
                        elapsed_ns = _into_fresh(case, transfer, memfds)
                    else:
                        transfer = Transfer(_path(sockdir, case, None), len(memfds), timeout)
                        elapsed_ns = _out_of_fresh(case, transfer, receivers[case])
                except Exception as exc:
                    # One broken case must not cost the rest of the table.
                    rows[case] = _failed(rows[case], exc)
                    live.remove(case)
                    continue
                if round_ >= WARM_UP:
                    samples[case].append(elapsed_ns / 1e6)
    for case in cases:
        row = rows[case]
        if row.error is None:
            rows[case] = row = dataclasses.replace(row, samples=tuple(samples[case]))
        print(f"  {case.progress(row)}", file=sys.stderr, flush=True)
    return [rows[case] for case in cases]


def _path(sockdir: str, case: Case, round_: int | None) -> str:
    """A socket file per fresh receiver (none is reused), one per fresh sender's row."""
    suffix = "" if round_ is None else f"-{round_}"
    return os.path.join(sockdir, f"{case.name}{suffix}.sock")


def _failed(row: Row, exc: Exception) -> Row:
    return dataclasses.replace(row, error=f"{type(exc).__name__}: {exc}")


def _checked(received: Received, transfer: Transfer) -> Received:
    if received.count != transfer.count:
        raise PeerError(f"the receiver got {received.count} of {transfer.count}")
    return received


def _into_fresh(case: Case, transfer: Transfer, memfds: list[int]) -> int:
    """One transfer from here into a fresh receiver; nanoseconds."""
    with start_peer(fdrate._receiver, case, transfer, 1, True) as receiver:
        receiver.expect(Ready, fdrate.START_TIMEOUT)
        # The clock starts once the receiver holds the connection.
        accepted = functools.partial(receiver.expect, Accepted, transfer.timeout)
        try:
            start_ns = case.send(transfer, memfds, accepted)
        except Exception as exc:
            raise receiver.explain(exc) from exc
        received = _checked(receiver.expect(Received, transfer.timeout), transfer)
    return received.end_ns - start_ns


def _out_of_fresh(case: Case, transfer: Transfer, receiver: Peer) -> int:
    """One transfer from a fresh sender to ``receiver`` (listening); nanoseconds."""
    with start_peer(_fresh_sender, case, transfer) as sender:
        sender.expect(Connected, fdrate.START_TIMEOUT)
        receiver.expect(Accepted, transfer.timeout)
        sender.send(Go())
        received = _checked(receiver.expect(Received, transfer.timeout), transfer)
        sent = sender.expect(Sent, transfer.timeout)
    return received.end_ns - sent.start_ns


# --- the fresh sender (a child) --------------------------------------------------------------


def _fresh_sender(conn: Connection, case: Case, transfer: Transfer) -> None:
    """Child process: make the memfds, connect, say Connected, send once on Go.

    It runs on the CPU its parent is pinned to (affinity survives exec).
    """
    too_many = fdrate.raise_fd_limit(transfer.count)
    if too_many is not None:
        raise RuntimeError(too_many)
    memfds = [os.memfd_create(f"cold{i}", os.MFD_CLOEXEC) for i in range(transfer.count)]
    try:
        start_ns = case.send(transfer, memfds, functools.partial(_await_go, conn, transfer))
    finally:
        for fd in memfds:
            os.close(fd)
    conn.send(Sent(start_ns))


def _await_go(conn: Connection, transfer: Transfer) -> None:
    conn.send(Connected())
    if not conn.poll(transfer.timeout):
        raise PeerError(f"no Go for {transfer.timeout:.0f} s")
    message = conn.recv()
    if not isinstance(message, Go):
        raise PeerError(f"expected Go, got {message!r}")
