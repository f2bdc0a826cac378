"""The benchmark report's ratios: to the baseline's median, or paired round by round."""

from __future__ import annotations

import pytest

from bench._report import Figure, Row

BASE = (10.0, 20.0, 30.0)  # a machine that speeds up round by round

# (the row's samples, paired, the ratio the table prints)
CASES = [
    ((5.0, 10.0, 15.0), True, 0.5),  # half the baseline in every round
    ((5.0, 10.0, 15.0), False, 0.5),  # medians 10 / 20
    ((15.0, 10.0, 5.0), True, 0.5),  # rounds 1.5, 0.5, 0.1667: their median
    ((15.0, 10.0, 5.0), False, 0.5),
    ((9.0, 18.0, 60.0), True, 0.9),  # one fast round does not move the paired ratio
    ((9.0, 18.0, 60.0), False, 0.9),
]


@pytest.mark.parametrize("speed_ratio", [False, True])
@pytest.mark.parametrize(("samples", "paired", "expected"), CASES)
def test_ratio(
    samples: tuple[float, ...], paired: bool, expected: float, speed_ratio: bool
) -> None:
    figure = Figure("f", "t", ("name",), "u", "vs base", paired=paired, speed_ratio=speed_ratio)
    figure.rows = [Row(("base",), BASE, baseline=True), Row(("row",), samples)]
    # A speed ratio (samples are times) is each quotient the other way up.
    assert figure.ratio(figure.rows[1]) == pytest.approx(1 / expected if speed_ratio else expected)
    assert figure.ratio(figure.rows[0]) == pytest.approx(1.0)


def test_unequal_rounds_fall_back_to_medians() -> None:
    figure = Figure("f", "t", ("name",), "u", "vs base", paired=True)
    figure.rows = [Row(("base",), BASE, baseline=True), Row(("row",), (12.0, 100.0))]
    assert figure.ratio(figure.rows[1]) == pytest.approx(56.0 / 20.0)
