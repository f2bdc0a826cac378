"""The live-upgrade demo, small: it must pass and report no client errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[1] / "examples" / "live_upgrade.py"


@pytest.mark.parametrize("traffic", [[], ["--steady"]], ids=["in-flight", "steady"])
@pytest.mark.parametrize("codec", ["native", "qemu"])
def test_live_upgrade_demo(codec: str, traffic: list[str]) -> None:
    # --steady: requests keep coming as the old process stops; a request it
    # read too late, or one read by both, breaks a client's counter.
    result = subprocess.run(
        [
            sys.executable,
            str(DEMO),
            "--memory",
            "64M",
            "--clients",
            "20",
            "--codec",
            codec,
            *traffic,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "client errors: 0;" in result.stdout
    assert "live upgrade: OK" in result.stdout
