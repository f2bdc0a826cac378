"""The upgrader against hostile or unlucky neighbours: control-socket clients that
misbehave, files planted beside the pidfile, stale pidfiles, squatters, requests
that overlap, errors after the commit and old generations that die.

Servers are Upgraders in this process; new generations, squatters and unrelated
processes are real processes (tests/upgrade/trust_peer.py, ``sleep``)."""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import pytest

from fdchannel.errors import UpgradeBusy, UpgradeError, UpgradeFailed
from fdchannel.upgrade import Upgrader, pidfile as pidfiles, request_upgrade
from fdchannel.upgrade.control_server import REQUEST_BYTES

from ..intruder import NOBODY, needs_root
from .harness import wait_gone

HELPER = Path(__file__).with_name("trust_peer.py")
TIMEOUT = 30.0


def new_generation(sockdir: Path, *args: str) -> list[str]:
    """The command of a new generation that listens where the test's server does."""
    return [sys.executable, str(HELPER), "generation", *listening(sockdir), *args]


def listening(sockdir: Path) -> list[str]:
    return ["--listen", f"unix:{sockdir}/app.sock", "--report", str(sockdir / "report")]


@contextmanager
def reports(sockdir: Path) -> Iterator[socket.socket]:
    """Where the helper's generations report (read with ``heard``)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sockdir / "report"))
        sock.settimeout(TIMEOUT)
        yield sock


async def heard(sock: socket.socket) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(await anyio.to_thread.run_sync(sock.recv, 65536))
    return report


async def reap(pid: int) -> None:
    """Wait for a generation this process started to exit, and reap it."""
    pidfd = os.pidfd_open(pid)
    try:
        with anyio.fail_after(TIMEOUT):
            await anyio.wait_readable(pidfd)
    finally:
        os.close(pidfd)
    await anyio.to_thread.run_sync(os.waitpid, pid, 0)  # it has exited: at once


async def ask(target: Path, **kwargs: Any) -> dict[str, Any]:
    """``request_upgrade`` from a thread: the server runs on this event loop."""
    reply: dict[str, Any] = await anyio.to_thread.run_sync(
        partial(request_upgrade, target, timeout=TIMEOUT, **kwargs)
    )
    return reply


async def first_line(stream: anyio.abc.ByteStream) -> dict[str, Any]:
    """The server's one reply line (it may reset the connection after it)."""
    data = b""
    with anyio.fail_after(10):
        while not data.endswith(b"\n"):
            try:
                data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                break
    reply: dict[str, Any] = json.loads(data)
    return reply


async def upgraded(up: Upgrader, control: Path, sockdir: Path) -> None:
    """A request through the control socket still upgrades to a real new generation."""
    with reports(sockdir) as heard_from:
        result = await ask(control)
        assert result["ok"] is True and up.replaced
        assert (await heard(heard_from))["event"] == "ready"
    await reap(result["pid"])


# ----------------------------------------------------------------------
# 1. One bad control-socket client does not take the server down.

#: What a client sends, whether it stays for the answer, and the answer's error.
CONTROL_CLIENTS = [
    pytest.param(b"", True, "no request within", id="silent"),
    pytest.param(b"upgr", True, "no request within", id="half-a-line"),
    pytest.param(b"u" * (REQUEST_BYTES + 1), True, "longer than", id="a-huge-line"),
    pytest.param(b"hello\n", True, "unknown request", id="unknown"),
    pytest.param(b'{"request": "restart"}\n', True, "unknown request", id="unknown-object"),
    pytest.param(b'{"request": "upgrade", "x": 1}\n', True, "unknown field", id="unknown-field"),
    pytest.param(
        b'{"request": "upgrade", "command": "sh"}\n', True, "list of strings", id="command-text"
    ),
    pytest.param(
        b'{"request": "upgrade", "command": []}\n', True, "names a program", id="command-empty"
    ),
    pytest.param(b'{"request": "upgrade", "cwd": "srv"}\n', True, "absolute", id="cwd-relative"),
    pytest.param(b'{"request": "upgrade", "env": {"A=B": "1"}}\n', True, "name", id="env-name"),
    pytest.param(b'{"request": "upgrade", "env": {"A": 1}}\n', True, "strings", id="env-value"),
    pytest.param(
        b'{"request": "upgrade", "cwd": "/nonexistent"}\n', True, "no such directory", id="cwd"
    ),
    pytest.param(b"", False, None, id="leaves-at-once"),
    pytest.param(b"upgr", False, None, id="half-a-line-then-leaves"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("sends", "stays", "error"), CONTROL_CLIENTS)
async def test_a_bad_control_client_does_not_take_the_server_down(
    sockdir: Path, sends: bytes, stays: bool, error: str | None
) -> None:
    control = sockdir / "ctl"
    async with Upgrader(trigger=None, control=control, command=new_generation(sockdir)) as up:
        up.control_timeout = 0.5
        await up.listen("main", f"unix:{sockdir}/app.sock")
        with await up.ready():
            pass
        async with await anyio.connect_unix(control) as client:
            if sends:
                await client.send(sends)
            if stays:
                reply = await first_line(client)
                assert reply["ok"] is False and error in reply["error"]
        await upgraded(up, control, sockdir)


@pytest.mark.anyio
async def test_control_clients_beyond_the_limit_are_refused(sockdir: Path) -> None:
    control = sockdir / "ctl"
    async with Upgrader(trigger=None, control=control, command=new_generation(sockdir)) as up:
        up.control_timeout = 2
        await up.listen("main", f"unix:{sockdir}/app.sock")
        with await up.ready():
            pass
        replies: list[str] = []

        async def silent() -> None:
            async with await anyio.connect_unix(control) as client:
                replies.append((await first_line(client))["error"])

        async with anyio.create_task_group() as tg:
            for _ in range(up.control_clients + 1):
                tg.start_soon(silent)
        # The scheduler picks which one comes last: exactly one is refused.
        assert sum("too many" in reply for reply in replies) == 1, replies
        assert sum("no request within" in reply for reply in replies) == up.control_clients
        await upgraded(up, control, sockdir)


# ----------------------------------------------------------------------
# 2. The files the upgrader writes, in a directory others may write to.


@pytest.mark.anyio
async def test_a_symlink_at_a_temporary_name_is_not_followed(sockdir: Path) -> None:
    victim = sockdir / "victim"
    victim.write_text("precious\n")
    pidfile = sockdir / "app.pid"
    for name in (pidfile.name, pidfile.name + ".upgrade"):  # the names once used
        (sockdir / f".{name}.{os.getpid()}.tmp").symlink_to(victim)
    async with Upgrader(trigger=None, pidfile=pidfile) as up:
        await up.listen("main", f"unix:{sockdir}/app.sock")
        with await up.ready():
            pass
        with pytest.raises(UpgradeFailed):
            await up.upgrade(["true"])
        for written in (pidfile, sockdir / "app.pid.upgrade"):
            assert stat.S_ISREG(written.lstat().st_mode), f"{written} is not a regular file"
    assert victim.read_text() == "precious\n"


def plant(path: Path, kind: str, victim: Path) -> None:
    """Put something other than a regular file at ``path``."""
    if kind == "symlink":
        path.symlink_to(victim)
    elif kind == "directory":
        path.mkdir()
    else:
        os.mkfifo(path)


PLANTED = ["symlink", "directory", "fifo"]


@pytest.mark.anyio
@pytest.mark.parametrize("kind", PLANTED)
async def test_something_planted_at_the_pidfile_is_a_clear_error(sockdir: Path, kind: str) -> None:
    victim = sockdir / "victim"
    victim.write_text("precious\n")
    pidfile = sockdir / "app.pid"
    plant(pidfile, kind, victim)
    async with Upgrader(trigger=None, pidfile=pidfile) as up:
        await up.listen("main", f"unix:{sockdir}/app.sock")
        with pytest.raises(UpgradeError, match=f"{pidfile}.*not a regular file"):
            await up.ready()
    assert victim.read_text() == "precious\n"


@pytest.mark.anyio
@pytest.mark.parametrize("kind", PLANTED)
async def test_something_planted_at_the_status_file_does_not_kill_the_server(
    sockdir: Path, kind: str
) -> None:
    victim = sockdir / "victim"
    victim.write_text("precious\n")
    pidfile, control = sockdir / "app.pid", sockdir / "ctl"
    status = sockdir / "app.pid.upgrade"
    command = new_generation(sockdir)
    async with Upgrader(trigger=None, pidfile=pidfile, control=control, command=command) as up:
        await up.listen("main", f"unix:{sockdir}/app.sock")
        with await up.ready():
            pass
        status.unlink()  # the service's record, started anew by ready()
        plant(status, kind, victim)
        for _ in range(2):  # answered each time, and the server serves on
            with pytest.raises(UpgradeError, match=f"{status}.*not a regular file"):
                await ask(control)
        assert not up.replaced
        status.rmdir() if kind == "directory" else status.unlink()
        await upgraded(up, control, sockdir)
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_pidfile_that_is_no_regular_file_is_not_read(sockdir: Path, kind: str) -> None:
    pidfile = sockdir / "app.pid"
    with unrelated() as pid:
        victim = sockdir / "victim"
        victim.write_text(f"{pid}\n")  # a symlink to a file naming a live process
        plant(pidfile, kind, victim)
        asked = fdchannel_cli("upgrade", "--timeout", "10", str(pidfile))
        assert not signalled(pid)
    assert asked.returncode == 1, asked
    assert f"{pidfile}" in asked.stderr and "not a regular file" in asked.stderr


#: Directory modes, and whether the log warns about one holding a pidfile and a control socket.
DIRECTORIES = [(0o700, False), (0o755, False), (0o1777, False), (0o777, True), (0o770, True)]


@pytest.mark.anyio
@pytest.mark.parametrize(("mode", "warned"), DIRECTORIES)
async def test_a_directory_others_may_write_to_is_warned_about_once(
    sockdir: Path, caplog: pytest.LogCaptureFixture, mode: int, warned: bool
) -> None:
    shared = sockdir / "shared"
    shared.mkdir()
    shared.chmod(mode)
    caplog.set_level(logging.WARNING, "fdchannel.upgrade")
    for _ in range(2):
        async with Upgrader(trigger=None, pidfile=shared / "app.pid", control=shared / "ctl"):
            pass
    warnings = [r.getMessage() for r in caplog.records if str(shared) in r.getMessage()]
    assert len(warnings) == (1 if warned else 0), warnings
    if warned:
        assert "writable by others" in warnings[0]


@contextmanager
def unrelated() -> Iterator[int]:
    """A process that has nothing to do with any upgrader (``sleep``), SIGHUP blocked:
    a SIGHUP sent to it stays pending, where ``signalled`` sees it."""
    pid = os.posix_spawnp("sleep", ["sleep", "60"], os.environ, setsigmask={signal.SIGHUP})
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def signalled(pid: int) -> bool:
    """Whether a SIGHUP is pending for ``pid`` (the kernel queues it at once)."""
    fields = dict(
        line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    pending = int(fields["ShdPnd"], 16) | int(fields["SigPnd"], 16)
    return bool(pending & (1 << (signal.SIGHUP - 1)))


def fdchannel_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fdchannel", *args], capture_output=True, text=True, timeout=TIMEOUT
    )


# ----------------------------------------------------------------------
# 3. A stale pidfile signals nothing; the last generation removes its pidfile.


def start_time(pid: int) -> int:
    """Field 22 of /proc/PID/stat: when the process started, in clock ticks after boot."""
    stat_line = Path(f"/proc/{pid}/stat").read_text()
    return int(stat_line[stat_line.rindex(")") + 2 :].split()[19])


#: A pidfile naming a process that is not the generation which wrote it.
STALE = ["gone", "reused", "reused-old-format"]


@pytest.mark.parametrize("case", STALE)
def test_a_stale_pidfile_signals_nobody(sockdir: Path, case: str) -> None:
    pidfile = sockdir / "app.pid"
    with unrelated() as pid:
        if case == "gone":
            gone = os.posix_spawnp("true", ["true"], os.environ)
            os.waitpid(gone, 0)
            pidfile.write_text(f"{gone}\nstart={start_time(pid)}\n")
        elif case == "reused":  # the pid, but another process's start time
            pidfile.write_text(f"{pid}\nstart={start_time(pid) - 1}\n")
        else:  # pid only, written before this process started (an hour ago)
            pidfile.write_text(f"{pid}\n")
            an_hour_ago = time.time() - 3600
            os.utime(pidfile, (an_hour_ago, an_hour_ago))
        asked = fdchannel_cli("upgrade", "--timeout", "10", str(pidfile))
        assert not signalled(pid)
    assert asked.returncode == 1, asked
    assert "stale pidfile" in asked.stderr, asked.stderr


@pytest.mark.anyio
@pytest.mark.parametrize("still_ours", [True, False])
async def test_the_last_generation_removes_its_pidfile(sockdir: Path, still_ours: bool) -> None:
    pidfile = sockdir / "app.pid"
    async with Upgrader(trigger=None, pidfile=pidfile) as up:
        await up.listen("main", f"unix:{sockdir}/app.sock")
        with await up.ready():
            pass
        assert pidfile.read_text().split("\n")[0] == str(os.getpid())
        if not still_ours:
            pidfile.write_text("1\n")  # someone else's now: left alone
    assert pidfile.exists() is not still_ours


@pytest.mark.anyio
async def test_a_rollback_kills_through_the_pidfd_never_by_pid(
    sockdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def by_pid(pid: int, signum: int) -> None:
        raise AssertionError(f"os.kill({pid}, {signum}): a pid may have been reused")

    async with Upgrader(trigger=None, start_timeout=0.5) as up:
        await up.listen("main", f"unix:{sockdir}/app.sock")
        with await up.ready():
            pass
        monkeypatch.setattr(os, "kill", by_pid)
        with pytest.raises(UpgradeFailed, match="did not take the listeners"):
            await up.upgrade(["sleep", "60"])


# ----------------------------------------------------------------------
# 4. Each request reads its own outcome.


@pytest.mark.anyio
async def test_each_pidfile_request_reads_its_own_outcome(sockdir: Path) -> None:
    pidfile = sockdir / "app.pid"
    command = new_generation(sockdir, "--hold", str(sockdir / "hold"))
    first: list[dict[str, Any]] = []
    with reports(sockdir) as heard_from:
        async with (
            await anyio.create_unix_listener(sockdir / "hold") as holding,
            Upgrader(pidfile=pidfile, command=command) as up,  # SIGHUP asks
        ):
            await up.listen("main", f"unix:{sockdir}/app.sock")
            with await up.ready():
                pass

            async with anyio.create_task_group() as tg:

                async def ask_first() -> None:
                    first.append(await ask(pidfile))

                tg.start_soon(ask_first)
                with anyio.fail_after(TIMEOUT):
                    new = await holding.accept()  # the new generation holds: an upgrade runs
                async with new:
                    assert await new.receive() == b"holding\n"
                    with pytest.raises(UpgradeBusy, match="already in progress"):
                        await ask(pidfile)
                # Hung up: the new generation goes on, and takes over.
            assert first[0]["ok"] is True and up.replaced
            assert (await heard(heard_from))["event"] == "ready"
            await reap(first[0]["pid"])


@pytest.mark.anyio
async def test_a_pidfile_of_the_pid_alone_still_asks_its_process(sockdir: Path) -> None:
    pidfile = sockdir / "app.pid"
    async with Upgrader(pidfile=pidfile, command=["sh", "-c", "exit 3"]) as up:
        await up.listen("main", f"unix:{sockdir}/app.sock")
        with await up.ready():
            pass
        pidfile.write_text(f"{os.getpid()}\n")  # written after this process started
        with pytest.raises(UpgradeFailed, match="exited with status 3 before ready"):
            await ask(pidfile)


# ----------------------------------------------------------------------
# 5. After the commit nothing is rolled back.


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["call", "control"])
async def test_an_error_after_the_commit_is_a_warning(sockdir: Path, how: str) -> None:
    pidfile, control = sockdir / "app.pid", sockdir / "ctl"
    # The new generation puts a directory where the old one writes the pidfile at the commit.
    command = new_generation(sockdir, "--dir-at", str(pidfile))
    with reports(sockdir) as heard_from:
        async with Upgrader(trigger=None, pidfile=pidfile, control=control, command=command) as up:
            await up.listen("main", f"unix:{sockdir}/app.sock")
            with await up.ready():
                pass
            result = (await up.upgrade()).as_json() if how == "call" else await ask(control)
            assert result["ok"] is True
            assert any(str(pidfile) in warning for warning in result["warnings"]), result
            with anyio.fail_after(TIMEOUT):
                assert await up.wait_replaced() == result["pid"]  # on to drain
            assert (await heard(heard_from))["event"] == "ready"
            await reap(result["pid"])
    status = pidfiles.read_status(pidfile)
    assert status["ok"] is True and status["pid"] == result["pid"]


# ----------------------------------------------------------------------
# 11. The control client believes only a server of its own uid (or root), and
# reads only so much of its answer.


@needs_root
def test_a_control_socket_served_by_another_user_is_not_believed(sockdir: Path) -> None:
    control = sockdir / "ctl"
    with socket.socket(socket.AF_UNIX) as bound:
        bound.bind(str(control))
        command = [sys.executable, str(HELPER), "squatter", "--fd", str(bound.fileno())]
        squatter = subprocess.Popen(command, stdout=subprocess.PIPE, pass_fds=[bound.fileno()])
    with squatter:
        assert squatter.stdout is not None
        assert select.select([squatter.stdout], [], [], TIMEOUT)[0], "the squatter is silent"
        assert squatter.stdout.readline() == b"listening\n"
        with pytest.raises(UpgradeError, match=f"uid {NOBODY}"):
            request_upgrade(control, timeout=10)
        assert squatter.wait(TIMEOUT) == 0


def test_a_control_answer_is_read_only_so_far(sockdir: Path) -> None:
    control = sockdir / "ctl"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(control))
        server.listen()

        def endless() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(100)
                try:
                    while True:  # no newline, ever: until the client hangs up
                        conn.sendall(b"x" * 65536)
                except OSError:
                    pass

        thread = threading.Thread(target=endless)
        thread.start()
        try:
            with pytest.raises(UpgradeError, match="longer than"):
                request_upgrade(control, timeout=5)
        finally:
            thread.join(TIMEOUT)


# ----------------------------------------------------------------------
# 8. Typed errors: the old generation dying while the new one starts.


@pytest.mark.parametrize("backend", ["asyncio", "uvloop", "trio"])
def test_the_old_generation_going_away_is_an_upgrade_failed(sockdir: Path, backend: str) -> None:
    with reports(sockdir) as heard_from:
        # The old generation upgrades at once to a new one that SIGKILLs it before ready().
        command = [sys.executable, str(HELPER), "old", *listening(sockdir), "--backend", backend]
        with subprocess.Popen(command) as old:
            report = json.loads(heard_from.recv(65536))
            assert old.wait(TIMEOUT) == -signal.SIGKILL
    assert wait_gone(report["pid"])
    assert report["event"] == "error" and report["type"] == "UpgradeFailed", report
    assert "the old generation" in report["message"] and "went away" in report["message"]
