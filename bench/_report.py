"""Results shared by every figure: rows, ratios to a baseline, sizes, text tables and JSON."""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = [
    "Figure",
    "Row",
    "Statistic",
    "format_size",
    "parse_size",
    "render",
    "write_json",
]

Statistic = Literal["median", "best"]

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"(\d+)\s*([KMGT]?)(?:i?B)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``1G``, ``1GiB``, ``64k``, ``4096``: binary multiples, at least one byte.

    Raises ArgumentTypeError so that argparse shows the message as it is.
    """
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 4096, 64K, 1M or 1GiB")
    value = int(match[1]) * _UNITS[match[2].upper()]
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a size must be at least one byte")
    return value


def format_size(value: int) -> str:
    """The largest binary unit that divides ``value`` exactly: ``1 GiB``, ``1536 KiB``."""
    for suffix, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value % factor == 0:
            return f"{value // factor} {suffix}"
    return f"{value} B"


@dataclass(frozen=True)
class Row:
    """One measured configuration: its labels, one sample per repetition, or an error."""

    labels: tuple[str, ...]
    samples: tuple[float, ...] = ()
    #: Rows are compared with the baseline row of the same group.
    group: str = ""
    baseline: bool = False
    error: str | None = None
    #: Further facts about the row for the JSON output, such as a peak memory use.
    details: dict[str, object] = field(default_factory=dict)


@dataclass
class Figure:
    """A table of rows measured in one run, with each row's ratio to its group's baseline."""

    name: str
    title: str
    columns: tuple[str, ...]
    unit: str
    #: Heading of the ratio column, naming what the rows are compared with.
    ratio_heading: str
    #: How a value is printed in the table.
    value_format: str = "{:.2f}"
    higher_is_better: bool = True
    statistic: Statistic = "median"
    #: Rows whose samples were taken in turns with the baseline's (sample i of
    #: each in round i): the ratio is then the median of the rounds' ratios,
    #: which a machine whose speed drifts between rounds disturbs less.
    paired: bool = False
    #: The ratio of a time is the baseline's over the row's: its speed next to the
    #: baseline's (above 1: faster), where a figure of times has it the other way.
    speed_ratio: bool = False
    parameters: dict[str, object] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """Whether any row could not be measured."""
        return any(row.error is not None for row in self.rows)

    def value(self, row: Row) -> float | None:
        """The row's summary of its samples (median, or best in the figure's direction)."""
        if row.error is not None or not row.samples:
            return None
        if self.statistic == "median":
            return statistics.median(row.samples)
        return max(row.samples) if self.higher_is_better else min(row.samples)

    def ratio(self, row: Row) -> float | None:
        """``value(row) / value(baseline)`` for the baseline of the row's group.

        For a paired figure: the median over rounds of sample / baseline sample.
        With ``speed_ratio`` each quotient is the other way up.
        """
        value = self.value(row)
        for other in self.rows:
            if other.baseline and other.group == row.group:
                if self.paired and value is not None and len(row.samples) == len(other.samples):
                    return statistics.median(
                        self._quotient(mine, theirs)
                        for mine, theirs in zip(row.samples, other.samples, strict=True)
                    )
                base = self.value(other)
                if value is not None and base:
                    return self._quotient(value, base)
        return None

    def _quotient(self, mine: float, base: float) -> float:
        return base / mine if self.speed_ratio else mine / base

    def to_json(self) -> dict[str, object]:
        """The figure as plain data, every sample included."""
        return {
            "name": self.name,
            "title": self.title,
            "unit": self.unit,
            "statistic": self.statistic,
            "higher_is_better": self.higher_is_better,
            "speed_ratio": self.speed_ratio,
            "parameters": self.parameters,
            "notes": self.notes,
            "rows": [
                {
                    **dict(zip(self.columns, row.labels, strict=True)),
                    "group": row.group,
                    "baseline": row.baseline,
                    "value": self.value(row),
                    "ratio": self.ratio(row),
                    "samples": list(row.samples),
                    "error": row.error,
                    **row.details,
                }
                for row in self.rows
            ],
        }


def _table(header: Sequence[str], lines: Sequence[Sequence[str]], numeric_from: int) -> list[str]:
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]
    out = []
    for cells in [header, *lines]:
        parts = [
            cell.rjust(width) if i >= numeric_from else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        out.append("  ".join(parts).rstrip())
    return out


def render(figure: Figure) -> str:
    """The figure as a text table, failures spelled out below it."""
    runs = sorted({len(row.samples) for row in figure.rows if row.samples}) or [0]
    plural = "" if runs == [1] else "s"
    runs_text = "/".join(map(str, runs))
    lines = [f"{figure.title} ({figure.statistic} of {runs_text} run{plural})"]
    body = []
    for row in figure.rows:
        value = figure.value(row)
        ratio = figure.ratio(row)
        body.append(
            [
                *row.labels,
                "failed" if value is None else figure.value_format.format(value),
                "" if ratio is None else f"{ratio:.2f}",
            ]
        )
    header = [*figure.columns, figure.unit, figure.ratio_heading]
    lines += _table(header, body, numeric_from=len(figure.columns))
    lines += [f"* {note}" for note in figure.notes]
    for row in figure.rows:
        if row.error is not None:
            # The last line names the exception; the whole text is in the JSON.
            lines.append(f"{' '.join(row.labels)} failed: {row.error.splitlines()[-1]}")
    return "\n".join(lines)


def write_json(path: Path, figures: Sequence[Figure], environment: dict[str, object]) -> None:
    """Write every figure and the environment they were measured in to ``path``."""
    document = {"environment": environment, "figures": [f.to_json() for f in figures]}
    path.write_text(json.dumps(document, indent=2) + "\n")
