"""The matrix plugin's placing of a test (row, case, column), its cells' measures, its rows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from .matrix import ROWS, Matrix, Run, _place, row
from .test_qemu_update import FAILURES


@dataclass(frozen=True)
class Version:
    matrix_column: str


@dataclass(frozen=True)
class Case:
    matrix_row: str


def item(test: Any, **params: object) -> pytest.Item:
    """What ``_place`` reads of a collected test: its function, path and parameters."""
    found = SimpleNamespace(
        function=test, path=Path("test_x.py"), callspec=SimpleNamespace(params=params)
    )
    return cast(pytest.Item, found)


@row("update_qemu rollback")
def a_test() -> None:
    """A test of a row (the body never runs)."""


@pytest.mark.parametrize(
    ("params", "placed"),
    [
        pytest.param(
            {"version": Version("10.0"), "anyio_backend": ("trio", {})},
            Run("update_qemu rollback", "10.0", "trio"),
            id="row",
        ),
        pytest.param(
            {"case": Case("bad option"), "version": Version("11.1")},
            Run("update_qemu rollback: bad option", "11.1", "-"),
            id="row and case",
        ),
        pytest.param({"case": Case("bad option")}, None, id="no column"),
    ],
)
def test_place(params: dict[str, object], placed: Run | None) -> None:
    assert _place(item(a_test, **params)) == placed


def test_cell_shows_the_mean_of_a_measure() -> None:
    matrix = Matrix()
    runs = [
        Run("update_qemu", "10.0", "asyncio", "pass", 0.2, measures={"downtime_ms": 3.0}),
        Run("update_qemu", "10.0", "trio", "pass", 0.4, measures={"downtime_ms": 5.0}),
        Run("update_qemu", "11.1", "trio", "fail"),
    ]
    matrix.runs = {str(i): run for i, run in enumerate(runs)}
    header, line, _ = matrix.table()
    assert header.split() == ["10.0", "11.1"]
    assert line.split("  ")[0] == "update_qemu"
    assert "pass 2/2 0.30s, downtime 4.0 ms" in line
    assert line.endswith("fail 1/1")


def test_update_cases_have_their_rows() -> None:
    """test_qemu_update.py's cases are rows of the table, in its order."""
    for api in ("", "blocking "):
        expected = [f"{api}update_qemu rollback: {failure.name}" for failure in FAILURES]
        assert [name for name in ROWS if name in expected] == expected
