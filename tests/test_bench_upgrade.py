"""The upgrade figure's summaries: percentiles, the bound's verdict, the pause's phases."""

from __future__ import annotations

import pytest

from bench.upgrade import BOUND_MS, PHASES, demo_pause_ms, percentile, phases, summarize, verdict


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([3.0], 90, 3.0),
        ([1.0, 2.0, 3.0, 4.0, 5.0], 0, 1.0),
        ([1.0, 2.0, 3.0, 4.0, 5.0], 50, 3.0),
        ([1.0, 2.0, 3.0, 4.0, 5.0], 100, 5.0),
        ([5.0, 1.0, 4.0, 2.0, 3.0], 90, 4.6),  # order does not matter; between ranks 4 and 5
        ([10.0, 20.0], 25, 12.5),
    ],
)
def test_percentile_interpolates(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("values", "q", "message"),
    [([], 50, "no values"), ([1.0], -1, "between 0 and 100"), ([1.0], 101, "between 0 and 100")],
)
def test_percentile_refuses_nonsense(values: list[float], q: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        percentile(values, q)


def test_summary_of_21_pauses() -> None:
    pauses = [float(n) for n in range(1, 22)]  # 1 .. 21 ms
    summary = summarize(pauses)
    assert (summary.median, summary.minimum, summary.maximum, summary.count) == (11, 1, 21, 21)
    assert summary.p90 == pytest.approx(19.0)
    assert summary.describe() == "median 11.00 ms, min 1.00, p90 19.00, max 21.00 over 21"
    with pytest.raises(ValueError, match="no values"):
        summarize([])


def test_verdict_is_against_the_median_bound() -> None:
    assert verdict(BOUND_MS) == "PASS"
    assert verdict(BOUND_MS + 0.01) == "FAIL"
    assert verdict(0.5, bound_ms=1) == "PASS"


def test_phases_add_up_to_the_pause() -> None:
    paused = {"at": 10.000, "returned_at": 10.001, "handed_at": 10.004}
    serving = {"at": 10.020, "acked_at": 10.003, "ready_at": 10.0035, "wrapped_at": 10.006}
    got = phases(paused, serving)
    assert list(got) == [label for label, _, _ in PHASES]
    assert [round(ms, 3) for ms in got.values()] == [1.0, 2.0, 0.5, 2.5, 14.0]
    assert sum(got.values()) == pytest.approx((serving["at"] - paused["at"]) * 1000)


def test_phases_leave_out_what_a_generation_did_not_say() -> None:
    got = phases({"at": 1.0}, {"at": 1.01, "ready_at": 1.002, "wrapped_at": 1.005})
    assert [label for label, _, _ in PHASES if label in got] == [
        "new: Stream.from_fd each (fdchannel)",
        "new: a task each, waiting (example, anyio)",
    ]


@pytest.mark.parametrize(
    ("output", "ms"),
    [
        ("old server pid 1\npause (old stops serving -> new serving): 1.4 ms\nok\n", 1.4),
        ("pause (old stops serving -> new serving): 23 ms", 23.0),
    ],
)
def test_the_demo_pause_is_read_from_its_output(output: str, ms: float) -> None:
    assert demo_pause_ms(output) == ms


def test_a_demo_without_a_pause_line_is_an_error() -> None:
    with pytest.raises(ValueError, match="no pause line"):
        demo_pause_ms("live upgrade: FAILED\n")
