"""Descriptor rate of ``fdchannel.blocking`` next to the async API and raw stdlib SCM_RIGHTS.

The same measurement as ``fdrate`` (its harness, children and baseline are
reused): the sender (this process) passes every one of its memfds in each
transfer, timed from its first send until the receiver (a child process)
holds the last descriptor, the cases taking turns round by round.

* stdlib: blocking ``socket.send_fds``/``recv_fds``, 253 per message, no
  framing: the baseline.
* blocking: ``fdchannel.blocking.send_state`` / ``receive_state``, native
  codec, no event loop on either side.
* async: ``fdchannel.send_state`` / ``receive_state``, native codec, on
  each event loop.

``python -m bench.blocking [--fds N] [--repeat N]`` runs it alone.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Literal

from . import _loops, _report, fdrate
from ._peer import Peer, PeerError, start_peer
from ._report import Figure, Row
from .fdrate import Ready, Received, Transfer

__all__ = ["HELP", "NAME", "add_arguments", "run"]

NAME = "blocking"
HELP = "descriptors per second with fdchannel.blocking, next to the async API and stdlib"

Kind = Literal["stdlib", "blocking", "async"]


@dataclass(frozen=True)
class Case:
    """One row: who sends and receives; ``loop`` for the async API only."""

    kind: Kind
    loop: _loops.Loop | None = None

    @property
    def label(self) -> str:
        return f"{self.kind:8} {self.loop or 'none':8}"


def cases() -> list[Case]:
    """The stdlib baseline, fdchannel.blocking, then the async API on every loop."""
    return [Case("stdlib"), Case("blocking"), *(Case("async", loop) for loop in _loops.LOOPS)]


def add_arguments(parser: argparse._ArgumentGroup) -> None:
    """No options of its own: ``--fds`` and ``--no-pin`` are fdrate's, shared."""


def run(options: argparse.Namespace) -> Figure:
    """Measure every case and return the table, with blocking-to-async ratios in its notes."""
    count: int = getattr(options, "fds", 10_000)
    repeat = max(options.repeat, fdrate.MIN_ROUNDS)
    figure = Figure(
        name=NAME,
        title=f"blocking: {count} memfds between two processes, native codec",
        columns=("implementation", "loop", "per message"),
        unit="fds/s",
        ratio_heading="vs stdlib",
        value_format="{:,.0f}",
        paired=True,
        parameters={"fds": count, "repeat": repeat},
        notes=[
            "timed from the sender's first send until the receiver holds the last descriptor, "
            "after an unmeasured warm-up transfer; ratios are medians of per-round ratios",
        ],
    )
    too_many = fdrate.raise_fd_limit(count)
    sockdir = tempfile.mkdtemp(prefix="fdchblk-")
    memfds: list[int] = []
    affinity = os.sched_getaffinity(0)
    cpus = fdrate.split_cpus() if getattr(options, "pin", True) else None
    if cpus is not None:
        os.sched_setaffinity(0, {cpus[0]})
        figure.notes.append(f"the sender runs on CPU {cpus[0]}, every receiver on CPU {cpus[1]}")
    try:
        if too_many is None:
            memfds.extend(os.memfd_create(f"blk{i}", os.MFD_CLOEXEC) for i in range(count))
        gc.collect()
        gc.freeze()  # the harness's objects out of the collector's way (see fdrate)
        receiver_cpu = None if cpus is None else cpus[1]
        if too_many is None:
            figure.rows.extend(measure(memfds, repeat, sockdir, receiver_cpu))
        else:
            figure.rows.extend(dataclasses.replace(_row(c), error=too_many) for c in cases())
    finally:
        for fd in memfds:
            os.close(fd)
        shutil.rmtree(sockdir, ignore_errors=True)
        os.sched_setaffinity(0, affinity)
    figure.notes.extend(_blocking_ratios(figure))
    return figure


def _row(case: Case) -> Row:
    labels = (
        {"stdlib": "stdlib", "blocking": "fdchannel.blocking", "async": "fdchannel"}[case.kind],
        case.loop or "none",
        str(fdrate.PER_MESSAGE),
    )
    return Row(labels, baseline=case.kind == "stdlib")


def _blocking_ratios(figure: Figure) -> list[str]:
    """fdchannel.blocking's rate over the async API's, per loop, round by round."""
    rows = {row.labels[:2]: row for row in figure.rows}
    mine = rows.get(("fdchannel.blocking", "none"))
    if mine is None or not mine.samples:
        return []
    notes = []
    for loop in _loops.LOOPS:
        theirs = rows.get(("fdchannel", loop))
        if theirs is not None and len(theirs.samples) == len(mine.samples):
            ratio = statistics.median(
                a / b for a, b in zip(mine.samples, theirs.samples, strict=True)
            )
            notes.append(f"fdchannel.blocking vs fdchannel on {loop}: {ratio:.2f}")
    return notes


def measure(memfds: list[int], repeat: int, sockdir: str, cpu: int | None) -> list[Row]:
    """``repeat`` transfers per case, taking turns round by round (as fdrate does)."""
    rows = {case: _row(case) for case in cases()}
    samples: dict[Case, list[float]] = {case: [] for case in cases()}
    timeout = 60.0 + len(memfds) / 1000
    with contextlib.ExitStack() as stack:
        peers: dict[Case, tuple[Peer, Transfer]] = {}
        for case in cases():
            if case.loop is not None and (why := _loops.missing(case.loop)) is not None:
                rows[case] = dataclasses.replace(rows[case], error=why)
                continue
            path = os.path.join(sockdir, f"{case.kind}-{case.loop or 'none'}.sock")
            transfer = Transfer(path, len(memfds), timeout, cpu)
            try:
                rounds = fdrate.WARM_UP + repeat
                peer = stack.enter_context(start_peer(_receiver, case, transfer, rounds))
                peer.expect(Ready, fdrate.START_TIMEOUT)
            except Exception as exc:
                rows[case] = fdrate._failed(rows[case], exc)
                continue
            peers[case] = (peer, transfer)
        for round_ in range(fdrate.WARM_UP + repeat):
            for case, (peer, transfer) in list(peers.items()):
                try:
                    received, start_ns = _one_transfer(peer, case, transfer, memfds)
                    if received.count != len(memfds):
                        raise PeerError(f"the receiver got {received.count} of {len(memfds)}")
                except Exception as exc:
                    rows[case] = fdrate._failed(rows[case], exc)
                    del peers[case]
                    continue
                if round_ >= fdrate.WARM_UP:
                    samples[case].append(received.count / ((received.end_ns - start_ns) / 1e9))
    for case, row in rows.items():
        if row.error is None:
            rows[case] = dataclasses.replace(row, samples=tuple(samples[case]))
        print(f"  {case.label} {row.error or 'ok'}", file=sys.stderr, flush=True)
    return list(rows.values())


def _one_transfer(
    peer: Peer, case: Case, transfer: Transfer, memfds: list[int]
) -> tuple[Received, int]:
    try:
        if case.kind == "stdlib":
            start_ns = fdrate._send_stdlib(transfer, memfds)
        elif case.kind == "blocking":
            start_ns = _send_blocking(transfer, memfds)
        else:
            assert case.loop is not None
            start_ns = _loops.run(case.loop, fdrate._send_state, "native", transfer, memfds)
    except Exception as exc:
        raise peer.explain(exc) from exc
    return peer.expect(Received, transfer.timeout), start_ns


# --- the receiving child -------------------------------------------------------------------


def _receiver(conn: Connection, case: Case, transfer: Transfer, repeat: int) -> None:
    """Child process: listen, then take ``repeat`` transfers, reporting each."""
    if transfer.cpu is not None:
        os.sched_setaffinity(0, {transfer.cpu})
    too_many = fdrate.raise_fd_limit(transfer.count)
    if too_many is not None:
        raise RuntimeError(too_many)
    try:
        if case.kind == "stdlib":
            fdrate._receive_stdlib(conn, transfer, repeat)
        elif case.kind == "blocking":
            _receive_blocking(conn, transfer, repeat)
        else:
            assert case.loop is not None
            _loops.run(case.loop, fdrate._receive_state, conn, transfer, repeat)
    finally:
        if os.path.lexists(transfer.path):
            os.unlink(transfer.path)


def _receive_blocking(conn: Connection, transfer: Transfer, repeat: int) -> None:
    from fdchannel import blocking
    from fdchannel.address import UnixAddress

    with blocking.listen(UnixAddress(transfer.path)) as listener:
        conn.send(Ready())
        for _ in range(repeat):
            with (
                listener.accept(transfer.timeout) as stream,
                blocking.receive_state(stream, timeout=transfer.timeout) as state,
            ):
                end_ns = time.monotonic_ns()
                held = len(state.fds)
            conn.send(Received(held, end_ns))


# --- the sending parent --------------------------------------------------------------------


def _send_blocking(transfer: Transfer, memfds: list[int]) -> int:
    import fdchannel
    from fdchannel import blocking
    from fdchannel.address import UnixAddress

    state = fdchannel.FdState([fdchannel.NamedFd("fd", i, fd) for i, fd in enumerate(memfds)])
    with blocking.connect(UnixAddress(transfer.path), timeout=transfer.timeout) as stream:
        start_ns = time.monotonic_ns()
        blocking.send_state(stream, state, timeout=transfer.timeout)
    return start_ns


def main(argv: list[str] | None = None) -> int:
    """This figure alone, with fdrate's options."""
    parser = argparse.ArgumentParser(prog="python -m bench.blocking", description=HELP)
    parser.add_argument("--repeat", type=int, default=3, metavar="N", help="rounds (at least 41)")
    fdrate.add_arguments(parser.add_argument_group("fdrate"))
    figure = run(parser.parse_args(argv))
    print(_report.render(figure))
    return 1 if figure.failed else 0


if __name__ == "__main__":
    sys.exit(main())
