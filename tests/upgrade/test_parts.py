"""The upgrader's parts, in this process: what a generation inherits, pidfiles,
systemd notifications, asking for an upgrade, and the old side's refusals and
rollbacks against new generations that are not fdchannel programs at all."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fdchannel.errors import UpgradeBusy, UpgradeError, UpgradeFailed
from fdchannel.upgrade import (
    Upgrader,
    lineage as lineage_env,
    pidfile as pidfiles,
    request_upgrade,
    systemd,
)
from fdchannel.upgrade.spawn import exit_text

GOOD = "cpr=5,control=6,handover=7,parent=1,generation=2"


@pytest.mark.parametrize(
    "text",
    [
        "cpr=5,control=6,handover=7,parent=1",  # one missing
        GOOD + ",extra=1",
        "cpr=five,control=6,handover=7,parent=1,generation=2",
        "cpr=-5,control=6,handover=7,parent=1,generation=2",
        "cpr=12345678901,control=6,handover=7,parent=1,generation=2",
        "cpr=\u0665,control=6,handover=7,parent=1,generation=2",  # a digit, not ASCII
        "cpr=2147483648,control=6,handover=7,parent=1,generation=2",  # beyond INT_MAX
        "cpr=5,control=6,handover=7,parent=4294967296,generation=2",
        "",
        "cpr",
    ],
)
def test_a_malformed_lineage_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="FDCHANNEL_UPGRADE"):
        lineage_env.Lineage.parse(text)


def test_a_lineage_reads_back() -> None:
    parsed = lineage_env.Lineage.parse(GOOD)
    assert parsed == lineage_env.Lineage(5, 6, 7, 1, 2)
    assert lineage_env.Lineage.parse(parsed.encode()) == parsed


def test_a_lineage_meant_for_another_process_is_ignored_and_removed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(lineage_env.ENV, GOOD)  # parent 1 is not our parent
    assert lineage_env.take() is None
    assert lineage_env.ENV not in os.environ
    monkeypatch.delenv(lineage_env.ENV, raising=False)
    assert lineage_env.take() is None


@pytest.mark.anyio
@pytest.mark.parametrize("cpr", ["2147483648", "9999999999", "five"])
async def test_a_malformed_lineage_is_an_upgrade_error(
    monkeypatch: pytest.MonkeyPatch, cpr: str
) -> None:
    text = f"cpr={cpr},control=6,handover=7,parent={os.getppid()},generation=1"
    monkeypatch.setenv(lineage_env.ENV, text)
    with pytest.raises(UpgradeError, match=lineage_env.ENV):
        async with Upgrader(trigger=None):
            pass


def test_a_lineage_naming_closed_descriptors_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    closed = os.open("/dev/null", os.O_RDONLY)
    os.close(closed)
    text = f"cpr={closed},control={closed},handover={closed},parent={os.getppid()},generation=1"
    monkeypatch.setenv(lineage_env.ENV, text)
    with pytest.raises(UpgradeError, match="not open"):
        lineage_env.take()


def test_pidfile_and_status(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    assert pidfiles.read_status(path) == {"attempt": 0}
    pidfiles.write_pid(path, 1234, 5678)
    assert path.read_text() == "1234\nstart=5678\n" and pidfiles.read_pid(path) == 1234
    named = pidfiles.read_pidfile(path)
    assert (named.pid, named.start) == (1234, 5678)
    path.write_text("1234\n")  # a pidfile of the pid alone, as written before the start time
    assert pidfiles.read_pidfile(path).start is None
    pidfiles.write_status(path, {"attempt": 3, "ok": True})
    assert pidfiles.read_status(path) == {"attempt": 3, "ok": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.pid", "app.pid.upgrade"]


@pytest.mark.parametrize(
    "content",
    [
        *(
            "",
            "abc",
            "-5",
            "0",
            "12 34",
            "١٢",
            "12\nabc",
            "12\n5",
            "12\nstart=-5",
            "12\nstart=5\n6",
        ),
        *("2147483648", "18446744073709551616"),  # no pid_t: pidfd_open would overflow
    ],
)
def test_a_pidfile_without_a_pid_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "app.pid"
    path.write_text(content)
    with pytest.raises(ValueError, match="does not hold a process id"):
        pidfiles.read_pid(path)


@pytest.mark.parametrize(
    ("status", "text"),
    [
        (0, "exit status 0"),
        (3 << 8, "exit status 3"),
        (signal.SIGKILL, "killed by SIGKILL"),
        (-1, "status unknown"),
    ],
)
def test_exit_text(status: int, text: str) -> None:
    assert exit_text(status) == text


@pytest.mark.parametrize("abstract", [False, True])
def test_systemd_notify(monkeypatch: pytest.MonkeyPatch, sockdir: Path, abstract: bool) -> None:
    name = f"\0fdc-notify-{os.getpid()}" if abstract else str(sockdir / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(name)
        listener.settimeout(10)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name[1:] if abstract else name)
        assert systemd.notify(RELOADING=1, STATUS="upgrading")
        lines = listener.recv(4096).decode().splitlines()
    assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=")
    assert lines[2] == "STATUS=upgrading"


def test_systemd_notify_without_systemd(monkeypatch: pytest.MonkeyPatch, sockdir: Path) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not systemd.notify(READY=1)
    monkeypatch.setenv("NOTIFY_SOCKET", str(sockdir / "nobody-listens"))
    assert not systemd.notify(READY=1)  # logged, not raised


def test_asking_nothing_is_an_error(sockdir: Path) -> None:
    with pytest.raises(UpgradeError, match="No such file"):
        request_upgrade(sockdir / "missing")
    (sockdir / "garbage.pid").write_text("not a pid")
    with pytest.raises(UpgradeError, match="does not hold a process id"):
        request_upgrade(sockdir / "garbage.pid")


@pytest.mark.parametrize(
    ("answer", "error", "match"),
    [
        (b"", UpgradeError, "hung up without an answer"),
        (b"nonsense\n", UpgradeError, "nonsense"),
        (b'{"ok": false, "busy": true, "error": "cannot upgrade now"}\n', UpgradeBusy, "now"),
        (b'{"ok": false, "error": "it exited"}\n', UpgradeFailed, "it exited"),
    ],
)
def test_what_a_control_socket_answers(
    sockdir: Path, answer: bytes, error: type[Exception], match: str
) -> None:
    path = sockdir / "control.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen()

        def reply() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(100)
                conn.sendall(answer)

        thread = threading.Thread(target=reply)
        thread.start()
        try:
            with pytest.raises(error, match=match):
                request_upgrade(path, timeout=10)
        finally:
            thread.join(10)


@pytest.mark.anyio
async def test_an_upgrade_before_ready_is_busy(sockdir: Path) -> None:
    async with Upgrader(trigger=None) as up:
        await up.listen("main", f"unix:{sockdir}/app.sock")
        with pytest.raises(UpgradeBusy, match="not ready"):
            await up.upgrade()
        with await up.ready():
            pass
        with pytest.raises(UpgradeError, match="once"):
            await up.ready()
    assert not (sockdir / "app.sock").exists(), "the last generation leaves no socket file"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("command", "match"),
    [
        (["fdchannel-no-such-program"], "not on PATH"),
        (["/nonexistent/program"], "cannot start"),
        (["true"], r"\(pid \d+\) exited with status 0 before ready\(\)$"),
        (
            ["sh", "-c", "echo no config >&2; exit 7"],
            r"exited with status 7 before ready\(\): no config$",
        ),
    ],
)
async def test_a_new_generation_that_cannot_take_over_is_rolled_back(
    sockdir: Path, command: list[str], match: str
) -> None:
    pidfile = sockdir / "app.pid"
    async with Upgrader(trigger=None, pidfile=pidfile) as up:
        listener = await up.listen("main", f"unix:{sockdir}/app.sock")
        with await up.ready():
            pass
        with pytest.raises(UpgradeFailed, match=match):
            await up.upgrade(command)
        assert not up.replaced
        assert pidfiles.read_pid(pidfile) == os.getpid()
        status = pidfiles.read_status(pidfile)
        assert status["attempt"] == 1 and status["ok"] is False
        await listener.aclose()


@pytest.mark.anyio
async def test_a_new_generation_that_never_speaks_is_killed(sockdir: Path) -> None:
    async with Upgrader(trigger=None, start_timeout=0.5) as up:
        await up.listen("main", f"unix:{sockdir}/app.sock")
        with await up.ready():
            pass
        with pytest.raises(UpgradeFailed, match="did not take the listeners"):
            await up.upgrade(["sleep", "60"])
        assert not sleeping_children(), "the silent new generation was left running"


def sleeping_children() -> list[str]:
    """Our children running ``sleep`` (zombies included: they were not reaped)."""
    me = os.getpid()
    children = Path(f"/proc/{me}/task/{me}/children").read_text().split()
    return [pid for pid in children if Path(f"/proc/{pid}/comm").read_text() == "sleep\n"]


def test_the_status_file_is_json(tmp_path: Path) -> None:
    pidfiles.write_status(tmp_path / "x.pid", {"attempt": 1, "reason": "é\n"})
    assert json.loads((tmp_path / "x.pid.upgrade").read_text())["reason"] == "é\n"


def test_an_outcome_outlives_later_refusals(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    upgrade = pidfiles.start_attempt(path)
    pidfiles.record(path, {"attempt": upgrade, "ok": True})
    for _ in range(pidfiles.RECENT + 5):  # refused while it was under way, recorded after it
        refused = pidfiles.start_attempt(path)
        pidfiles.record(path, {"attempt": refused, "ok": False, "busy": True})
    status = pidfiles.read_status(path)
    assert pidfiles.outcome(status, upgrade) == {"attempt": upgrade, "ok": True}
    assert status["attempt"] == status["started"] == refused == upgrade + pidfiles.RECENT + 5
    assert len(status["recent"]) == pidfiles.RECENT
    assert pidfiles.outcome(status, refused + 1) is None  # not asked for yet


@pytest.mark.anyio
async def test_listening_on_a_descriptor_that_is_no_listener_is_an_upgrade_error(
    sockdir: Path,
) -> None:
    """fd: naming a pipe or a file: nothing a next generation could accept on."""
    read, write = os.pipe()
    try:
        async with Upgrader(trigger=None) as up:
            with pytest.raises(UpgradeError, match="not a listening socket"):
                await up.listen("main", f"fd:{read}")
    finally:
        os.close(read)
        os.close(write)


def test_asking_for_an_upgrade_loads_no_event_loop() -> None:
    """``fdchannel upgrade`` has no event loop: it does not pay for importing one."""
    code = (
        "import sys; from fdchannel.upgrade import request_upgrade; import fdchannel.cli.upgrade; "
        "print(sorted(m for m in ('anyio', 'trio', 'sniffio') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.strip() == "[]"
