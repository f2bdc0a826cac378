"""The QEMU version matrix: which cpr-transfer test passed on which QEMU and event loop.

A pytest plugin (``pytest -p tests.interop.matrix``, as ``make test`` and
``make interop-qemu`` run it) that prints, after the run, one row per kind of
test and one column per QEMU version or cross-version route; a cell sums up
the runs on asyncio, uvloop and trio.  Below the table it says which cells
were skipped and why: the tests' reasons, and first the one ``qemu_cache.py``
passes in ``FDCHANNEL_QEMU_SKIPPED`` (e.g. not root).

A test names its row with ``@row(...)``; its column is the ``matrix_column``
of one of its parameters (a QEMU version, a route), and a parameter with a
``matrix_row`` (a case of a table) ends the row's name: "ROW: CASE".  Files
that know nothing of this are placed by ``FILE_CELLS``.  Tests in neither
are left out.  A number a test records with ``record_property`` under a
name in ``MEASURES`` (the update's downtime) is shown in its cell, the mean
of the passed runs.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .qemu_cache import ROOT_VARIABLES, SKIPPED_VARIABLE

if TYPE_CHECKING:  # only in annotations: qemu_cache.py imports the rows without pytest
    import pytest

__all__ = ["COLUMNS", "ROWS", "row"]

#: test_qemu_update.py's rows, each with the async API and the blocking one.
_UPDATE_ROWS = (
    "update_qemu",
    *(
        f"update_qemu rollback: {case}"
        for case in (
            "bad option",
            "no such program",
            "killed after the cpr state",
            "hangs after the cpr state",
            "never resumes (-S)",
        )
    ),
    "check_qemu",
    "update_qemu cpr-exec",
    "update_qemu cpr-exec rollback: no such program",
)
ROWS = (
    "QEMU → Incoming",
    "QEMU → blocking Incoming",
    "Outgoing → QEMU",
    "blocking Outgoing → QEMU",
    "no target: 10.0 refuses 11.1's state",
    "relay QEMU → QEMU",
    "probe --listen ← QEMU",
    "cpr-exec via probe",
    *_UPDATE_ROWS,
    *(f"blocking {name}" for name in _UPDATE_ROWS),
)
COLUMNS = ("10.0", "11.1", "11.1 → 10.0", "10.0 → 11.1")
LOOPS = ("asyncio", "uvloop", "trio")
#: Test files placed by name: (row, column).  The cpr-exec test runs on 11.1.
FILE_CELLS = {"test_qemu_cpr_exec.py": ("cpr-exec via probe", "11.1")}

#: What a test may record (``record_property(NAME, number)``), as its cell shows the mean.
MEASURES = {"downtime_ms": "downtime {:.1f} ms"}

_ROW_ATTRIBUTE = "matrix_row"
F = TypeVar("F", bound=Callable[..., Any])


def row(name: str) -> Callable[[F], F]:
    """Decorator: the test belongs to row ``name`` of the matrix."""

    def mark(test: F) -> F:
        setattr(test, _ROW_ATTRIBUTE, name)
        return test

    return mark


@dataclass
class Run:
    """One test item: where it goes in the table and how it went."""

    row: str
    column: str
    loop: str
    outcome: str = "not run"
    seconds: float = 0.0
    #: Why it was skipped.
    reason: str = ""
    #: What a passed run recorded, by the names in MEASURES.
    measures: dict[str, float] = field(default_factory=dict)


@dataclass
class Matrix:
    """The plugin: collects runs, prints the table."""

    runs: dict[str, Run] = field(default_factory=dict)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        for item in session.items:  # what is left after -k and -m
            placed = _place(item)
            if placed is not None:
                self.runs[item.nodeid] = placed

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        run = self.runs.get(report.nodeid)
        if run is None or run.outcome == "fail":
            return
        if report.failed:
            run.outcome = "fail"
        elif report.skipped:
            run.outcome, run.reason = "skip", _skip_reason(report)
        elif report.when == "call":
            run.outcome, run.seconds = "pass", report.duration
            run.measures = {
                name: value
                for name, value in report.user_properties
                if name in MEASURES and isinstance(value, int | float)
            }

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.runs:
            return
        terminalreporter.write_sep("=", "QEMU version matrix")
        for line in self.table():
            terminalreporter.write_line(line)
        for line in self.skipped():
            terminalreporter.write_line(line, yellow=True, bold=True)

    def table(self) -> list[str]:
        """The matrix as aligned text lines."""
        cells: dict[tuple[str, str], list[Run]] = defaultdict(list)
        for run in self.runs.values():
            cells[run.row, run.column].append(run)
        rows = _ordered(ROWS, {run.row for run in self.runs.values()})
        columns = _ordered(COLUMNS, {run.column for run in self.runs.values()})
        grid = [["", *columns]]
        grid += [[name, *(_cell(cells.get((name, c), [])) for c in columns)] for name in rows]
        widths = [max(len(line[i]) for line in grid) for i in range(len(grid[0]))]
        lines = [
            "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True))
            for line in grid
        ]
        lines.append(f"(each cell: runs on {', '.join(LOOPS)}; mean seconds of the passed runs)")
        return [line.rstrip() for line in lines]

    def skipped(self) -> list[str]:
        """Which cells were skipped and why (nothing if none was)."""
        runs = [run for run in self.runs.values() if run.outcome == "skip"]
        if not runs:
            return []
        why = os.environ.get(SKIPPED_VARIABLE)
        lines = [f"SKIPPED {len(runs)} of {len(self.runs)} runs" + (f": {why}" if why else "")]
        by_reason: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        for run in runs:
            # A root not named is what ``why`` explains: one group, no reason repeated.
            unnamed = why and any(v in run.reason for v in ROOT_VARIABLES.values())
            by_reason["" if unnamed else run.reason][run.row].add(run.column)
        for reason, rows in sorted(by_reason.items()):
            if reason:
                lines.append(f"  because {reason}:")
            indent = "    " if reason else "  "
            for name in _ordered(ROWS, set(rows)):
                lines.append(f"{indent}{name}: {', '.join(_ordered(COLUMNS, rows[name]))}")
        return lines


def _skip_reason(report: pytest.TestReport) -> str:
    """The reason a skip gave, as pytest -rs shows it."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _ordered(known: tuple[str, ...], seen: set[str]) -> list[str]:
    """The known names first, in their order, then any others seen."""
    return [name for name in known if name in seen] + sorted(seen - set(known))


def _cell(runs: list[Run]) -> str:
    """A cell: "-" if nothing ran there, "pass 3/3, 0.42 s", or what failed where."""
    if not runs:
        return "-"
    outcomes = {run.outcome for run in runs}
    passed = [run.seconds for run in runs if run.outcome == "pass"]
    timing = f" {sum(passed) / len(passed):.2f}s" if passed else ""
    for name, text in MEASURES.items():
        values = [run.measures[name] for run in runs if name in run.measures]
        if values:
            timing += ", " + text.format(sum(values) / len(values))
    if len(outcomes) == 1:
        return f"{outcomes.pop()} {len(runs)}/{len(runs)}{timing}"
    parts = [f"{_shout(o)}:{_loops(runs, o)}" for o in sorted(outcomes)]
    return " ".join(parts) + timing


def _shout(outcome: str) -> str:
    return outcome.upper() if outcome == "fail" else outcome


def _loops(runs: list[Run], outcome: str) -> str:
    """The loops (with a count when a loop ran more than once) that had ``outcome``."""
    counts: dict[str, int] = defaultdict(int)
    for run in runs:
        if run.outcome == outcome:
            counts[run.loop] += 1
    return ",".join(f"{loop}*{n}" if n > 1 else loop for loop, n in sorted(counts.items()))


def _place(item: pytest.Item) -> Run | None:
    """Where ``item`` goes in the table, or None if it is not a matrix test."""
    params: dict[str, Any] = getattr(getattr(item, "callspec", None), "params", {})
    loop = _loop(params.get("anyio_backend"))
    test = getattr(item, "function", None)
    name = getattr(test, _ROW_ATTRIBUTE, None)
    column = next(
        (str(value.matrix_column) for value in params.values() if hasattr(value, "matrix_column")),
        None,
    )
    case = next(
        (str(value.matrix_row) for value in params.values() if hasattr(value, "matrix_row")),
        None,
    )
    if name is not None and column is not None:
        return Run(str(name) if case is None else f"{name}: {case}", column, loop)
    by_file = FILE_CELLS.get(Path(str(item.path)).name)
    if by_file is not None:
        return Run(*by_file, loop)
    return None


def _loop(backend: object) -> str:
    """asyncio, uvloop or trio, from the ``anyio_backend`` parameter."""
    if isinstance(backend, tuple) and len(backend) == 2:
        name, options = backend
        return "uvloop" if "loop_factory" in options else str(name)
    return str(backend) if backend is not None else "-"


def pytest_configure(config: pytest.Config) -> None:
    """Register the plugin's instance (loaded with ``-p tests.interop.matrix``)."""
    config.pluginmanager.register(Matrix(), "qemu-version-matrix")
