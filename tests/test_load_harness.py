"""bench.load: wrk at a fixed rate, and the JSON line wrk_paced.lua prints.

The real runs need wrk (Debian's, 4.1) and aiohttp for the server
(``tests/http_target.py``, in its own process); they are skipped without them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench.load import (
    LoadResult,
    describe,
    find_wrk,
    finish_wrk,
    parse_wrk,
    run_wrk,
    start_wrk,
    wrk_command,
)

ROOT = Path(__file__).resolve().parents[1]
#: Bound on every wait for the server: its start, its report, its exit.
TIMEOUT = 30.0
#: The achieved rate must be within this fraction of the target.
RATE_TOLERANCE = 0.25

needs_wrk = pytest.mark.skipif(
    find_wrk() is None or importlib.util.find_spec("aiohttp") is None,
    reason="needs wrk (apt-get install wrk) and aiohttp",
)

# Captured from wrk 4.1.0 with wrk_paced.lua against tests/http_target.py.
CLEAN = """\
Running 1s test @ http://127.0.0.1:44617/
  1 threads and 10 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   238.88us   95.24us   1.81ms   97.09%
    Req/Sec   502.73      2.61   505.00     54.55%
  550 requests in 1.10s, 83.25KB read
Requests/sec:    499.59
Transfer/sec:     75.62KB
{"wrk_paced":1,"requests":550,"sent":550,"closes":0,"duration_us":1100895,"bytes":85250,\
"target_rate":500,"threads":1,"connections":10,"pacing":"schedule","errors":{"connect":0,\
"read":0,"write":0,"status":0,"timeout":0},"latency_us":{"p50":229,"p90":288,"p99":465,\
"p99.9":1806,"max":1806,"mean":239}}
"""
# The server was killed after 1 s of 3: each reconnection was refused, which wrk
# counts as a failed write and retries at once.
REFUSED = """\
Running 3s test @ http://127.0.0.1:32887/
  1 threads and 10 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   267.21us  162.55us   1.51ms   95.40%
    Req/Sec     1.00k    11.97     1.02k    70.00%
  999 requests in 3.00s, 151.22KB read
  Socket errors: connect 0, read 42, write 86137, timeout 0
Requests/sec:    332.80
Transfer/sec:     50.37KB
{"wrk_paced":1,"requests":999,"sent":87140,"closes":0,"duration_us":3001807,"bytes":154845,\
"target_rate":1000,"threads":1,"connections":10,"pacing":"schedule","errors":{"connect":0,\
"read":42,"write":86137,"status":0,"timeout":0},"latency_us":{"p50":229,"p90":360,"p99":1404,\
"p99.9":1512,"max":1512,"mean":267}}
"""
# --keepalive-timeout 0.003: the server closed idle keep-alive connections.
IDLE_CLOSED = (
    '{"wrk_paced":1,"requests":1998,"sent":2154,"closes":0,"duration_us":2000675,"bytes":309690,'
    '"target_rate":1000,"threads":1,"connections":10,"pacing":"schedule","errors":{"connect":0,'
    '"read":3958,"write":0,"status":0,"timeout":0},"latency_us":{"p50":512,"p90":1343,'
    '"p99":2808,"p99.9":5184,"max":5188,"mean":695}}\n'
)
# --status 503.
STATUS_503 = (
    '{"wrk_paced":1,"requests":500,"sent":500,"closes":0,"duration_us":1000867,"bytes":86000,'
    '"target_rate":500,"threads":1,"connections":10,"pacing":"schedule","errors":{"connect":0,'
    '"read":0,"write":0,"status":500,"timeout":0},"latency_us":{"p50":176,"p90":241,"p99":701,'
    '"p99.9":1498,"max":1498,"mean":192}}\n'
)
# --close-every 5: Connection: close on every 5th response, and no error.
CLOSE_EVERY_5 = (
    '{"wrk_paced":1,"requests":3003,"sent":3003,"closes":600,"duration_us":3003372,'
    '"bytes":476865,"target_rate":1000,"threads":1,"connections":10,"pacing":"schedule",'
    '"errors":{"connect":0,"read":0,"write":0,"status":0,"timeout":0},"latency_us":{"p50":222,'
    '"p90":404,"p99":891,"p99.9":3303,"max":4463,"mean":274}}\n'
)


def errors(read: int = 0, write: int = 0, status: int = 0) -> dict[str, int]:
    return {"connect": 0, "read": read, "write": write, "status": status, "timeout": 0}


# (output, requests, seconds, errors, p50, p99, max ms, sent, closes)
PARSED = [
    pytest.param(CLEAN, 550, 1.100895, errors(), 0.229, 0.465, 1.806, 550, 0, id="clean"),
    pytest.param(
        REFUSED, 999, 3.001807, errors(read=42, write=86137), 0.229, 1.404, 1.512, 87140, 0,
        id="refused",
    ),
    pytest.param(
        IDLE_CLOSED, 1998, 2.000675, errors(read=3958), 0.512, 2.808, 5.188, 2154, 0,
        id="idle-closed",
    ),
    pytest.param(STATUS_503, 500, 1.000867, errors(status=500), 0.176, 0.701, 1.498, 500, 0,
                 id="status-503"),
    pytest.param(CLOSE_EVERY_5, 3003, 3.003372, errors(), 0.222, 0.891, 4.463, 3003, 600,
                 id="close-every-5"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("output", "requests", "seconds", "errs", "p50", "p99", "max_ms", "sent", "closes"), PARSED
)
def test_parse_wrk(
    output: str,
    requests: int,
    seconds: float,
    errs: dict[str, int],
    p50: float,
    p99: float,
    max_ms: float,
    sent: int,
    closes: int,
) -> None:
    result = parse_wrk(output)
    assert result.requests == requests
    assert result.seconds == pytest.approx(seconds)
    assert result.errors == errs
    assert result.total_errors == sum(errs.values())
    assert (result.p50_ms, result.p99_ms, result.max_ms) == pytest.approx((p50, p99, max_ms))
    assert result.p50_ms <= result.p90_ms <= result.p99_ms <= result.p999_ms <= result.max_ms
    assert result.rate == pytest.approx(requests / seconds)
    assert (result.sent, result.closes) == (sent, closes)
    assert (result.threads, result.connections, result.pacing) == (1, 10, "schedule")
    line = describe(result)
    assert "\n" not in line
    assert f"{result.total_errors} errors" in line


def test_describe_names_the_errors() -> None:
    line = describe(parse_wrk(REFUSED))
    assert "86179 errors (read 42, write 86137)" in line
    assert "86141 unanswered" in line
    assert "(target 1000)" in line


def test_zero_seconds_has_zero_rate() -> None:
    result = LoadResult(requests=0, seconds=0.0, errors=errors(), p50_ms=0, p99_ms=0, max_ms=0)
    assert result.rate == 0.0
    assert result.total_errors == 0


@pytest.mark.parametrize(
    "output",
    [
        pytest.param("", id="empty"),
        pytest.param(CLEAN.rsplit("\n", 2)[0] + "\n", id="wrk-without-the-script"),
        pytest.param('{"other": 1}\n', id="someone-else's-json"),
    ],
)
def test_parse_wrk_without_the_line(output: str) -> None:
    with pytest.raises(ValueError, match="no result line from wrk_paced"):
        parse_wrk(output)


def test_parse_wrk_broken_line() -> None:
    with pytest.raises(ValueError, match="not JSON"):
        parse_wrk(CLEAN[: CLEAN.rindex('"mean"')])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rate": 0}, "rate must be"),
        ({"rate": float("inf")}, "rate must be"),
        ({"seconds": 0}, "seconds must be"),
        ({"seconds": 1.5}, "seconds must be"),
        ({"threads": 2, "connections": 1}, "connections"),
        ({"threads": 3, "connections": 10}, "multiple of threads"),
        ({"timeout_s": 0}, "timeout_s must be"),
    ],
)
def test_wrk_command_refuses(options: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"rate": 100.0, "seconds": 1, **options}
    with pytest.raises(ValueError, match=message):
        wrk_command("http://127.0.0.1:1/", wrk="wrk", **arguments)  # type: ignore[arg-type]


def test_wrk_command() -> None:
    command = wrk_command("http://h:1/", rate=500, seconds=2, connections=20, threads=2, wrk="w")
    assert command[0] == "w"
    assert command[-3:] == ["http://h:1/", "--", "500.0"]
    for option in ("--threads=2", "--connections=20", "--duration=2s", "--timeout=2s"):
        assert option in command


@dataclass
class Target:
    """A running tests.http_target: its port, then what it counted once it stopped."""

    port: int = 0
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


def read_line(proc: subprocess.Popen[bytes], deadline: float) -> bytes:
    """One line of the child's output, byte by byte so that nothing past it is taken."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError(f"the server said nothing within {TIMEOUT:g} s (so far {line!r})")
        byte = os.read(fd, 1)
        if not byte:
            raise EOFError(f"the server exited (status {proc.wait(TIMEOUT)}) after {line!r}")
        line += byte
    return line


@contextmanager
def http_target(*options: str) -> Iterator[Target]:
    """Run tests.http_target with ``options``; stop it, reap it and read its counts on exit."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.http_target", *options],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        first = read_line(proc, time.monotonic() + TIMEOUT).decode()
        assert first.startswith("PORT "), first
        target = Target(port=int(first.split()[1]))
        yield target
        # Closing its standard input asks the server for its counts and its exit.
        output, _ = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, output
        for line in output.decode().splitlines():
            if line.startswith("STATS "):
                target.stats = json.loads(line.removeprefix("STATS "))
        assert target.stats, output
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.communicate()


def assert_rate(result: LoadResult, target: float) -> None:
    assert abs(result.rate - target) <= RATE_TOLERANCE * target, describe(result)


@needs_wrk
def test_paced_run() -> None:
    with http_target() as server:
        result = run_wrk(server.url, rate=500, seconds=2)
    assert result.total_errors == 0, describe(result)
    assert_rate(result, 500)
    assert result.seconds == pytest.approx(2, abs=0.5)
    assert (result.target_rate, result.connections, result.threads) == (500, 10, 1)
    assert result.pacing == "schedule"
    # The server answered every request wrk counted; the rest were on their way at the end.
    assert result.requests <= server.stats["requests"] <= result.sent
    assert server.stats["peers"] == 10  # keep-alive: one connection each, all along


@needs_wrk
def test_connection_close_is_no_error() -> None:
    """wrk reconnects after a response with Connection: close and counts no error."""
    with http_target("--close-every", "5") as server:
        result = run_wrk(server.url, rate=500, seconds=2)
    assert result.total_errors == 0, describe(result)
    assert_rate(result, 500)
    closes = server.stats["closes"]
    assert closes >= server.stats["requests"] // 5
    assert closes - result.connections <= result.closes <= closes
    assert server.stats["peers"] > result.connections  # it did open new connections


@needs_wrk
def test_status_errors() -> None:
    with http_target("--status", "503") as server:
        result = run_wrk(server.url, rate=200, seconds=1)
    assert result.errors["status"] == result.requests > 0
    assert result.total_errors == result.requests


@needs_wrk
def test_stop_early() -> None:
    """finish_wrk(stop=True) ends a long run at once, with its result."""
    with http_target() as server:
        proc = start_wrk(server.url, rate=200, seconds=600)
        started = time.monotonic()
        result = finish_wrk(proc, TIMEOUT, stop=True)
    assert time.monotonic() - started < 10
    assert result.seconds < 10
    assert result.total_errors == 0, describe(result)
