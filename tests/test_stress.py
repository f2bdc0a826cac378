"""``make stress`` in the suite: it takes seconds, and must find nothing left behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_stress_leaves_nothing_behind() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.stress"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if " clean " in line]
    assert len(rows) == 6, result.stdout
