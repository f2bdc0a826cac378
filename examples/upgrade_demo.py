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

``--pid1`` (root) runs the server as a container runs it: in a new PID
namespace, under ``fdchannel run`` as its PID 1 (``unshare --pid --fork
--mount-proc python -m fdchannel run -- SERVER``), which follows each
upgrade's ``MAINPID=`` and reaps the replaced generations; at the end PID 1
gets the SIGTERM (``docker stop``) and must exit 0, the status of the
serving generation, which drains.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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
#: --pid1: the server runs under this, as PID 1 of a new PID namespace.
PID1 = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "fdchannel", "run"]


class InNamespace(Generations):
    """The generations in a new PID namespace, under ``fdchannel run`` as its PID 1.

    Their events name pids of that namespace; each is watched through a pidfd
    of the same process out here (its ``NSpid``), and keyed by the namespace's
    pid, as the events name it.  The process started here is unshare, not a
    generation: it is not watched.
    """

    def __init__(self, *args: Any, **kw: Any) -> None:
        self._unshare: int | None = None
        self._namespace: str | None = None
        super().__init__(*args, **kw, prefix=[*PID1, "--"])

    def _watch(self, pid: int) -> None:
        if self._unshare is None:  # Generations watches the process it started first
            self._unshare = pid
            return
        with self._changed:
            if pid not in self._pidfds:
                outside = self._outside(pid)
                try:
                    self._pidfds[pid] = -1 if outside is None else os.pidfd_open(outside)
                except ProcessLookupError:
                    self._pidfds[pid] = -1  # gone already

    def init(self) -> int | None:
        """PID 1 (``fdchannel run``) as a pid out here: unshare's child."""
        for entry in os.listdir("/proc"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{entry}/stat").read_bytes()
                if int(stat[stat.rindex(b")") + 2 :].split()[1]) == self._unshare:
                    self._namespace = os.readlink(f"/proc/{entry}/ns/pid")
                    return int(entry)
        return None

    def _outside(self, pid: int) -> int | None:
        """The pid out here of the namespace's process ``pid``; None if it is gone."""
        if self._namespace is None and self.init() is None:
            return None
        for entry in os.listdir("/proc"):
            with contextlib.suppress(OSError, ValueError, StopIteration):
                if os.readlink(f"/proc/{entry}/ns/pid") != self._namespace:
                    continue
                status = Path(f"/proc/{entry}/status").read_text().splitlines()
                nspid = next(line for line in status if line.startswith("NSpid:"))
                if int(nspid.split()[-1]) == pid:
                    return int(entry)
        return None

    def stop_pid1(self, timeout: float) -> int:
        """SIGTERM to PID 1, as ``docker stop`` does; its exit status (unshare's)."""
        init = self.init()
        if init is not None:
            pidfd = os.pidfd_open(init)
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGTERM)
            finally:
                os.close(pidfd)
        return self.process.wait(timeout)


def run(options: argparse.Namespace, directory: Path) -> tuple[int, int, LoadResult | None, bool]:
    """The upgrades under load: (ok, failed, what wrk measured, whether all old ones exited)."""
    ok = failed = 0
    load: LoadResult | None = None
    stopped_ok = True
    kind = InNamespace if options.pid1 else Generations
    with kind.http(options.server, options.backend, directory) as servers:
        first = servers.ready(0, TIMEOUT)
        print(f"{options.server} on {options.backend}: pid {first['pid']} serves {first['url']}")
        if isinstance(servers, InNamespace):
            print("  in a new PID namespace, under 'fdchannel run' as its PID 1")
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
        if isinstance(servers, InNamespace):
            status = servers.stop_pid1(TIMEOUT)
            stopped_ok = status == 0
            print(f"SIGTERM to PID 1: generation {generation} drained; exit status {status}")
        signalled = servers.close()
        stopped = ", ".join(f"pid {pid} by {signal}" for pid, signal in signalled.items())
        print(f"stopped: {stopped or 'nothing was running'}; every generation is gone")
    return ok, failed, load, not lingering and stopped_ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=sorted(BACKENDS), default="uvicorn")
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "uvloop", "trio"])
    parser.add_argument("--upgrades", type=int, default=20, help="default 20")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests/s (default 1000)")
    parser.add_argument("--connections", type=int, default=10, help="default 10")
    parser.add_argument("--pause", type=float, default=0.1, help="between upgrades, s (0.1)")
    parser.add_argument(
        "--pid1",
        action="store_true",
        help="run the server under 'fdchannel run' as PID 1 of a new PID namespace (root)",
    )
    options = parser.parse_args(argv)
    if options.backend not in BACKENDS[options.server]:
        parser.error(f"{options.server} runs on {', '.join(BACKENDS[options.server])}")
    if options.pid1 and (os.geteuid() != 0 or shutil.which("unshare") is None):
        print("--pid1 needs root and unshare (util-linux)", file=sys.stderr)
        return 2
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
