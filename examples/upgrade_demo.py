"""A real HTTP server upgraded 20 times under steady load, without one failed request.

``make demo-upgrade`` runs ``python examples/upgrade_demo.py``: it starts
one of the example servers (``--server uvicorn``, the default, ``anyio``
or ``aiohttp``; ``--backend asyncio``, ``uvloop`` or, for anyio, ``trio``),
runs wrk at a fixed rate (1000 requests/s over 10 keep-alive connections)
for the whole run, and meanwhile asks the server for 20 upgrades through
its control socket, one after the other.  Each upgrade starts a new
process that takes the listening socket over; the old one drains (every
connection closes after its next response, with ``Connection: close``)
and exits.  Then wrk stops, the last generation gets SIGTERM (every
generation is waited for, and killed if it lingers), the temporary
directory goes, and the last line sums it up::

    upgrades: 20 ok, 0 failed; requests: 8123; errors: 0; slowest request: 12.3 ms

``errors`` is every error wrk counted (connect, read, write, status,
timeout; a wrk that did not report counts as one).  Exit status 0 only if
no upgrade failed, wrk counted no error and every replaced generation
exited by itself.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # bench/ belongs to the repository, not to the package

from bench.load import LoadResult, describe, find_wrk, finish_wrk, start_wrk  # noqa: E402
from bench.upgrades import BACKENDS, Generations  # noqa: E402
from fdchannel.errors import UpgradeError  # noqa: E402
from fdchannel.upgrade import request_upgrade  # noqa: E402

#: Longer than any run: wrk is stopped (and reports) once the upgrades are done.
WRK_SECONDS = 3600
#: The longest wait for anything: a generation's start, an upgrade, wrk's report.
TIMEOUT = 60.0


def run(options: argparse.Namespace, directory: Path) -> tuple[int, int, LoadResult | None, bool]:
    """The upgrades under load: (ok, failed, what wrk measured, whether all old ones exited)."""
    ok = failed = 0
    load: LoadResult | None = None
    with Generations.http(options.server, options.backend, directory) as servers:
        first = servers.ready(0, TIMEOUT)
        print(f"{options.server} on {options.backend}: pid {first['pid']} serves {first['url']}")
        print(
            f"wrk: {options.rate:g} requests/s over {options.connections} connections, "
            f"{options.upgrades} upgrades meanwhile"
        )
        wrk = start_wrk(
            first["url"], rate=options.rate, seconds=WRK_SECONDS, connections=options.connections
        )
        serving, generation = first["pid"], 0
        try:
            for n in range(1, options.upgrades + 1):
                try:
                    result = request_upgrade(servers.control, timeout=TIMEOUT)
                except UpgradeError as exc:
                    failed += 1
                    print(f"upgrade {n:2}: FAILED: {exc}")
                else:
                    ok += 1
                    print(
                        f"upgrade {n:2}: pid {serving} -> {result['pid']} "
                        f"(generation {result['generation']}) in {result['seconds'] * 1000:.0f} ms"
                    )
                    serving, generation = result["pid"], result["generation"]
                time.sleep(options.pause)  # pacing: each generation serves a moment
            servers.ready(generation, TIMEOUT)  # and so every generation's pid before it
            # Every replaced generation drains under the load and exits by itself.
            replaced = [pid for pid in servers.pids() if pid != serving]
            lingering = servers.wait_exited(replaced, timeout=TIMEOUT)
        finally:
            try:
                load = finish_wrk(wrk, timeout=TIMEOUT, stop=True)
            except (RuntimeError, TimeoutError, ValueError) as exc:
                print(f"wrk failed: {exc}")
        if lingering:
            print(f"replaced generations still running: {lingering}")
        else:
            print(f"replaced generations: {len(replaced)}, each drained and exited by itself")
        signalled = servers.close()
        stopped = ", ".join(f"pid {pid} by {signal}" for pid, signal in signalled.items())
        print(f"stopped: {stopped or 'nothing was running'}; every generation is gone")
    return ok, failed, load, not lingering


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=sorted(BACKENDS), default="uvicorn")
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "uvloop", "trio"])
    parser.add_argument("--upgrades", type=int, default=20, help="default 20")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests/s (default 1000)")
    parser.add_argument("--connections", type=int, default=10, help="default 10")
    parser.add_argument("--pause", type=float, default=0.1, help="between upgrades, s (0.1)")
    options = parser.parse_args(argv)
    if options.backend not in BACKENDS[options.server]:
        parser.error(f"{options.server} runs on {', '.join(BACKENDS[options.server])}")
    if find_wrk() is None:
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    directory = Path(tempfile.mkdtemp(prefix="fdc-upgrade-", dir="/tmp"))
    try:
        ok, failed, load, exited = run(options, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if load is not None:
        print(describe(load))
        print(f"latency: p50 {load.p50_ms:.2f} ms, p99 {load.p99_ms:.2f} ms")
    errors = load.total_errors if load is not None else 1
    print(
        f"upgrades: {ok} ok, {failed} failed; requests: {load.requests if load else 0}; "
        f"errors: {errors}; slowest request: {load.max_ms if load else 0:.1f} ms"
    )
    return 0 if not failed and not errors and exited else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # wrk and every generation were stopped on the way out
        print("interrupted", file=sys.stderr)
        sys.exit(130)
