"""The cold figure runs end to end, small: every row measured, paired with its baseline.

Not a timing test: three rounds of 100 memfds only show that the fresh
receivers and senders start, connect, transfer and report.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import cold
from bench.__main__ import build_parser
from bench._report import Figure, Row

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 3


def test_the_figure_runs_small(tmp_path: Path) -> None:
    out = tmp_path / "cold.json"
    argv = ["-m", "bench", "cold", "--quick", "--rounds", str(ROUNDS), "--fds", "100"]
    done = subprocess.run(
        [sys.executable, *argv, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (figure,) = json.loads(out.read_text())["figures"]
    rows = figure["rows"]
    # Per fresh end: stdlib, fdchannel.blocking, then fdchannel on each loop.
    assert [(r["fresh end"], r["implementation"], r["loop"]) for r in rows] == [
        (fresh, implementation, loop)
        for fresh in ("receiver", "sender")
        for implementation, loop in [
            ("stdlib", "none"),
            ("fdchannel.blocking", "none"),
            ("fdchannel", "asyncio"),
            ("fdchannel", "uvloop"),
            ("fdchannel", "trio"),
        ]
    ]
    for row in rows:
        assert row["error"] is None
        assert len(row["samples"]) == ROUNDS
        assert all(ms > 0 for ms in row["samples"])
        assert row["ratio"] > 0
    assert figure["parameters"]["rounds"] == ROUNDS
    assert any(note.startswith("quick:") for note in figure["notes"])
    assert "speed vs stdlib" in done.stdout


@pytest.mark.parametrize(
    ("argv", "rounds"),
    [
        ([], cold.MIN_ROUNDS),
        (["--rounds", "3"], cold.MIN_ROUNDS),  # a measurement takes at least 21
        (["--rounds", "40"], 40),
        (["--rounds", "3", "--quick"], 3),
    ],
)
def test_rounds(argv: list[str], rounds: int) -> None:
    assert cold.rounds_of(build_parser().parse_args(["cold", *argv])) == rounds


def test_verdicts_against_the_target() -> None:
    figure = Figure("f", "t", ("row",), "ms", "speed", paired=True, speed_ratio=True)
    figure.rows = [
        Row(("raw",), (2.0, 2.0, 2.0), baseline=True),
        Row(("fast",), (2.0, 2.2, 2.1)),  # 0.95 x raw in the median round
        Row(("slow",), (4.0, 4.0, 4.0)),
        Row(("broken",), error="RuntimeError: no"),
    ]
    assert cold.verdicts(figure) == [
        "fast: 0.95 x raw, meets the 0.9",
        "slow: 0.50 x raw, BELOW the 0.9",
    ]
