"""Real HTTP servers upgraded 20 times under load without a single failed request.

Each example in examples/upgrade_*.py (plain anyio, uvicorn, aiohttp) runs
on each of its event loops while wrk sends 1000 requests/s over 10
keep-alive connections; 20 upgrades follow one another through the control
socket.  Any error wrk counts (connect, read, write, status, timeout) fails
the test: a refused connection, an idle keep-alive connection closed under
the client, a lost request.  Every replaced generation must drain and exit
by itself; everything is killed at the end.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.load import describe, find_wrk, finish_wrk, start_wrk
from bench.upgrades import Generations
from fdchannel.upgrade import request_upgrade

UPGRADES = 20
RATE = 1000
CONNECTIONS = 10
#: Longer than any run: wrk is stopped (and reports) once the upgrades are done.
WRK_SECONDS = 120
TIMEOUT = 30.0

CASES = [
    ("anyio", "asyncio"),
    ("anyio", "uvloop"),
    ("anyio", "trio"),
    ("uvicorn", "asyncio"),
    ("uvicorn", "uvloop"),
    ("aiohttp", "asyncio"),
]

pytestmark = pytest.mark.skipif(find_wrk() is None, reason="wrk is not installed")


@pytest.mark.parametrize(("server", "backend"), CASES, ids=[f"{s}-{b}" for s, b in CASES])
def test_upgrades_under_load_lose_nothing(sockdir: Path, server: str, backend: str) -> None:
    with Generations(server, backend, sockdir) as servers:
        first = servers.ready(0, TIMEOUT)
        load = start_wrk(first.url, rate=RATE, seconds=WRK_SECONDS, connections=CONNECTIONS)
        try:
            results = [request_upgrade(servers.control, timeout=TIMEOUT) for _ in range(UPGRADES)]
            pids = [first.pid, *(result["pid"] for result in results)]
            last = servers.ready(UPGRADES, TIMEOUT)  # and so every ready line before it
            # Each replaced generation drains while the load goes on, then exits by itself.
            lingering = servers.wait_exited(pids[:-1], timeout=TIMEOUT)
        finally:
            measured = finish_wrk(load, timeout=TIMEOUT, stop=True)
        assert not lingering, f"replaced generations {lingering} did not exit{servers.tail()}"

        assert [result["generation"] for result in results] == list(range(1, UPGRADES + 1))
        assert len(set(pids)) == UPGRADES + 1
        assert last.pid == pids[-1] == servers.serving() != first.pid
        assert last.url == first.url
        assert servers.running() == [last.pid]
        assert servers.process.wait(TIMEOUT) == 0, "generation 0 did not exit cleanly"

        assert measured.total_errors == 0, describe(measured)
        assert measured.requests > 0, describe(measured)
        # The connections moved on through Connection: close, never through a reset.
        assert measured.closes >= UPGRADES, describe(measured)
        exits = servers.exits()
        assert [e.generation for e in exits] == list(range(UPGRADES)), servers.tail()
        for event, successor in zip(exits, pids[1:], strict=True):
            assert event.fields["reason"] == f"replaced-by-{successor}"
            assert event.fields["closed_idle"] == "0", "an idle connection waited for the timeout"
    assert servers.running() == []
