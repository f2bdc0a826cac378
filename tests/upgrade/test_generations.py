"""Upgrades between real processes under load: handover, rollback, busy, triggers, leaks.

The server (examples/upgrade_handover.py) runs on each event loop; clients keep
requesting from a thread throughout, and every failed, refused or reset
request counts as an error.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fdchannel.errors import UpgradeBusy, UpgradeFailed
from fdchannel.upgrade import NEW_STEPS, request_upgrade

from .harness import TIMEOUT, Clients, Server, wait_gone

BACKENDS = ["asyncio", "uvloop", "trio"]


@pytest.fixture
def tmp(sockdir: Path) -> Path:
    return sockdir


def started(tmp: Path, backend: str, *args: str, **kw: Any) -> tuple[Server, dict[str, Any]]:
    server = Server(tmp, backend, "--handover", *args, **kw)
    return server, server.expect("ready")


#: How connections travel: stopped, then handed over; or handed over while the old
#: generation serves them, which stops only to say "go" once replaced.
HANDOVERS = [("--handover",), ("--handover", "--switch")]


class Asking:
    """An upgrade asked for in a thread (the server holds it somewhere meanwhile)."""

    def __init__(self, control: Path) -> None:
        self.outcome: list[dict[str, Any] | Exception] = []
        self.thread = threading.Thread(target=self._ask, args=(control,), daemon=True)
        self.thread.start()

    def _ask(self, control: Path) -> None:
        try:
            self.outcome.append(request_upgrade(control, timeout=TIMEOUT))
        except Exception as exc:  # the test reads it
            self.outcome.append(exc)

    def result(self) -> dict[str, Any]:
        """The reply, once the server is let go on: raises what the asking raised."""
        self.thread.join(TIMEOUT)
        assert self.outcome, "no answer"
        if isinstance(self.outcome[0], Exception):
            raise self.outcome[0]
        return self.outcome[0]


@pytest.mark.parametrize("handover", HANDOVERS, ids=["pause", "switch"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_upgrades_hand_over_listeners_and_connections(
    tmp: Path, backend: str, handover: tuple[str, ...]
) -> None:
    with Server(tmp, backend, *handover) as server:
        first = server.expect("ready")
        clients = Clients(("127.0.0.1", first["port"]))
        with clients.running():
            pids = [first["pid"]]
            for generation in (1, 2, 3):
                result = request_upgrade(server.control, timeout=TIMEOUT)
                assert result["generation"] == generation
                ready = server.expect("ready")
                assert ready["pid"] == result["pid"] == server.serving()
                assert ready["port"] == first["port"]
                assert ready["fds"] == first["fds"], "a generation holds other descriptors"
                pids.append(result["pid"])
            assert clients.ask_once() == pids[-1]
            clients.wait_rounds()
        assert clients.errors == []
        # Each kept-alive connection moved on with the server, never reconnecting.
        assert clients.answered_by == [set(pids)] * len(clients.answered_by)
        assert sorted(os.listdir(tmp)) == ["control.sock", "server.pid", "server.pid.upgrade"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_switch_hands_over_a_connection_closed_meanwhile(tmp: Path, backend: str) -> None:
    # With --switch the old generation serves on while its connections travel:
    # one that closes between the snapshot and the send must not spoil the
    # handover (it once did: EBADF, or worse, a reused descriptor number).
    fifo = tmp / "hold"
    os.mkfifo(fifo)
    server, first = started(tmp, backend, "--switch", "--hold-handover", str(fifo))
    with server, socket.create_connection(("127.0.0.1", first["port"]), TIMEOUT) as doomed:
        doomed.settimeout(TIMEOUT)
        doomed.sendall(b"+")
        assert len(doomed.recv(64)) == 8  # accepted and served: part of the snapshot
        clients = Clients(("127.0.0.1", first["port"]))
        with clients.running():
            asking = Asking(server.control)
            server.expect("holding", step="handover")
            doomed.shutdown(socket.SHUT_WR)
            server.expect("closed", pid=first["pid"], ident=0)  # its first: doomed
            ready, _, _ = select.select([doomed], [], [], 0)
            assert not ready, "closed under the handover: nothing is left to hand over"
            with open(fifo, "wb"):
                pass  # let it send
            os.unlink(fifo)  # the next generation does not hold
            assert asking.result()["ok"] is True
            assert server.expect("ready")["pid"] == server.serving() != first["pid"]
            assert doomed.recv(64) == b""  # the new generation took it, read the end, closed it
            clients.wait_rounds()
        assert clients.errors == []


STEPS = ["start", *NEW_STEPS[:-1]]  # "serving" is after the commit: the upgrade is done


@pytest.mark.parametrize(
    ("backend", "handover"),
    [(backend, ()) for backend in BACKENDS] + [("asyncio", ("--switch",))],
    ids=[*BACKENDS, "asyncio-switch"],
)
@pytest.mark.parametrize("step", STEPS)
def test_sigkill_at_each_step_rolls_back(
    tmp: Path, backend: str, handover: tuple[str, ...], step: str
) -> None:
    once = tmp / "died"
    die = ("--die-at", step, "--die-once", str(once))
    server, first = started(tmp, backend, *handover, *die)
    with server:
        clients = Clients(("127.0.0.1", first["port"]))
        with clients.running():
            with pytest.raises(UpgradeFailed) as failed:
                request_upgrade(server.control, timeout=TIMEOUT)
            assert once.exists()
            # What the new generation did, never the state of the link to it.
            assert f"(pid {failed_pid(failed.value)}) was killed by SIGKILL " in str(failed.value)
            assert server.serving() == first["pid"]
            assert clients.ask_once() == first["pid"]
            result = request_upgrade(server.control, timeout=TIMEOUT)
            assert server.expect("ready")["pid"] == result["pid"]
        assert clients.errors == []
        assert clients.ask_once() == result["pid"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_failed_health_check_rolls_back_with_the_reason(tmp: Path, backend: str) -> None:
    server, first = started(tmp, backend, "--fail-before-ready")
    with server:
        clients = Clients(("127.0.0.1", first["port"]))
        with clients.running():
            with pytest.raises(UpgradeFailed, match="the health check failed"):
                request_upgrade(server.control, timeout=TIMEOUT)
            assert clients.ask_once() == first["pid"]
        assert clients.errors == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_second_upgrade_is_refused_while_one_runs(tmp: Path, backend: str) -> None:
    fifo = tmp / "hold"
    os.mkfifo(fifo)
    server, first = started(tmp, backend, "--hold-ready", str(fifo))
    with server:
        asking = Asking(server.control)
        server.expect("holding")  # the new generation is starting: an upgrade is under way
        with pytest.raises(UpgradeBusy, match="already in progress"):
            request_upgrade(server.control, timeout=TIMEOUT)
        with open(fifo, "wb"):
            pass  # let it be ready
        assert asking.result()["ok"] is True
        assert server.expect("ready")["pid"] == server.serving() != first["pid"]


def failed_pid(error: Exception) -> int:
    """The pid a failed upgrade's reason names: ``the new generation (pid N) ...``."""
    found = re.search(r"the new generation \(pid (\d+)\)", str(error))
    assert found is not None, error
    return int(found[1])


def running(pid: int) -> bool:
    """Whether ``pid`` runs (exists and is no zombie)."""
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def fdchannel_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fdchannel", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
    )


@pytest.mark.parametrize("how", ["pidfile", "control"])
def test_the_command_line_triggers_and_reports(tmp: Path, how: str) -> None:
    once = tmp / "died"
    server, _ = started(tmp, "asyncio", "--die-at", "acknowledged", "--die-once", str(once))
    with server:
        target = str(server.pidfile if how == "pidfile" else server.control)
        failed = fdchannel_cli("upgrade", target)
        assert failed.returncode == 1, failed
        assert "fdchannel: error: the new generation (pid " in failed.stderr
        assert ") was killed by SIGKILL before ready()" in failed.stderr
        done = fdchannel_cli("upgrade", target)
        assert done.returncode == 0, done
        ready = server.expect("ready")
        assert done.stdout.startswith(f"upgraded: pid {ready['pid']} serves now")
        assert server.serving() == ready["pid"]


def test_systemd_hears_reloading_then_the_new_main_pid(tmp: Path) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp / "notify"))
    notify.settimeout(TIMEOUT)
    env = {"NOTIFY_SOCKET": str(tmp / "notify")}
    with notify:
        # Every new generation fails.
        server, _ = started(tmp, "asyncio", "--fail-before-ready", env=env)
        with server:

            def heard() -> dict[str, str]:
                text = notify.recv(4096).decode()
                return dict(line.split("=", 1) for line in text.splitlines())

            assert heard()["READY"] == "1"
            with pytest.raises(UpgradeFailed):
                request_upgrade(server.control, timeout=TIMEOUT)
            reloading = heard()
            assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
            back = heard()
            assert back["READY"] == "1" and "MAINPID" not in back
            assert "the health check failed" in back["STATUS"]


def test_systemd_main_pid_follows_the_new_generation(tmp: Path) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp / "notify"))
    notify.settimeout(TIMEOUT)
    with notify:
        server, _ = started(tmp, "trio", env={"NOTIFY_SOCKET": str(tmp / "notify")})
        with server:
            messages = [notify.recv(4096).decode()]
            result = request_upgrade(server.control, timeout=TIMEOUT)
            server.expect("ready")
            messages += [notify.recv(4096).decode(), notify.recv(4096).decode()]
    assert messages[0].startswith("READY=1")
    assert messages[1].startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert messages[2].startswith(f"MAINPID={result['pid']}\nREADY=1")


def test_socket_activated_listeners_are_handed_on(tmp: Path) -> None:
    activate = "/usr/bin/systemd-socket-activate"
    if not os.path.exists(activate):
        pytest.skip("systemd-socket-activate is not installed")
    path = tmp / "app.sock"
    prefix = [activate, "-l", str(path), "--fdname=main"]
    with Server(tmp, "uvloop", "--handover", "--listen", f"unix:{path}", prefix=prefix) as server:
        # systemd-socket-activate starts the server when the first peer connects.
        with first_peer(path):
            server.expect("ready")
        clients = Clients(str(path), socket.AF_UNIX)
        with clients.running():
            result = request_upgrade(server.control, timeout=TIMEOUT)
            server.expect("ready")
            assert clients.ask_once() == result["pid"]
            request_upgrade(server.control, timeout=TIMEOUT)
            server.expect("ready")
        assert clients.errors == []


@contextlib.contextmanager
def first_peer(path: Path) -> Iterator[socket.socket]:
    """A connection to a unix socket some other process is about to bind."""
    deadline = time.monotonic() + TIMEOUT
    with socket.socket(socket.AF_UNIX) as sock:
        while True:
            try:
                sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)  # retrying a connect, bounded by the deadline
        yield sock


@pytest.mark.parametrize(("backend", "upgrades"), [("asyncio", 100), ("uvloop", 20), ("trio", 20)])
def test_nothing_leaks_across_upgrades(tmp: Path, backend: str, upgrades: int) -> None:
    server, first = started(tmp, backend)
    with server:
        clients = Clients(("127.0.0.1", first["port"]), connections=2)
        with clients.running():
            for _ in range(upgrades):
                old = server.serving()
                request_upgrade(server.control, timeout=TIMEOUT)
                ready = server.expect("ready")
                assert ready["fds"] == first["fds"]
                server.expect("exit", pid=old)
                assert wait_gone(old), f"generation {old} did not exit after it was replaced"
        assert clients.errors == []
        # Every generation but the serving one has exited; no stray socket files.
        # (A generation may be reaped while this looks: running() takes that as gone.)
        assert [pid for pid in server.pids() if running(pid)] == [server.serving()]
        assert sorted(os.listdir(tmp)) == ["control.sock", "server.pid", "server.pid.upgrade"]
