"""Probation and rollback after the switch: the old generation watches the new one for
``probation`` seconds after the commit, stays the main process meanwhile, and serves
again if the new one exits; the command line waits for the end of it.

Old generations are Upgraders in this process (the new ones real processes), or
real processes: tests/upgrade/slow_peer.py, and examples/upgrade_handover.py under
load, its first new generation made to crash by tests/upgrade/crashing.py."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from fdchannel.errors import UpgradeBusy, UpgradeError, UpgradeFailed
from fdchannel.upgrade import Upgrader, UpgradeRolledBack, pidfile as pidfiles, request_upgrade

from .clients import ClientThreads
from .harness import TIMEOUT, Server, wait_gone
from .slow import SLOW, Request, SlowServer, fdchannel_cli

CRASHING = Path(__file__).with_name("crashing.py")
BACKENDS = ["asyncio", "uvloop", "trio"]


def new_generation(sockdir: Path, *args: str) -> list[str]:
    """slow_peer.py as the next generation of a server listening on ``app.sock``."""
    return [sys.executable, str(SLOW), "--listen", f"unix:{sockdir}/app.sock", *args]


def crashing(sockdir: Path, after: str = "0.3") -> tuple[str, ...]:
    return ("--crash-after", after, "--crash-once", str(sockdir / "crashed"))


async def reap(pid: int) -> None:
    """End a new generation this process started, and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)  # our unreaped child: the pid is still its own
    await anyio.to_thread.run_sync(os.waitpid, pid, 0)


def datagrams(sock: socket.socket) -> list[dict[str, str]]:
    """The notifications that arrived so far."""
    heard = []
    with contextlib.suppress(BlockingIOError):
        while True:
            text = sock.recv(4096, socket.MSG_DONTWAIT).decode()
            heard.append(dict(line.split("=", 1) for line in text.splitlines()))
    return heard


@contextlib.contextmanager
def notified(sockdir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sockdir / "notify"))
        monkeypatch.setenv("NOTIFY_SOCKET", str(sockdir / "notify"))
        yield sock


# ----------------------------------------------------------------------
# The old generation in this process.


@pytest.mark.anyio
async def test_a_new_generation_that_exits_on_probation_is_rolled_back(
    sockdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pidfile, address = sockdir / "app.pid", f"unix:{sockdir}/app.sock"
    command = new_generation(sockdir, *crashing(sockdir))
    with notified(sockdir, monkeypatch) as notify:
        async with Upgrader(trigger=None, pidfile=pidfile, command=command, probation=30) as up:
            listener = await up.listen("main", address)
            with await up.ready():
                pass
            await listener.aclose()  # this test accepts only once rolled back
            started = time.monotonic()
            with anyio.fail_after(TIMEOUT), pytest.raises(UpgradeRolledBack) as rolled:
                await up.upgrade()
            took = time.monotonic() - started
            assert not up.replaced and await up.settled() is False
            # Serves again, on the very socket the new generation had: it was kept.
            again = await up.listen("main", address)
            async with again, await anyio.connect_unix(sockdir / "app.sock"):
                with anyio.fail_after(TIMEOUT):
                    await (await again.accept()).aclose()
            assert pidfiles.read_pid(pidfile) == os.getpid()
        heard = datagrams(notify)
    error = rolled.value
    assert error.status == "exit status 3"
    assert error.stderr[-1] == "crashing on purpose, 0.3 s after ready()"
    assert 0.3 <= error.after < took < 15  # well before the probation would end
    assert str(error).startswith(
        f"rolled back: the new generation (pid {error.pid}) exited with status 3, "
    )
    assert str(error).endswith(" ms after ready(): crashing on purpose, 0.3 s after ready()")
    outcome = pidfiles.outcome(pidfiles.read_status(pidfile), 1)
    assert outcome is not None and outcome["ok"] is False
    assert outcome["rolled_back"] is True and outcome["exit_status"] == "exit status 3"
    assert outcome["stderr"] == list(error.stderr) and outcome["pid"] == error.pid
    assert [m.get("MAINPID") for m in heard] == [None, None, None, str(os.getpid())]
    assert heard[2]["STATUS"] == f"pid {error.pid} serves, on probation"  # the commit
    assert heard[3]["READY"] == "1" and heard[3]["STATUS"] == f"serving; {error}"


@pytest.mark.anyio
async def test_the_new_generation_is_the_main_process_once_the_probation_ends(
    sockdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pidfile, address = sockdir / "app.pid", f"unix:{sockdir}/app.sock"
    outcome: list[Any] = []
    with notified(sockdir, monkeypatch) as notify:
        command = new_generation(sockdir)
        async with Upgrader(trigger=None, pidfile=pidfile, command=command, probation=1) as up:
            listener = await up.listen("main", address)
            with await up.ready():
                pass
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_upgrade_into, up, outcome)
                with anyio.fail_after(TIMEOUT):
                    successor = await up.wait_replaced()
                await listener.aclose()
                committed = time.monotonic()
                assert up.replaced and pidfiles.read_pid(pidfile) == os.getpid()
                assert all("MAINPID" not in m for m in datagrams(notify))
                with anyio.fail_after(TIMEOUT):
                    assert await up.settled() is True
                assert time.monotonic() - committed > 0.8
                assert pidfiles.read_pid(pidfile) == successor
                assert [m.get("MAINPID") for m in datagrams(notify)] == [str(successor)]
    try:
        result = outcome[0]
        assert result.pid == successor and result.probation == 1
        status = pidfiles.outcome(pidfiles.read_status(pidfile), 1)
        assert status is not None and status["ok"] is True and status["probation"] == 1
    finally:
        await reap(successor)


async def _upgrade_into(up: Upgrader, outcome: list[Any]) -> None:
    outcome.append(await up.upgrade())


@pytest.mark.anyio
async def test_an_application_that_left_during_a_rolled_back_probation_is_told(
    sockdir: Path,
) -> None:
    """Nothing accepts once it has left: the upgrader waits out the probation all
    the same (the main process stays), and says so when it is rolled back."""
    control = sockdir / "ctl"
    asked: list[BaseException] = []
    async with anyio.create_task_group() as tasks:
        with anyio.fail_after(TIMEOUT), pytest.raises(UpgradeFailed, match="had left") as left:
            await _leave_on_probation(
                sockdir, control, partial(tasks.start_soon, _ask, control, asked)
            )
    assert str(left.value).startswith("rolled back: the new generation")
    assert len(asked) == 1 and isinstance(asked[0], UpgradeFailed)
    assert str(asked[0]).startswith("rolled back: the new generation")


async def _leave_on_probation(sockdir: Path, control: Path, ask: Callable[[], object]) -> None:
    command = new_generation(sockdir, *crashing(sockdir))
    async with Upgrader(trigger=None, control=control, command=command, probation=30) as up:
        listener = await up.listen("main", f"unix:{sockdir}/app.sock")
        with await up.ready():
            pass
        ask()
        await up.wait_replaced()
        await listener.aclose()  # and leave, without waiting for settled()


async def _ask(control: Path, errors: list[BaseException]) -> None:
    try:
        await anyio.to_thread.run_sync(partial(request_upgrade, control, timeout=TIMEOUT))
    except UpgradeError as exc:
        errors.append(exc)


@pytest.mark.anyio
async def test_settled_follows_a_replacement(sockdir: Path) -> None:
    async with Upgrader(trigger=None) as up:
        await up.listen("main", f"unix:{sockdir}/app.sock")
        with await up.ready():
            pass
        with pytest.raises(UpgradeError, match="follows wait_replaced"):
            await up.settled()


@pytest.mark.parametrize("probation", [-1, float("nan"), float("inf")])
def test_a_probation_is_a_number_of_seconds(probation: float) -> None:
    with pytest.raises(UpgradeError, match="probation"):
        Upgrader(probation=probation)


# ----------------------------------------------------------------------
# Real generations, and the command line.


@pytest.mark.parametrize("how", ["control", "pidfile"])
def test_the_command_line_reports_after_the_probation(sockdir: Path, how: str) -> None:
    args = ("--probation", "1.5", *crashing(sockdir))
    with SlowServer(sockdir, "asyncio", *args) as server:
        first = server.ready(0)["pid"]
        target = str(server.control if how == "control" else server.pidfile)
        failed = fdchannel_cli("upgrade", target)
        assert failed.returncode == 1, failed
        assert "fdchannel: error: rolled back: the new generation (pid " in failed.stderr
        assert "exited with status 3, " in failed.stderr
        assert " ms after ready(): crashing on purpose" in failed.stderr
        assert "serves, on probation for 1.5 s" in failed.stderr, failed.stderr
        server.wait_for("accepting-again", 0)
        assert server.serving() == first
        assert Request(sockdir / "app.sock", 0).result().startswith(f"{first} 0 ".encode())
        started = time.monotonic()
        done = fdchannel_cli("upgrade", "--json", target)
        took = time.monotonic() - started
        assert done.returncode == 0, done
        reply = json.loads(done.stdout)
        assert reply["ok"] is True and reply["probation"] == 1.5 and took > 1.5
        assert server.serving() == reply["pid"] != first
        assert server.process.wait(TIMEOUT) == 0  # the old generation drained and left


def test_no_upgrade_starts_during_a_probation(sockdir: Path) -> None:
    with SlowServer(sockdir, "uvloop", "--probation", "60") as server:
        server.ready(0)
        asking = Asking(server.control)
        assert asking.on_probation.wait(TIMEOUT)
        # The new generation answers on the control socket now; the pidfile names the old one.
        with pytest.raises(UpgradeBusy, match="this generation is on probation"):
            request_upgrade(server.control, timeout=TIMEOUT)
        with pytest.raises(UpgradeBusy, match="is on probation"):
            request_upgrade(server.pidfile, timeout=TIMEOUT)
        server.close()  # both end: the probation with them
    assert isinstance(asking.result(), UpgradeError)


def test_the_new_generation_takes_over_if_the_old_one_goes_away(sockdir: Path) -> None:
    with SlowServer(sockdir, "trio", "--probation", "60") as server:
        first = server.ready(0)["pid"]
        asking = Asking(server.control)
        new = server.ready(1)["pid"]
        server.process.kill()
        assert server.process.wait(TIMEOUT) == -signal.SIGKILL
        server.said("went away during the probation: this is the main process now")
        assert server.serving() == new
        # Its stderr is its own again (the relay that carried it went with the old one).
        assert Request(sockdir / "app.sock", "!put back").result().startswith(f"{new} ".encode())
        server.said("put back")
    assert isinstance(asking.result(), UpgradeError)
    assert wait_gone(first)


def test_the_drain_timeout_counts_from_the_end_of_the_probation(sockdir: Path) -> None:
    with SlowServer(sockdir, "asyncio", "--probation", "1", "--drain-timeout", "0.6") as server:
        first = server.ready(0)["pid"]
        requests = [Request(sockdir / "app.sock", ms) for ms in (1_200, 20_000)]
        for request in requests:
            server.in_flight(int(request.ms))
        request_upgrade(server.control, timeout=TIMEOUT)
        answers = [request.result() for request in requests]
        assert answers == [f"{first} 0 1200\n".encode(), b""]
        assert server.process.wait(TIMEOUT) == 0
        drained = pidfiles.outcome(pidfiles.read_status(server.pidfile), 1)
        assert drained is not None and drained["drain"]["cut"] == 1


def _set(event: threading.Event, interim: dict[str, Any]) -> None:
    event.set()


class Asking:
    """An upgrade asked for in a thread: its reply, or what it raised."""

    def __init__(self, control: Path) -> None:
        self.outcome: list[dict[str, Any] | Exception] = []
        #: Set once the server says the new generation is on probation (the commit).
        self.on_probation = threading.Event()
        self.thread = threading.Thread(target=self._ask, args=(control,), daemon=True)
        self.thread.start()

    def _ask(self, control: Path) -> None:
        try:
            heard = partial(_set, self.on_probation)
            self.outcome.append(request_upgrade(control, timeout=TIMEOUT, on_probation=heard))
        except Exception as exc:  # the test reads it
            self.outcome.append(exc)

    def result(self) -> dict[str, Any] | Exception:
        self.thread.join(TIMEOUT)
        assert self.outcome, "no answer"
        return self.outcome[0]


# ----------------------------------------------------------------------
# Under load: examples/upgrade_handover.py, its first new generation crashing 1 s
# after ready().


class Load(ClientThreads):
    """Clients in threads: new connections, one request each, and keep-alive ones
    that reconnect after a failure; every request's outcome, with the client's port."""

    def __init__(self, port: int, fresh: int = 2, kept: int = 2) -> None:
        self.port = port
        self.answered: dict[int, int] = {}  # pid -> requests it answered
        self.failed: list[tuple[int, str]] = []  # (the client's port, what happened)
        super().__init__([self._fresh] * fresh + [self._kept] * kept)

    def _ask(self, sock: socket.socket) -> None:
        sock.sendall(b"+")
        data = b""
        while len(data) < 8:
            chunk = sock.recv(8 - len(data))
            if not chunk:
                raise ConnectionError("closed before the answer")
            data += chunk
        pid = int.from_bytes(data[:4], "big")
        with self.progress:
            self.answered[pid] = self.answered.get(pid, 0) + 1
            self.progress.notify_all()

    def wait_answered(self, pid: int, count: int) -> None:
        """Wait until ``pid`` has answered ``count`` requests."""
        self.wait_until(lambda: self.answered.get(pid, 0) >= count, lambda: self.failed)

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), TIMEOUT)
        sock.settimeout(TIMEOUT)
        return sock

    def _fresh(self) -> None:
        while not self.stop.is_set():
            self._once(None)
            self.stop.wait(0.001)  # pacing, not synchronisation

    def _kept(self) -> None:
        sock: socket.socket | None = None
        while not self.stop.is_set():
            sock = self._once(sock)
            self.stop.wait(0.001)  # pacing, not synchronisation
        if sock is not None:
            sock.close()

    def _once(self, kept: socket.socket | None) -> socket.socket | None:
        """One request (on ``kept``, else on a new connection); the connection to keep."""
        sock = kept
        port = 0
        try:
            sock = sock or self._connect()
            port = sock.getsockname()[1]
            self._ask(sock)
        except OSError as exc:
            with self.progress:
                self.failed.append((port, repr(exc)))
            if sock is not None:
                sock.close()
            return None
        if kept is None:
            sock.close()
            return None
        return sock


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_version_that_crashes_after_ready_is_rolled_back_under_load(
    sockdir: Path, backend: str
) -> None:
    held = sockdir / "held.json"
    wrapper = [sys.executable, str(CRASHING), "--after", "1", "--once", str(sockdir / "once")]
    wrapper += ["--held", str(held), "--"]
    with Server(sockdir, backend, "--handover", "--probation", "3", prefix=wrapper) as server:
        first = server.expect("ready")
        load = Load(first["port"])
        with load.running():
            with pytest.raises(UpgradeFailed) as rolled:
                request_upgrade(server.control, timeout=TIMEOUT)
            assert str(rolled.value).startswith("rolled back: the new generation (pid ")
            assert "exited with status 3, " in str(rolled.value)
            assert " ms after ready(): crashing on purpose" in str(rolled.value)
            server.expect("accepting-again", pid=first["pid"])
            assert server.serving() == first["pid"]
            result = request_upgrade(server.control, timeout=TIMEOUT)  # this one lives
            assert result["probation"] == 3
            assert server.expect("ready", pid=result["pid"])["port"] == first["port"]
            load.wait_answered(result["pid"], 100)
        crashed = server.expect("ready", generation=1)["pid"]
        assert crashed not in (first["pid"], result["pid"])
    ports = {peer[1] for peer in json.loads(held.read_text())}
    beyond = [failure for failure in load.failed if failure[0] not in ports]
    assert beyond == [], f"failed beyond the {len(ports)} the crashed generation held"
    assert all(load.answered.get(pid, 0) > 0 for pid in (first["pid"], crashed, result["pid"]))
