"""Upgrades under ``fdchannel run`` as PID 1 of a real new PID namespace (a container's).

Each test starts ``unshare --pid --fork --mount-proc python -m fdchannel run --
SERVER``: the supervisor is the namespace's init, and when it exits the kernel
ends every process in it, so nothing outlives a test (``close`` SIGKILLs PID 1
whatever happened, and checks that the namespace is empty).  The servers are
the examples (upgrade_handover.py, upgrade_anyio.py); their events name pids
of the namespace, and ``outside`` finds the same process out here.  Root only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import pytest

from bench.upgrades import SCRIPTS
from fdchannel.errors import UpgradeFailed
from fdchannel.upgrade import NEW_STEPS, request_upgrade

from .harness import TIMEOUT, Clients

UNSHARE = shutil.which("unshare")
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or UNSHARE is None, reason="needs root and unshare (util-linux)"
)
#: The prefix that makes a container of a command line: PID 1 is the supervisor.
PID1 = [str(UNSHARE), "--pid", "--fork", "--mount-proc", sys.executable, "-m", "fdchannel", "run"]


def parent(pid: int) -> int | None:
    """The parent of ``pid`` as /proc shows it out here, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(text[text.rindex(b")") + 2 :].split()[1])


def processes() -> Iterator[int]:
    return (int(entry) for entry in os.listdir("/proc") if entry.isdigit())


class Contained:
    """An example server (or a Python program) under ``fdchannel run`` as PID 1 of a
    new PID namespace.

    Its output (the generations' JSON events and the supervisor's lines) is read
    in a thread; ``expect`` takes events one at a time, as tests/upgrade/
    harness.py's Server does, ``saw`` waits for a line.
    """

    def __init__(self, tmp: Path, script: str, *args: str, grace: float = 5.0) -> None:
        self.pidfile = tmp / "server.pid"
        self.control = tmp / "control.sock"
        if script in SCRIPTS:
            command = [sys.executable, str(SCRIPTS[script])]
            command += ["--pidfile", str(self.pidfile), "--control", str(self.control), *args]
        else:  # a program of the test's own
            command = [sys.executable, "-c", script, *args]
        self.process = subprocess.Popen(
            [*PID1, "--grace", str(grace), "--", *command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self._taken: set[int] = set()
        self._ended = False  # the output ended: PID 1 and all it started are gone
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._init: int | None = None
        self._namespace: str | None = None

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            event: Any = None
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                if isinstance(event, dict) and isinstance(event.get("pid"), int):
                    self.events.append(event)
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def _wait(self, found: Callable[[], Any], what: str, timeout: float) -> Any:
        with self._changed:
            self._changed.wait_for(lambda: found() is not None or self._ended, timeout)
            result = found()
            if result is None:
                tail = "".join(f"\n  | {line}" for line in self.lines[-40:])
                when = "before the output ended" if self._ended else f"within {timeout:g} s"
                raise TimeoutError(f"no {what} {when}{tail}")
        return result

    def expect(self, event: str, timeout: float = TIMEOUT, **match: object) -> dict[str, Any]:
        """The first event named ``event`` (with ``match``'s fields) not taken yet."""

        def found() -> dict[str, Any] | None:
            for message in self.events:
                if (
                    id(message) not in self._taken
                    and message["event"] == event
                    and match.items() <= message.items()
                ):
                    return message
            return None

        message: dict[str, Any] = self._wait(found, f"{event!r} event {match or ''}", timeout)
        self._taken.add(id(message))
        return message

    def saw(self, part: str, timeout: float = TIMEOUT) -> str:
        """The first line of output holding ``part``, waiting for it."""
        line: str = self._wait(
            lambda: next((line for line in self.lines if part in line), None), repr(part), timeout
        )
        return line

    def said(self, part: str) -> list[str]:
        """The lines of output so far holding ``part``."""
        with self._changed:
            return [line for line in self.lines if part in line]

    # ------------------------------------------------------------------
    # The namespace, seen from out here.

    @property
    def init(self) -> int:
        """PID 1 (the supervisor), as a pid out here: unshare's child."""
        if self._init is None:
            deadline = time.monotonic() + TIMEOUT
            while True:
                found = [pid for pid in processes() if parent(pid) == self.process.pid]
                if found:
                    self._init = found[0]
                    self._namespace = os.readlink(f"/proc/{self._init}/ns/pid")
                    break
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("unshare has no child: no PID 1")
                time.sleep(0.01)  # unshare forks it at once; bounded by the deadline
        return self._init

    def members(self) -> list[int]:
        """Every process of the namespace, as pids out here."""
        if self._namespace is None and self.process.poll() is None:
            self.init  # noqa: B018 (finds the namespace)
        if self._namespace is None:
            return []
        found = []
        for pid in processes():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/ns/pid") == self._namespace:
                    found.append(pid)
        return found

    def outside(self, pid: int) -> int:
        """The pid out here of the namespace's process ``pid``."""
        for host in self.members():
            with contextlib.suppress(OSError):
                status = Path(f"/proc/{host}/status").read_text()
                nspid = next(line for line in status.splitlines() if line.startswith("NSpid:"))
                if int(nspid.split()[-1]) == pid:
                    return host
        raise ProcessLookupError(f"no process {pid} in the namespace")

    def send(self, pid: int, signum: signal.Signals) -> None:
        """Signal a process out here, through a pidfd (never a reused pid)."""
        pidfd = os.pidfd_open(pid)
        try:
            signal.pidfd_send_signal(pidfd, signum)
        finally:
            os.close(pidfd)

    def wait(self, timeout: float = TIMEOUT) -> int:
        """unshare's exit status: the supervisor's."""
        return self.process.wait(timeout)

    def close(self) -> None:
        """End the namespace (SIGKILL to PID 1 if it still runs) and check it is empty."""
        try:
            if self.process.poll() is None:
                try:
                    self.send(self.init, signal.SIGKILL)
                except (RuntimeError, ProcessLookupError):
                    self.process.kill()  # no PID 1 (yet, or any more)
            self.process.wait(TIMEOUT)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(TIMEOUT)
            self._reader.join(TIMEOUT)
            assert self.process.stdout is not None
            self.process.stdout.close()
        assert self.members() == [], "processes outlived the namespace's PID 1"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def tmp(sockdir: Path) -> Path:
    return sockdir


def wait_until(check: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(0.02)  # polling /proc, bounded by the deadline


@pytest.mark.parametrize("backend", ["asyncio", "uvloop", "trio"])
def test_upgrades_under_load_as_pid_1(tmp: Path, backend: str) -> None:
    with Contained(tmp, "handover", "--backend", backend, "--handover") as server:
        first = server.expect("ready")
        started = server.saw("fdchannel run: pid ")
        assert started.startswith(f"fdchannel run: pid {first['pid']} started: {sys.executable} ")
        clients = Clients(("127.0.0.1", first["port"]))
        pids = [first["pid"]]
        with clients.running():
            for generation in range(1, 6):
                if generation % 2:
                    result = request_upgrade(server.control, timeout=TIMEOUT)
                    assert result["generation"] == generation
                else:
                    server.send(server.init, signal.SIGHUP)  # kill -HUP 1, in the container
                ready = server.expect("ready", generation=generation)
                old, new = pids[-1], ready["pid"]
                server.saw(f"pid {old}: main process pid {old} -> pid {new}")
                server.saw(f"pid {old} (replaced) exited (exit status 0)")
                assert server.expect("exit", pid=old)["generation"] == generation - 1
                pids.append(new)
            clients.wait_rounds()
            assert clients.ask_once() == pids[-1]
            # Every replaced generation reaped: the supervisor and the serving one are left.
            serving = server.outside(pids[-1])
            wait_until(lambda: sorted(server.members()) == sorted([server.init, serving]), "reaped")
        assert clients.errors == []
        assert server.said("SIGHUP -> pid") == [
            f"fdchannel run: SIGHUP -> pid {pid}" for pid in pids[1:-1:2]
        ]
        # The example ignores nothing: SIGTERM kills the serving generation, and the
        # supervisor exits with its status.
        server.send(server.init, signal.SIGTERM)
        assert server.wait() == 128 + signal.SIGTERM
        server.saw(f"main process pid {pids[-1]} exited (killed by SIGTERM)")


def http(sock: socket.socket) -> tuple[dict[str, str], bytes]:
    """One GET on a kept-alive connection: the response's headers and body."""
    sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, "the server closed the connection"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    headers = dict(
        (name.strip().lower(), value.strip())
        for name, _, value in (line.partition(":") for line in head.decode().split("\r\n")[1:])
    )
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(4096)
        assert chunk, "the server closed the connection"
        body += chunk
    return headers, body


def test_sigterm_to_pid_1_drains_the_main_process(tmp: Path) -> None:
    args = ("--backend", "trio", "--listen", "tcp:127.0.0.1:0", "--drain-timeout", "1")
    with Contained(tmp, "anyio", *args) as server:
        first = server.expect("ready")
        request_upgrade(server.control, timeout=TIMEOUT)  # SIGTERM must follow MAINPID
        second = server.expect("ready", generation=1)
        server.expect("exit", pid=first["pid"])
        host, port = first["url"].removeprefix("http://").rstrip("/").rsplit(":", 1)
        with socket.create_connection((host, int(port)), TIMEOUT) as idle:
            idle.settimeout(TIMEOUT)
            headers, body = http(idle)
            assert headers["connection"] == "keep-alive"
            assert body.startswith(f"hello from pid {second['pid']},".encode())
            server.send(server.init, signal.SIGTERM)  # docker stop, kubectl delete pod
            server.saw(f"SIGTERM -> pid {second['pid']}")
            # The generation drains: the idle connection is closed after the drain
            # timeout, at a request boundary (an end of stream, not a reset).
            assert idle.recv(1) == b""
        assert server.wait() == 0  # the generation's own status
        exit = server.expect("exit", pid=second["pid"])
        assert (exit["reason"], exit["closed_idle"]) == ("SIGTERM", 1)
        server.saw(f"main process pid {second['pid']} exited (exit status 0)")
        assert server.said("fdchannel run: exit status") == ["fdchannel run: exit status 0"]


STEPS = ["start", *NEW_STEPS[:-1]]  # "serving" is after the commit: the upgrade is done


@pytest.mark.parametrize("step", STEPS)
def test_sigkill_at_each_step_keeps_serving(tmp: Path, step: str) -> None:
    once = tmp / "died"
    die = ("--die-at", step, "--die-once", str(once))
    with Contained(tmp, "handover", "--backend", "asyncio", "--handover", *die) as server:
        first = server.expect("ready")
        clients = Clients(("127.0.0.1", first["port"]))
        with clients.running():
            with pytest.raises(UpgradeFailed):
                request_upgrade(server.control, timeout=TIMEOUT)
            assert once.exists()
            assert clients.ask_once() == first["pid"]
            result = request_upgrade(server.control, timeout=TIMEOUT)
            assert server.expect("ready")["pid"] == result["pid"]
            server.saw(f"main process pid {first['pid']} -> pid {result['pid']}")
            clients.wait_rounds()
            assert clients.ask_once() == result["pid"]
        assert clients.errors == []
        assert server.process.poll() is None, "PID 1 exited"
        # The killed generation was its parent's child to reap: no main process ended.
        assert [line for line in server.said("main process pid") if "exited" in line] == []


def test_a_replaced_generation_killed_while_draining(tmp: Path) -> None:
    args = ("--backend", "asyncio", "--listen", "tcp:127.0.0.1:0", "--drain-timeout", "60")
    with Contained(tmp, "anyio", *args) as server:
        first = server.expect("ready")
        host, port = first["url"].removeprefix("http://").rstrip("/").rsplit(":", 1)
        with socket.create_connection((host, int(port)), TIMEOUT) as idle:
            idle.settimeout(TIMEOUT)
            http(idle)  # served by generation 0, which now waits for its next request
            result = request_upgrade(server.control, timeout=TIMEOUT)
            server.saw(f"main process pid {first['pid']} -> pid {result['pid']}")
            # Replaced, generation 0 drains: it holds the idle connection up to 60 s.
            server.send(server.outside(first["pid"]), signal.SIGKILL)
            server.saw(f"pid {first['pid']} (replaced) exited (killed by SIGKILL)")
        with socket.create_connection((host, int(port)), TIMEOUT) as fresh:
            fresh.settimeout(TIMEOUT)
            _, body = http(fresh)
            assert body.startswith(f"hello from pid {result['pid']},".encode())
        assert server.process.poll() is None, "PID 1 exited"
        server.send(server.init, signal.SIGTERM)
        assert server.wait() == 0


#: Leaves a process of its own that ignores SIGTERM, then exits 3.
LEAVES = """
import os, signal, sys
STAYS = "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); os.write(1, b'+'); time.sleep(60)"
read, write = os.pipe()
os.posix_spawn(sys.executable, [sys.executable, "-c", STAYS], os.environ,
               file_actions=[(os.POSIX_SPAWN_DUP2, write, 1)])
os.close(write)
os.read(read, 1)  # it runs, SIGTERM ignored
print("leaving", flush=True)
sys.exit(3)
"""  # noqa: E501


def test_what_is_left_ends_with_pid_1(tmp: Path) -> None:
    with Contained(tmp, LEAVES, grace=0.5) as server:
        server.saw("leaving")
        assert server.wait() == 3
        server.saw("main process pid 2 exited (exit status 3)")
        server.saw("stopping what is left: SIGTERM, SIGKILL after 0.5 s")
        server.saw("SIGKILL to what is left")


def test_refuses_a_proc_of_another_namespace() -> None:
    # Without --mount-proc, /proc is the parent namespace's: no way to tell who is ours.
    done = subprocess.run(
        [str(UNSHARE), "--pid", "--fork", sys.executable, "-m", "fdchannel", "run", "--", "true"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("fdchannel run: error: /proc belongs to another PID namespace")
