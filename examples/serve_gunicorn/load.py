"""gunicorn under ``fdchannel serve``, upgraded again and again while wrk loads it.

    python examples/serve_gunicorn/load.py --worker sync --upgrades 20 --rate 1000
    python examples/serve_gunicorn/load.py --worker uvicorn --upgrades 20 --rate 1000

Starts ``fdchannel serve`` on a loopback port with the plain application
beside this file (``wsgi_app`` for sync workers, ``asgi_app`` for
``uvicorn.workers.UvicornWorker``), runs wrk at a fixed rate over keep-alive
connections, asks for each upgrade through the control socket, then stops
wrk and the last generation (SIGTERM).  Prints one line per upgrade and a
summary; exit status 0 only if every upgrade succeeded, wrk counted no
error, and the last generation exited 0.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # bench/ belongs to the repository, not to the package

from bench.load import describe, find_wrk, finish_wrk, start_wrk  # noqa: E402
from fdchannel.errors import UpgradeError  # noqa: E402
from fdchannel.upgrade import request_upgrade  # noqa: E402

#: gunicorn's options after the application, per kind of worker.
WORKERS = {
    "sync": ["wsgi_app:app", "--workers", "2"],
    "uvicorn": ["asgi_app:app", "--workers", "2", "-k", "uvicorn.workers.UvicornWorker"],
    "draining": [
        *("asgi_app:app", "--workers", "2"),
        *("-k", "fdchannel.upgrade.launch_gunicorn.UvicornWorker"),
    ],
}
#: The longest wait for anything: a generation's start, an upgrade, wrk's report.
TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serve_command(worker: str, port: int, run: Path, loop: str) -> list[str]:
    """``fdchannel serve ... -- gunicorn ...`` for ``worker``."""
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    return [
        *(sys.executable, "-m", "fdchannel", "serve", "--loop", loop),
        *("--listen", f"http=tcp:127.0.0.1:{port}"),
        *("--pidfile", str(run / "app.pid"), "--control", str(run / "app.ctl")),
        *("--ready", "http://{ready}/healthz", "--quiet", "--"),
        *(gunicorn, "--chdir", str(HERE), "--no-control-socket", "--log-level", "warning"),
        *WORKERS[worker],
    ]


def wait_serving(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"fdchannel serve exited ({process.returncode}) before serving")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
                if sock.recv(64).split(b" ")[1:2] == [b"200"]:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("fdchannel serve did not serve in time")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", choices=sorted(WORKERS), default="sync")
    parser.add_argument("--upgrades", type=int, default=20)
    parser.add_argument("--rate", type=float, default=1000.0, help="requests/s (1000)")
    parser.add_argument("--connections", type=int, default=10, help="wrk's connections (10)")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between upgrades")
    parser.add_argument("--loop", choices=("asyncio", "uvloop", "trio"), default="asyncio")
    options = parser.parse_args()
    if find_wrk() is None:
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 1
    run = Path(tempfile.mkdtemp(prefix="serve-"))
    port = free_port()
    server = subprocess.Popen(serve_command(options.worker, port, run, options.loop))
    failed = 0
    took: list[float] = []
    try:
        wait_serving(port, server)
        wrk = start_wrk(
            f"http://127.0.0.1:{port}/",
            rate=options.rate,
            seconds=3600,
            connections=options.connections,
        )
        try:
            time.sleep(1)  # wrk's connections are open and busy before the first upgrade
            for number in range(1, options.upgrades + 1):
                try:
                    reply = request_upgrade(run / "app.ctl", timeout=TIMEOUT)
                    took.append(reply["seconds"])
                    print(f"upgrade {number}: pid {reply['pid']} in {took[-1]:.3f} s")
                except UpgradeError as exc:
                    failed += 1
                    print(f"upgrade {number} failed: {exc}")
                time.sleep(options.pause)
        finally:
            load = finish_wrk(wrk, timeout=TIMEOUT, stop=True)
        pid = int((run / "app.pid").read_text().split()[0])
        os.kill(pid, signal.SIGTERM)  # it passes SIGTERM to gunicorn, which stops gracefully
        stopped = _wait_gone(pid)
    finally:
        with contextlib.suppress(OSError, ValueError):  # stopped early: stop what serves
            left = int((run / "app.pid").read_text().split()[0])
            os.kill(left, signal.SIGTERM)
            _wait_gone(left)
        if server.poll() is None:
            server.kill()
            server.wait()
        shutil.rmtree(run, ignore_errors=True)
    median = statistics.median(took) if took else 0.0
    print(
        f"{options.worker} workers: {options.upgrades - failed}/{options.upgrades} upgrades, "
        f"each {median:.2f} s (median; max {max(took, default=0.0):.2f} s)"
    )
    print(describe(load))
    print(f"errors: {load.total_errors}; the last generation stopped on SIGTERM: {stopped}")
    return 0 if failed == 0 and load.total_errors == 0 and stopped else 1


def _wait_gone(pid: int) -> bool:
    """The last generation is not our child (the one before started it): watch its pidfd."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([pidfd], [], [], TIMEOUT)[0])
    finally:
        os.close(pidfd)


if __name__ == "__main__":
    sys.exit(main())
