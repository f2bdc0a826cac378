"""HTTP load at a fixed request rate with wrk, for the upgrade demo, tests and benchmarks.

Debian's wrk (4.1) has no ``-R`` option: ``wrk_paced.lua`` beside this file
paces the requests with wrk's ``delay()`` hook and prints one JSON line when
the run ends, which ``parse_wrk`` reads.  Run wrk in the background while
something else happens, then collect what it measured::

    proc = start_wrk("http://127.0.0.1:8000/", rate=1000, seconds=60)
    try:
        ...  # upgrade the server, 20 times
    finally:
        result = finish_wrk(proc, timeout=90, stop=True)  # stop now, not after 60 s
    assert result.total_errors == 0, describe(result)

What wrk 4.1 counts as an error, per kind (see ``wrk_paced.lua``): ``read``:
a read failure or an end of stream in the middle of a response or on an
idle keep-alive connection (a server that closes idle connections makes
these); ``write``: a failed send, which is what a refused connection gives
on Linux (wrk then retries at once, so one refusal can count thousands);
``connect``: a ``connect()`` that fails at once; ``status``: a status above
399; ``timeout``: a response that came later than ``timeout_s``.  Counts are
of failed attempts, not of distinct requests.  A response with
``Connection: close`` is not an error: wrk opens a new connection.

``python -m bench.load URL --rate 1000 --seconds 10`` prints ``describe``'s line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from typing_extensions import Unpack

__all__ = [
    "ERROR_KINDS",
    "SCRIPT",
    "TIMEOUT_S",
    "LoadResult",
    "WrkOptions",
    "describe",
    "find_wrk",
    "finish_wrk",
    "parse_wrk",
    "run_wrk",
    "start_wrk",
    "stop_wrk",
    "wrk_command",
]

#: The wrk script that paces the requests and prints the JSON line.
SCRIPT = Path(__file__).with_name("wrk_paced.lua")
#: wrk's error counters, in its order.
ERROR_KINDS = ("connect", "read", "write", "status", "timeout")
#: The key that marks wrk_paced.lua's line among wrk's own output.
_MARK = "wrk_paced"
#: How long after its run wrk may take to exit, on top of the run.
_EXIT_GRACE = 30.0
#: A response slower than this (s) counts as a timeout error, unless told otherwise.
TIMEOUT_S = 2


class WrkOptions(TypedDict, total=False):
    """How wrk loads the server, beyond the rate and the duration."""

    #: Open connections, kept alive (default 10): a multiple of ``threads``.
    connections: int
    #: wrk threads (default 1).
    threads: int
    #: A response slower than this many seconds counts as a timeout (default 2).
    timeout_s: int


@dataclass(frozen=True)
class LoadResult:
    """What one wrk run measured.  Latencies are wrk's, corrected for coordinated omission."""

    #: Responses received (any status).
    requests: int
    #: How long the load ran.
    seconds: float
    #: Errors by kind: connect, read, write, status, timeout.
    errors: dict[str, int]
    p50_ms: float
    p99_ms: float
    max_ms: float
    p90_ms: float = 0.0
    p999_ms: float = 0.0
    mean_ms: float = 0.0
    #: The rate asked for, in requests per second.
    target_rate: float = 0.0
    #: Requests written or attempted, retries after a failed send included:
    #: ``sent - requests`` were never answered (up to one per connection was
    #: still on its way when the run ended).
    sent: int = 0
    #: Responses that carried ``Connection: close``: each made wrk reconnect.
    closes: int = 0
    threads: int = 0
    connections: int = 0
    #: ``schedule`` or ``fixed`` (see wrk_paced.lua).
    pacing: str = ""
    bytes: int = 0
    #: wrk's whole standard output, its own report included.
    output: str = field(default="", repr=False, compare=False)

    @property
    def total_errors(self) -> int:
        """All errors of every kind."""
        return sum(self.errors.values())

    @property
    def rate(self) -> float:
        """Responses per second achieved."""
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def find_wrk() -> str | None:
    """The path of the wrk program, or None if it is not installed."""
    return shutil.which("wrk")


def _count(data: dict[str, object], key: str) -> int:
    value = data.get(key, 0)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"wrk_paced.lua's {key!r} is not a number: {value!r}")
    return int(value)


def _number(data: dict[str, object], key: str) -> float:
    value = data.get(key, 0)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"wrk_paced.lua's {key!r} is not a number: {value!r}")
    return float(value)


def _table(data: dict[str, object], key: str) -> dict[str, object]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise ValueError(f"wrk_paced.lua's line has no {key!r} object")
    return value


def parse_wrk(stdout: str) -> LoadResult:
    """The result in wrk's standard output: the last JSON line that wrk_paced.lua printed.

    Raises ValueError if there is none (wrk ran without the script, or died).
    """
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if not (line.startswith("{") and _MARK in line):
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"wrk_paced.lua's line is not JSON ({exc}): {line!r}") from None
        if not isinstance(data, dict) or _MARK not in data:
            continue
        errors = _table(data, "errors")
        latency = _table(data, "latency_us")
        return LoadResult(
            requests=_count(data, "requests"),
            seconds=_number(data, "duration_us") / 1e6,
            errors={kind: _count(errors, kind) for kind in ERROR_KINDS},
            p50_ms=_number(latency, "p50") / 1000,
            p99_ms=_number(latency, "p99") / 1000,
            max_ms=_number(latency, "max") / 1000,
            p90_ms=_number(latency, "p90") / 1000,
            p999_ms=_number(latency, "p99.9") / 1000,
            mean_ms=_number(latency, "mean") / 1000,
            target_rate=_number(data, "target_rate"),
            sent=_count(data, "sent"),
            closes=_count(data, "closes"),
            threads=_count(data, "threads"),
            connections=_count(data, "connections"),
            pacing=str(data.get("pacing", "")),
            bytes=_count(data, "bytes"),
            output=stdout,
        )
    tail = stdout.strip().splitlines()[-3:]
    raise ValueError(
        "wrk's output has no result line from wrk_paced.lua (was wrk run with "
        f"-s {SCRIPT.name}, and did it finish?); its output ended: {tail!r}"
    )


def wrk_command(
    url: str,
    *,
    rate: float,
    seconds: int,
    connections: int = 10,
    threads: int = 1,
    timeout_s: int = TIMEOUT_S,
    wrk: str | None = None,
) -> list[str]:
    """The wrk command line that ``start_wrk`` runs; raises ValueError for impossible options."""
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be a positive number of requests/s, not {rate!r}")
    for name, value in (("seconds", seconds), ("threads", threads), ("timeout_s", timeout_s)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1 (wrk takes whole seconds)")
    if isinstance(connections, bool) or not isinstance(connections, int) or connections < threads:
        raise ValueError(f"connections ({connections!r}) must be a whole number >= threads")
    if connections % threads:
        raise ValueError(
            f"connections ({connections}) must be a multiple of threads ({threads}): "
            "wrk gives each thread connections // threads"
        )
    program = wrk or find_wrk()
    if program is None:
        raise FileNotFoundError("wrk is not installed (Debian: apt-get install wrk)")
    return [
        program,
        f"--threads={threads}",
        f"--connections={connections}",
        f"--duration={seconds}s",
        f"--timeout={timeout_s}s",
        f"--script={SCRIPT}",
        url,
        "--",
        repr(float(rate)),
    ]


def start_wrk(
    url: str, *, rate: float, seconds: int, **options: Unpack[WrkOptions]
) -> subprocess.Popen[str]:
    """Start wrk on ``url`` at ``rate`` requests/s in total for ``seconds``, in the background.

    ``timeout_s``: a response slower than this counts as a timeout error.
    Collect the result with ``finish_wrk``; ``stop_wrk`` ends it without one.
    wrk exits at once (``finish_wrk`` raises) if nothing listens on ``url``.
    """
    command = wrk_command(url, rate=rate, seconds=seconds, **options)
    env = {key: value for key, value in os.environ.items() if key != "WRK_PACING"}
    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _catches_sigint(pid: int) -> bool:
    """Whether wrk has installed its SIGINT handler (before that, SIGINT kills or is ignored)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    except (FileNotFoundError, ProcessLookupError):
        pass
    return False


def _interrupt(proc: subprocess.Popen[str], deadline: float) -> None:
    """Ask wrk to end its run now and report, as Ctrl-C does, once it can take the signal."""
    while proc.poll() is None and not _catches_sigint(proc.pid):
        if time.monotonic() >= deadline:
            return
        time.sleep(0.005)  # wrk installs its handler within milliseconds of starting
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)


def finish_wrk(proc: subprocess.Popen[str], timeout: float, *, stop: bool = False) -> LoadResult:
    """Wait up to ``timeout`` seconds for wrk to end its run and return what it measured.

    ``stop``: end the run now (wrk reports the time it ran) instead of at its
    duration.  On a timeout wrk is killed and TimeoutError raised; if wrk
    failed, RuntimeError; either way the process is reaped and its pipes closed.
    """
    deadline = time.monotonic() + timeout
    try:
        if stop:
            _interrupt(proc, deadline)
        stdout, stderr = proc.communicate(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        stop_wrk(proc)
        raise TimeoutError(f"wrk did not finish within {timeout:g} s; it was killed") from None
    except BaseException:
        stop_wrk(proc)
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with status {proc.returncode}: {stderr.strip()}")
    try:
        return parse_wrk(stdout)
    except ValueError as exc:
        if stderr.strip():
            raise ValueError(f"{exc}; wrk's errors: {stderr.strip()}") from None
        raise


def stop_wrk(proc: subprocess.Popen[str]) -> None:
    """Kill wrk if it still runs, reap it and close its pipes, without a result."""
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


def run_wrk(url: str, *, rate: float, seconds: int, **options: Unpack[WrkOptions]) -> LoadResult:
    """Run wrk on ``url`` at ``rate`` requests/s for ``seconds`` and return what it measured."""
    proc = start_wrk(url, rate=rate, seconds=seconds, **options)
    return finish_wrk(proc, seconds + options.get("timeout_s", TIMEOUT_S) + _EXIT_GRACE)


def describe(result: LoadResult) -> str:
    """One line: rate achieved against the target, errors by kind, latency percentiles."""
    target = f" (target {result.target_rate:g})" if result.target_rate else ""
    kinds = ", ".join(f"{kind} {count}" for kind, count in result.errors.items() if count)
    errors = f"{result.total_errors} errors ({kinds})" if kinds else "0 errors"
    unanswered = result.sent - result.requests
    lost = f", {unanswered} unanswered" if result.sent and unanswered else ""
    closes = f", {result.closes} Connection: close" if result.closes else ""
    return (
        f"{result.requests} requests in {result.seconds:.2f} s = {result.rate:.1f}/s{target}, "
        f"{errors}{lost}{closes}; latency ms p50 {result.p50_ms:.2f} p90 {result.p90_ms:.2f} "
        f"p99 {result.p99_ms:.2f} p99.9 {result.p999_ms:.2f} max {result.max_ms:.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.load URL --rate R --seconds S``: one run, described in one line."""
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests/s (default 1000)")
    parser.add_argument("--seconds", type=int, default=10, help="duration (default 10)")
    parser.add_argument("--connections", type=int, default=10, help="default 10")
    parser.add_argument("--threads", type=int, default=1, help="default 1")
    parser.add_argument(
        "--timeout", type=int, default=TIMEOUT_S, help=f"slow-response limit, s ({TIMEOUT_S})"
    )
    options = parser.parse_args(argv)
    result = run_wrk(
        options.url,
        rate=options.rate,
        seconds=options.seconds,
        connections=options.connections,
        threads=options.threads,
        timeout_s=options.timeout,
    )
    print(describe(result))
    return 1 if result.total_errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
