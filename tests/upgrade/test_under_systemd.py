"""Upgrades under a real systemd: the unit stays active and its main PID follows.

The service is examples/upgrade_handover.py in docs/upgrade.md's unit
(``Type=notify``, ``NotifyAccess=main``, ``PIDFile=``, ``ExecReload=fdchannel
upgrade PIDFILE``), upgraded by ``systemctl reload`` or through its control
socket.  systemd must see ``READY=1`` at start, the main PID move
to each new generation (``MAINPID=``, sent by the old one while it is still
the main process), the unit stay active through a failed upgrade, and stop
cleanly; clients keep requesting throughout without an error.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from fdchannel.upgrade import request_upgrade
from fdchannel.upgrade.pidfile import read_pid, read_status

from .harness import TIMEOUT, Clients
from .systemd_manager import Manager, cannot_start, poll, unavailable

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))

SERVER = Path(__file__).resolve().parents[2] / "examples" / "upgrade_handover.py"
UNIT = "fdchannel-upgrade.service"
TARGET = "fdchannel-test.target"


def units(tmp: Path, *options: str) -> dict[str, str]:
    command = " ".join(
        [
            sys.executable,
            str(SERVER),
            f"--listen unix:{tmp / 'server.sock'}",
            f"--pidfile {tmp / 'server.pid'}",
            f"--control {tmp / 'control.sock'}",
            "--handover",
            *options,
        ]
    )
    return {
        TARGET: "[Unit]\nDefaultDependencies=no\nWants=" + UNIT + "\n",
        UNIT: (
            "[Unit]\nDefaultDependencies=no\n"
            "[Service]\nType=notify\nNotifyAccess=main\n"
            f"ExecStart={command}\n"
            f"ExecReload={sys.executable} -m fdchannel upgrade {tmp / 'server.pid'}\n"
            f"PIDFile={tmp / 'server.pid'}\n"
            f"StandardOutput=append:{tmp / 'events'}\n"
            f"StandardError=append:{tmp / 'events'}\n"
            "TimeoutStopSec=20\n"
        ),
    }


def outcome(tmp: Path, attempt: int) -> dict[str, Any]:
    """The upgrade status file once it records ``attempt`` (a SIGHUP's has no reply)."""

    def recorded() -> dict[str, Any] | None:
        status = read_status(tmp / "server.pid")
        return status if status["attempt"] == attempt else None

    status = poll(recorded)
    if status is None:
        raise TimeoutError(f"no outcome of upgrade attempt {attempt}")
    return status


def test_the_unit_follows_each_generation(sockdir: Path) -> None:
    why = cannot_start()
    if why is not None:
        pytest.skip(why)
    once = sockdir / "died"
    die = ("--die-at", "ready-sent", "--die-once", str(once))
    with Manager(sockdir, units(sockdir, *die), TARGET) as systemd:
        shown = systemd.wait_for(UNIT, ActiveState="active", SubState="running")
        main = int(shown["MainPID"])
        assert main == read_pid(sockdir / "server.pid")
        clients = Clients(str(sockdir / "server.sock"), family=socket.AF_UNIX)
        with clients.running():
            # A new generation killed before its commit: the reload fails, and the old
            # generation stays the main process of an active unit.
            failed = systemd.systemctl("reload", UNIT, check=False)
            assert failed.returncode != 0
            assert once.exists()
            assert outcome(sockdir, 1)["ok"] is False
            systemd.wait_for(
                UNIT,
                until=lambda shown: "the last upgrade failed" in shown.get("StatusText", ""),
                ActiveState="active",
                MainPID=str(main),
            )
            attempt = 1
            for how in ["control", "reload", "control", "reload"]:
                attempt += 1
                if how == "control":
                    pid = request_upgrade(sockdir / "control.sock", timeout=TIMEOUT)["pid"]
                else:  # waits for the upgrade: ExecReload is `fdchannel upgrade PIDFILE`
                    systemd.systemctl("reload", UNIT)
                    status = outcome(sockdir, attempt)
                    assert status["ok"] is True, status
                    pid = status["pid"]
                assert isinstance(pid, int) and pid != main
                shown = systemd.wait_for(
                    UNIT, MainPID=str(pid), ActiveState="active", SubState="running"
                )
                assert shown["NRestarts"] == "0"
                assert read_pid(sockdir / "server.pid") == pid
                assert systemd.settle({1, pid}) == {1, pid}  # the old one drained and exited
                main = pid
            clients.wait_rounds()
        assert clients.errors == []
        systemd.systemctl("stop", UNIT)
        systemd.wait_for(UNIT, ActiveState="inactive", Result="success", MainPID="0")
        assert systemd.processes() == {1}
