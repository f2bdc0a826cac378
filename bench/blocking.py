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
import statistics
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Literal

from . import _loops, _report, fdrate
from ._report import Figure, Row
from .fdrate import Hook, Ready, Received, Transfer, nothing

__all__ = ["HELP", "NAME", "add_arguments", "run"]

NAME = "blocking"
HELP = "descriptors per second with fdchannel.blocking, next to the async API and stdlib"

Kind = Literal["stdlib", "blocking", "async"]


@dataclass(frozen=True)
class Case:
    """One row: who sends and receives; ``loop`` for the async API only.

    What fdrate's harness needs of a case (``fdrate.Measured``).
    """

    kind: Kind
    loop: _loops.Loop | None = None

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.loop or 'none'}"

    def row(self) -> Row:
        labels = (
            {"stdlib": "stdlib", "blocking": "fdchannel.blocking", "async": "fdchannel"}[self.kind],
            self.loop or "none",
            str(fdrate.PER_MESSAGE),
        )
        return Row(labels, baseline=self.kind == "stdlib")

    def progress(self, row: Row) -> str:
        return f"{self.kind:8} {self.loop or 'none':8} {row.error or 'ok'}"

    def send(self, transfer: Transfer, memfds: list[int], connected: Hook = nothing) -> int:
        if self.kind == "stdlib":
            return fdrate._send_stdlib(transfer, memfds, connected)
        if self.kind == "blocking":
            return _send_blocking(transfer, memfds, connected)
        assert self.loop is not None
        return _loops.run(self.loop, fdrate._send_state, "native", transfer, memfds, connected)

    def receive(
        self, conn: Connection, transfer: Transfer, repeat: int, accepted: Hook = nothing
    ) -> None:
        if self.kind == "stdlib":
            fdrate._receive_stdlib(conn, transfer, repeat, accepted)
        elif self.kind == "blocking":
            _receive_blocking(conn, transfer, repeat, accepted)
        else:
            assert self.loop is not None
            _loops.run(self.loop, fdrate._receive_state, conn, transfer, repeat, accepted)


def cases() -> list[Case]:
    """The stdlib baseline, fdchannel.blocking, then the async API on every loop."""
    return [Case("stdlib"), Case("blocking"), *(Case("async", loop) for loop in _loops.LOOPS)]


def add_arguments(parser: argparse._ArgumentGroup) -> None:
    """No options of its own: ``--fds`` and ``--no-pin`` are fdrate's, shared."""


def run(options: argparse.Namespace) -> Figure:
    """Measure every case and return the table, with blocking-to-async ratios in its notes."""
    count: int = getattr(options, "fds", 10_000)
    repeat = max(options.repeat, fdrate.MIN_ROUNDS)
    figure = fdrate.new_figure(
        NAME,
        f"blocking: {count} memfds between two processes, native codec",
        count,
        repeat,
        f"{fdrate.TIMED}; ratios are medians of per-round ratios",
    )
    too_many = fdrate.raise_fd_limit(count)
    cpus = fdrate.split_cpus() if getattr(options, "pin", True) else None
    fdrate.measure_figure(figure, cases(), count, repeat, cpus, too_many)
    figure.notes.extend(_blocking_ratios(figure))
    return figure


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


# --- the receiving child -------------------------------------------------------------------


def _receive_blocking(
    conn: Connection, transfer: Transfer, repeat: int, accepted: Hook = nothing
) -> None:
    from fdchannel import blocking
    from fdchannel.address import UnixAddress

    with blocking.listen(UnixAddress(transfer.path)) as listener:
        conn.send(Ready())
        for _ in range(repeat):
            with listener.accept(transfer.timeout) as stream:
                accepted()
                with blocking.receive_state(stream, timeout=transfer.timeout) as state:
                    end_ns = time.monotonic_ns()
                    held = len(state.fds)
            conn.send(Received(held, end_ns))


# --- the sending parent --------------------------------------------------------------------


def _send_blocking(transfer: Transfer, memfds: list[int], connected: Hook = nothing) -> int:
    import fdchannel
    from fdchannel import blocking
    from fdchannel.address import UnixAddress

    state = fdchannel.FdState([fdchannel.NamedFd("fd", i, fd) for i, fd in enumerate(memfds)])
    with blocking.connect(UnixAddress(transfer.path), timeout=transfer.timeout) as stream:
        connected()
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
