"""Command-line start-up: ``fdchannel --help`` and a probe, next to ``python -c pass``.

Each row is the wall time of a whole process, from spawn to exit, measured
in this process around ``subprocess.run``.  The children run with bytecode
caching on (``PYTHONDONTWRITEBYTECODE`` removed) after warm-up runs, so the
numbers are those of an installed package with its ``.pyc`` files, not of
compiling the sources on every start.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

from ._report import Figure, Row

__all__ = ["GOAL_MS", "HELP", "NAME", "add_arguments", "run"]

NAME = "startup"
HELP = "command-line start-up time: fdchannel --help and probe, next to python -c pass"

#: What ``fdchannel --help`` should stay under on a developer machine.
GOAL_MS = 100.0
MIN_RUNS = 20
#: Runs not counted: they write the bytecode caches and warm the page cache.
WARMUP = 2
#: A start that takes this long has hung.
TIMEOUT = 30.0


def add_arguments(parser: argparse._ArgumentGroup) -> None:
    """This figure's options."""
    parser.add_argument(
        "--startup-runs",
        type=int,
        default=21,
        metavar="N",
        help=f"processes started per row, at least {MIN_RUNS} (default 21)",
    )


def _fdchannel() -> list[str]:
    """The console script next to this interpreter, else ``python -m fdchannel``."""
    script = Path(sys.executable).with_name("fdchannel")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "fdchannel"]


def commands() -> list[tuple[str, list[str], tuple[int, ...]]]:
    """(label, argv, exit statuses that count as success) per row, the baseline first."""
    fdchannel = _fdchannel()
    return [
        ("python -c pass", [sys.executable, "-c", "pass"], (0,)),
        ("fdchannel --help", [*fdchannel, "--help"], (0,)),
        ("python -m fdchannel --help", [sys.executable, "-m", "fdchannel", "--help"], (0,)),
        # Exit status 1: the probe finds that nobody listens there, as it should.
        ("fdchannel probe unix:/nonexistent", [*fdchannel, "probe", "unix:/nonexistent"], (1,)),
    ]


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def measure(label: str, argv: list[str], expected: tuple[int, ...], runs: int) -> Row:
    """``runs`` starts of ``argv``, in milliseconds."""
    row = Row((label,), group="startup", baseline=label == "python -c pass")
    env = _environment()
    samples = []
    try:
        for index in range(WARMUP + runs):
            started = time.perf_counter()
            done = subprocess.run(argv, env=env, capture_output=True, timeout=TIMEOUT, check=False)
            elapsed = time.perf_counter() - started
            if done.returncode not in expected:
                error = done.stderr.decode(errors="replace").strip().splitlines()
                raise RuntimeError(
                    f"exit status {done.returncode}: {error[-1] if error else 'no message'}"
                )
            if index >= WARMUP:
                samples.append(elapsed * 1000)
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        return dataclasses.replace(row, error=f"{type(exc).__name__}: {exc}")
    return dataclasses.replace(row, samples=tuple(samples))


def run(options: argparse.Namespace) -> Figure:
    """Start every command ``--startup-runs`` times and return the table."""
    runs = max(options.startup_runs, MIN_RUNS)
    figure = Figure(
        name=NAME,
        title="command-line start-up, spawn to exit",
        columns=("command",),
        unit="ms",
        ratio_heading="vs python -c pass",
        value_format="{:.1f}",
        higher_is_better=False,
        statistic="median",
        parameters={"runs": runs, "warmup": WARMUP, "goal_ms": GOAL_MS},
        notes=[
            f"median of {runs} runs after {WARMUP} warm-up runs; bytecode caches on",
        ],
    )
    for label, argv, expected in commands():
        print(f"  {label}", end="", file=sys.stderr, flush=True)
        row = measure(label, argv, expected, runs)
        figure.rows.append(row)
        value = figure.value(row)
        print(f" {value:.1f} ms" if value is not None else f" {row.error}", file=sys.stderr)
    help_row = next(row for row in figure.rows if row.labels == ("fdchannel --help",))
    help_ms = figure.value(help_row)
    if help_ms is not None:
        verdict = "within" if help_ms <= GOAL_MS else "OVER"
        figure.notes.append(
            f"fdchannel --help: {help_ms:.1f} ms, {verdict} the {GOAL_MS:.0f} ms goal"
        )
    return figure
