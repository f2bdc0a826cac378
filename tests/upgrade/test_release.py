"""A new release: an upgrade that starts another command line, directory or
environment than the running one, and a ``current`` symlink resolved anew at
each upgrade (the /srv/app/releases/N layout, in a temporary directory).

Each release directory holds a server (tests/upgrade/slow_peer.py, copied) and
a virtual environment of its own (its ``python`` a symlink, as venv makes it),
so that a generation can tell which release it runs from: its directory, its
file, its ``sys.prefix``."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import site
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from fdchannel.errors import UpgradeError, UpgradeFailed
from fdchannel.upgrade import Upgrader, pidfile as pidfiles, request_upgrade
from fdchannel.upgrade.release import Release, logical_cwd, release_from

from .harness import TIMEOUT, wait_gone
from .slow import SLOW, fdchannel_cli

# ----------------------------------------------------------------------
# The layout.


def release(root: Path, name: str) -> Path:
    """``root/releases/NAME``: the server, a venv of its own, and a program."""
    directory = root / "releases" / name
    venv = directory / "venv"
    (venv / "bin").mkdir(parents=True)
    # A virtual environment as venv makes one: python a symlink, pyvenv.cfg beside
    # bin/, its site-packages ours (where fdchannel is installed).
    (venv / "bin" / "python").symlink_to(os.path.realpath(sys.executable))
    (venv / "pyvenv.cfg").write_text((Path(sys.prefix) / "pyvenv.cfg").read_text())
    packages = venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    packages.mkdir(parents=True)
    (packages / "site-packages").symlink_to(site.getsitepackages()[0])
    shutil.copy(SLOW, directory / "server.py")
    return directory


def flip(current: Path, to: Path) -> None:
    """Point ``current`` at ``to`` in one rename, as a deployment does."""
    new = current.with_name(".current.new")
    new.symlink_to(to.relative_to(current.parent))
    new.rename(current)


@pytest.fixture
def releases(sockdir: Path) -> tuple[Path, Path, Path]:
    """``current`` (naming release 1), release 1, release 2."""
    one, two = release(sockdir, "1"), release(sockdir, "2")
    current = sockdir / "current"
    flip(current, one)
    return current, one, two


# ----------------------------------------------------------------------
# Resolving a release, in this process.


def test_a_release_is_resolved_through_current_at_each_upgrade(
    releases: tuple[Path, Path, Path],
) -> None:
    current, one, two = releases
    path = f"{current}/venv/bin:/usr/bin:/bin"
    asked = {
        "absolute": Release((f"{current}/venv/bin/python", "server.py"), str(current)),
        "bare": Release(("python", "server.py"), str(current), {"PATH": path}),
        "relative": Release(("venv/bin/python", "server.py"), str(current)),
    }
    for target in (one, two, one):
        flip(current, target)
        for how, wanted in asked.items():
            launch = wanted.resolve({"HOME": "/root", "PATH": "/usr/bin"})
            # The directories resolved, the venv's python left a symlink: it finds its venv.
            assert launch.argv == (f"{target}/venv/bin/python", "server.py"), how
            assert launch.cwd == str(target) and launch.release is wanted
            assert launch.env["PWD"] == str(current)  # as the shell names it


def test_a_release_changes_the_environment(releases: tuple[Path, Path, Path]) -> None:
    current, _, _ = releases
    wanted = Release(("/bin/true",), str(current), {"RELEASE": "2", "HOME": None})
    launch = wanted.resolve({"HOME": "/root", "LANG": "C"})
    assert launch.env == {"RELEASE": "2", "LANG": "C", "PWD": str(current)}


def test_a_removed_directory_is_left_as_it_is(sockdir: Path) -> None:
    gone = sockdir / "gone"
    gone.mkdir()
    here = os.getcwd()
    os.chdir(gone)
    try:
        gone.rmdir()
        assert logical_cwd() is None
        Upgrader()  # no directory to name: a new generation starts where this one is
        launch = Release(("/bin/true",), None).resolve({"PWD": "/elsewhere"})
        assert launch.cwd is None and launch.env == {"PWD": "/elsewhere"}
    finally:
        os.chdir(here)


@pytest.mark.parametrize(
    ("command", "cwd", "match"),
    [
        (("no-such-program-here",), ".", "not on PATH"),
        (("/bin/true",), "missing", "no such directory"),
    ],
)
def test_a_release_that_is_not_there_fails(
    sockdir: Path, command: tuple[str, ...], cwd: str, match: str
) -> None:
    with pytest.raises(UpgradeFailed, match=match):
        Release(command, str(sockdir / cwd)).resolve({"PATH": "/usr/bin"})


@pytest.mark.parametrize(
    ("command", "cwd", "env", "match"),
    [
        ("python app.py", None, None, "a list of strings"),
        ([], None, None, "empty"),
        ([""], None, None, "empty"),
        (["python", 3], None, None, "a list of strings"),
        (["py\0thon"], None, None, "NUL"),
        (None, "", None, "a path"),
        (None, "/srv/\0", None, "NUL"),
        (None, None, {"A=B": "1"}, "name"),
        (None, None, {"": "1"}, "name"),
        (None, None, {"A": 1}, "a string"),
        (None, None, {"A": "\0"}, "NUL"),
    ],
)
def test_a_malformed_release_is_an_upgrade_error(
    command: Any, cwd: Any, env: Any, match: str
) -> None:
    with pytest.raises(UpgradeError, match=match):
        release_from(command, cwd, env)
    with pytest.raises(UpgradeError, match=match):
        Upgrader(command=command, cwd=cwd, env=env)


# ----------------------------------------------------------------------
# Real generations.


class Deployed:
    """Generation 0 of the server, started as a service manager would: from the
    release ``current`` names, through the symlink, in it (``$PWD`` naming it)."""

    def __init__(self, sockdir: Path, current: Path, *args: str) -> None:
        self.sockdir = sockdir
        self.pidfile, self.control = sockdir / "app.pid", sockdir / "app.ctl"
        self.address = sockdir / "app.sock"
        self.options = ["--listen", f"unix:{self.address}", "--pidfile", str(self.pidfile)]
        self.options += ["--control", str(self.control), *args]
        command = [f"{current}/venv/bin/python", "server.py", *self.options]
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.process = subprocess.Popen(
            command,
            cwd=current,
            env={**os.environ, "PWD": str(current)},
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with contextlib.suppress(ValueError):
                self.events.put(json.loads(line))

    def ready(self) -> dict[str, Any]:
        """The next generation's ready event."""
        while True:
            event = self.events.get(timeout=TIMEOUT)
            if event["event"] == "ready":
                return event

    def ask(self) -> dict[str, Any]:
        """Where the generation serving now runs from."""
        return ask(self.address)

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            serving = pidfiles.read_pid(self.pidfile)
            os.kill(serving, signal.SIGTERM)
            assert wait_gone(serving)
        self.process.kill()
        self.process.wait(TIMEOUT)
        self.reader.join(TIMEOUT)
        assert self.process.stdout is not None
        self.process.stdout.close()


@contextlib.contextmanager
def deployed(sockdir: Path, current: Path, *args: str) -> Iterator[Deployed]:
    server = Deployed(sockdir, current, *args)
    try:
        yield server
    finally:
        server.close()


def runs_from(whereabouts: dict[str, Any], directory: Path) -> None:
    """The generation runs the release in ``directory``: its code, its venv, in it."""
    assert whereabouts["file"] == f"{directory}/server.py"
    assert whereabouts["cwd"] == str(directory)
    assert whereabouts["prefix"] == f"{directory}/venv"  # not through current: its own
    assert whereabouts["executable"] == f"{directory}/venv/bin/python"


def test_each_upgrade_starts_the_release_current_names(
    sockdir: Path, releases: tuple[Path, Path, Path]
) -> None:
    current, one, two = releases
    with deployed(sockdir, current) as server:
        server.ready()
        first = server.ask()
        assert first["prefix"] == f"{current}/venv"  # started through the symlink
        assert first["cwd"] == str(one)
        for target in (two, one, two):
            flip(current, target)
            result = request_upgrade(server.control, timeout=TIMEOUT)
            assert server.ready()["pid"] == result["pid"]
            assert result["cwd"] == str(target)
            assert result["command"][0] == f"{target}/venv/bin/python"
            now = server.ask()
            assert now["pid"] == result["pid"]
            runs_from(now, target)
            assert now["pwd"] == str(current)


def test_the_command_line_asks_for_another_release(
    sockdir: Path, releases: tuple[Path, Path, Path]
) -> None:
    current, one, two = releases
    with deployed(sockdir, current) as server:
        server.ready()
        other = [f"{two}/venv/bin/python", "server.py", *server.options]
        done = fdchannel_cli(
            "upgrade",
            str(server.control),
            *("--cwd", str(two), "--env", "RELEASE=two", "--unset-env", "HOME"),
            *("--command", *other),
        )
        assert done.returncode == 0, done
        now = server.ask()
        assert done.stdout.startswith(f"upgraded: pid {now['pid']} serves now")
        runs_from(now, two)
        assert now["release"] == "two" and now["home"] is None
        assert now["argv"][1:] == other[1:] and now["pwd"] == str(two)
        # A later upgrade starts the same release again (current still names release 1).
        request_upgrade(server.control, timeout=TIMEOUT)
        server.ready()
        again = server.ask()
        runs_from(again, two)
        assert again["release"] == "two"
        # A signal carries no command line.
        refused = fdchannel_cli("upgrade", str(server.pidfile), "--command", "/bin/true")
        assert refused.returncode == 1
        assert "control socket" in refused.stderr and "a signal carries none" in refused.stderr
        assert server.ask()["pid"] == again["pid"]
    assert one != two


@pytest.mark.anyio
async def test_the_upgrader_starts_the_release_it_is_given(
    sockdir: Path, releases: tuple[Path, Path, Path]
) -> None:
    current, _, two = releases
    address = f"unix:{sockdir}/app.sock"
    command = ["venv/bin/python", "server.py", "--listen", address]
    upgrader = Upgrader(
        trigger=None, command=command, cwd=current, env={"RELEASE": "given", "HOME": None}
    )
    flip(current, two)
    async with upgrader as up:
        listener = await up.listen("main", address)
        with await up.ready():
            pass
        with anyio.fail_after(TIMEOUT):
            result = await up.upgrade()
        await listener.aclose()
    try:
        now = await anyio.to_thread.run_sync(ask, sockdir / "app.sock")
        assert now["pid"] == result.pid and result.cwd == str(two)
        runs_from(now, two)
        assert now["release"] == "given" and now["home"] is None
        assert now["pwd"] == str(current)
    finally:
        os.kill(result.pid, signal.SIGTERM)  # our child, not reaped yet: the pid is its own
        await anyio.to_thread.run_sync(os.waitpid, result.pid, 0)


def ask(path: Path) -> dict[str, Any]:
    """Where the generation serving on ``path`` runs from."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(str(path))
        sock.sendall(b"?\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    answer: dict[str, Any] = json.loads(data)
    return answer
