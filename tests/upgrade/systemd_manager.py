"""A real systemd service manager for one test, in namespaces of its own.

The host's systemd (Debian package systemd, which also brings the tests'
``systemd-socket-activate``) runs as PID 1 of a new PID namespace, with a
private ``/run`` (the test's units and the manager's control socket) and
its own cgroup namespace rooted in a fresh cgroup, so that nothing it
creates lands in the host's hierarchy.  The network and the file system
are shared: a service listens where the test's clients reach it, and
writes its pidfile where the test reads it.  ``systemctl`` runs inside
through ``nsenter``; pids are those of the namespace throughout (what
systemd, the pidfile and the upgrader report).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = ["Manager", "cannot_start", "poll", "unavailable"]

SYSTEMD = Path("/lib/systemd/systemd")
CGROUP = Path("/sys/fs/cgroup")
TIMEOUT = 30.0
#: How often a wait looks at the manager's view of a unit: systemd has no
#: notification a test can wait on without D-Bus.
POLL = 0.02

T = TypeVar("T")

#: Runs as PID 1 of the new PID namespace: moves itself into the fresh
#: cgroups (one per hierarchy, below ours), enters a cgroup namespace rooted
#: there, mounts what systemd needs over the host's (privately: the mount
#: namespace is new; systemd mounts the controllers' hierarchies itself),
#: installs the units, and becomes systemd.
_INNER = r"""
set -e
layout=$1; units=$2; cgroups=$3; shift 3
for cgroup in $cgroups; do echo $$ > "$cgroup/cgroup.procs"; done
exec unshare --cgroup sh -c '
  set -e
  if [ "$1" = unified ]; then
    mount -t cgroup2 cgroup2 /sys/fs/cgroup
  else
    mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
    mkdir /sys/fs/cgroup/systemd /sys/fs/cgroup/unified
    mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
    mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified
  fi
  mount -t tmpfs -o mode=755 run /run
  mkdir -p /run/systemd/system
  cp "$2"/* /run/systemd/system/
  shift 2
  exec env container=fdchannel-test "$@"
' inner "$layout" "$units" "$@"
"""


def _fresh_cgroups(name: str) -> list[Path]:
    """A new cgroup named ``name`` below this process's own in every mounted hierarchy
    (not at a hierarchy's root: that would leave a limit such as memory's)."""
    mounts: list[tuple[str, set[str], str]] = []  # (fstype, options, mount point)
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, point, fstype, flags, *_ = line.split()
        if fstype in ("cgroup", "cgroup2"):
            mounts.append((fstype, set(flags.split(",")), point))
    made: list[Path] = []
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            want = set(controllers.split(",")) if controllers else set()
            for fstype, options, point in mounts:
                if (fstype == "cgroup2") == (not want) and want <= options:
                    fresh = Path(point + path.rstrip("/")) / name
                    fresh.mkdir()
                    made.append(fresh)
                    if "cpuset" in want:
                        # A new cpuset has no CPUs and no memory nodes: nothing can join it.
                        for knob in ("cpuset.cpus", "cpuset.mems"):
                            (fresh / knob).write_text((fresh.parent / knob).read_text())
                    break
    except BaseException:
        for cgroup in made:
            cgroup.rmdir()
        raise
    return made


@functools.cache
def cannot_start() -> str | None:
    """Why a manager does not start here (a sandbox without namespaces or cgroup
    mounts, say), tried once with an empty target; None if it does."""
    why = unavailable()
    if why is not None:
        return why
    target = "fdchannel-probe.target"
    with tempfile.TemporaryDirectory(prefix="fdc-", dir="/tmp") as directory:
        try:
            with Manager(
                Path(directory), {target: "[Unit]\nDefaultDependencies=no\n"}, target
            ) as m:
                m.wait_for(target, ActiveState="active")
        except (OSError, RuntimeError, TimeoutError, subprocess.SubprocessError) as exc:
            return f"a systemd manager does not start here: {exc}"
    return None


def poll(found: Callable[[], T | None], timeout: float = TIMEOUT) -> T | None:
    """``found()``'s first value that is not None, asked every POLL seconds; None
    once ``timeout`` has passed (for states no event announces)."""
    deadline = time.monotonic() + timeout
    while True:
        value = found()
        if value is not None or time.monotonic() >= deadline:
            return value
        time.sleep(POLL)


def unavailable() -> str | None:
    """Why a manager cannot run here, or None (what can be known without starting one)."""
    if os.geteuid() != 0:
        return "needs root (namespaces, cgroups)"
    if not SYSTEMD.exists():
        return f"{SYSTEMD} is not installed (Debian package systemd)"
    for program in ("unshare", "nsenter", "systemctl"):
        if shutil.which(program) is None:
            return f"{program} is not installed"
    if not (CGROUP / "cgroup.procs").exists() and not (CGROUP / "systemd").is_dir():
        return "neither a cgroup2 hierarchy nor systemd's named cgroup hierarchy is mounted"
    return None


class Manager:
    """systemd as PID 1 of its own namespaces, started with ``units`` (name -> text)
    installed and ``default`` (a target) as the unit it starts."""

    def __init__(self, directory: Path, units: dict[str, str], default: str) -> None:
        layout = "unified" if (CGROUP / "cgroup.procs").exists() else "hybrid"
        unit_dir = directory / "units"
        unit_dir.mkdir()
        for name, text in units.items():
            (unit_dir / name).write_text(text)
        self.log = (directory / "manager.log").open("wb")
        try:
            self.cgroups = _fresh_cgroups(f"fdchannel-test-{os.getpid()}-{time.monotonic_ns()}")
            try:
                self.process = self._start(layout, unit_dir, default)
            except BaseException:
                for cgroup in self.cgroups:
                    cgroup.rmdir()
                raise
        except BaseException:
            self.log.close()
            raise
        try:
            self.pid1 = self._first_child()
        except BaseException:
            self.close()
            raise

    def _start(self, layout: str, unit_dir: Path, default: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                "unshare",
                "--pid",
                "--fork",
                "--mount",
                "--mount-proc",
                "--propagation",
                "private",
                "sh",
                "-c",
                _INNER,
                "inner",
                layout,
                str(unit_dir),
                " ".join(map(str, self.cgroups)),
                str(SYSTEMD),
                f"--unit={default}",
                "--log-target=console",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def _first_child(self) -> int:
        """The host pid of the namespace's PID 1: unshare's only child."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")

        def found() -> int | None:
            if self.process.poll() is not None:
                raise RuntimeError(f"the namespace ended at once{self.tail()}")
            with contextlib.suppress(FileNotFoundError):
                pids = children.read_text().split()
                if pids:
                    return int(pids[0])
            return None

        pid1 = poll(found)
        if pid1 is None:
            raise TimeoutError(f"unshare started no PID 1 within {TIMEOUT} s")
        return pid1

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            text = Path(self.log.name).read_bytes().decode(errors="replace")
            return "".join(f"\n  | {line}" for line in text.splitlines()[-20:])
        return ""

    # ------------------------------------------------------------------
    # Asking it.

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``systemctl ARGS`` inside; raises with its output if it fails and ``check``."""
        done = subprocess.run(
            ["nsenter", "-t", str(self.pid1), "-m", "-p", "systemctl", "--no-pager", *args],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"systemctl {' '.join(args)}: exit {done.returncode}: "
                f"{done.stdout.strip()} {done.stderr.strip()}{self.tail()}"
            )
        return done

    def show(self, unit: str) -> dict[str, str]:
        """The unit's properties as systemd sees them now."""
        output = self.systemctl("show", unit, check=False).stdout
        return dict(line.partition("=")[::2] for line in output.splitlines() if "=" in line)

    def wait_for(
        self,
        unit: str,
        timeout: float = TIMEOUT,
        until: Callable[[dict[str, str]], bool] = lambda shown: True,
        **expected: str,
    ) -> dict[str, str]:
        """The unit's properties once each of ``expected`` holds, and ``until``."""
        last: dict[str, str] = {}

        def found() -> dict[str, str] | None:
            shown = self.show(unit)
            last.clear()
            last.update(shown)  # for the message, if it never comes
            ok = all(shown.get(key) == value for key, value in expected.items()) and until(shown)
            return shown if ok else None

        shown = poll(found, timeout)
        if shown is None:
            status = self.systemctl("status", unit, check=False).stdout
            wanted = {k: (v, last.get(k)) for k, v in expected.items()}
            raise TimeoutError(f"{unit}: (wanted, shown) {wanted}\n{status}{self.tail()}")
        return shown

    def processes(self) -> set[int]:
        """Every process in the namespace, by its pid there (1 is the manager)."""
        mine = os.readlink(f"/proc/{self.pid1}/ns/pid")
        found = set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry}/ns/pid") != mine:
                    continue
                for line in Path(f"/proc/{entry}/status").read_text().splitlines():
                    if line.startswith("NSpid:"):
                        found.add(int(line.split()[-1]))
        return found

    def settle(self, expected: set[int], timeout: float = TIMEOUT) -> set[int]:
        """The namespace's processes once they are ``expected``, or as they are
        when ``timeout`` has passed."""
        poll(lambda: self.processes() == expected or None, timeout)
        return self.processes()

    # ------------------------------------------------------------------
    # Ending it.

    def close(self) -> None:
        """Kill the namespace (PID 1 first, which takes every process in it with it),
        reap unshare, and remove the cgroups it made."""
        with contextlib.suppress(ProcessLookupError, AttributeError):
            os.kill(self.pid1, 9)
        try:
            self.process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        finally:
            self.log.close()
        for cgroup in self.cgroups:
            _remove_tree(cgroup)

    def __enter__(self) -> Manager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _remove_tree(top: Path) -> None:
    """rmdir a cgroup and those below it, deepest first, once their processes are gone."""
    if not top.is_dir():
        return

    def removed(directory: Path) -> bool | None:
        try:
            directory.rmdir()
        except FileNotFoundError:
            pass
        except OSError:  # EBUSY: a killed process is still leaving it
            return None
        return True

    below = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
    for directory in [*below, top]:
        if poll(functools.partial(removed, directory)) is None:
            directory.rmdir()  # still busy: raise its error
