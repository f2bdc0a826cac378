"""Debian 13 (trixie) roots with QEMU 10.0 or 11.1, for the cpr-transfer interop tests.

Debian 12 ships QEMU 7.2, which has no cpr-transfer.  QEMU runs from a root
entered with ``chroot``:

* version 10: ``debootstrap`` of plain trixie (QEMU 10.0);
* version 11: a copy of the version 10 root with ``trixie-backports`` added
  to its apt sources and ``qemu-system-x86`` installed from there (QEMU 11.1).

Run as a script (root only) it builds a root if it is missing, or removes it
(``qemu_cache.py`` keeps the roots ``make test`` uses, built with this)::

    python tests/interop/qemu_root.py --version 10 [DIR]   # DIR: .qemu10/root
    python tests/interop/qemu_root.py --version 11 [DIR]   # DIR: .qemu11/root
    python tests/interop/qemu_root.py --version 11 --remove [DIR]

A root is built in a temporary directory next to DIR and renamed to DIR only
once it is complete, so DIR exists only when it is; a build that was
interrupted leaves a ``DIR.partial-*`` directory that the next run removes.
``bind_mounts`` gives a running QEMU the host's /proc and /dev for as long
as a test needs them.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "FLAVOURS",
    "QEMU_IN_ROOT",
    "RECIPE",
    "Flavour",
    "bind_mounts",
    "ensure_root",
    "installed_qemu",
    "is_complete",
    "main",
    "mounts_under",
    "remove_root",
    "remove_tree",
    "root_lock",
]

#: The project's top directory: the script's default roots live under it (ignored by
#: git); `make` keeps its roots in qemu_cache.py's cache instead.
TOP = Path(__file__).resolve().parents[2]
SUITE = "trixie"
#: Debian's own mirror, the one the machine's apt sources name.
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("qemu-system-x86", "python3")
#: The program whose presence says the root has QEMU (a path inside the root).
QEMU_IN_ROOT = "usr/bin/qemu-system-x86_64"
#: dpkg's database inside a root: which QEMU package is installed.
DPKG_STATUS = "var/lib/dpkg/status"
#: What QEMU (and apt, while it installs) needs from the host: /proc (its own
#: fds, memfd links) and /dev (null, urandom, kvm).  Neither has submounts it needs.
BIND_MOUNTS = ("proc", "dev")
#: The build's own version: bump it when ``build`` changes what a root holds,
#: so that cached roots (``qemu_cache.py``) made the old way are rebuilt.
RECIPE = 1
#: Seconds an interrupted build gets to unmount and exit.
STOP_GRACE = 30


@dataclass(frozen=True)
class Flavour:
    """One kind of root: which QEMU it holds and how it is made."""

    #: QEMU's major version, as the command line names it.
    version: str
    #: Where the root lives unless told otherwise.
    default_root: Path
    #: Built from a copy of the version 10 root plus trixie-backports.
    backports: bool

    @property
    def suite(self) -> str:
        """The Debian suite its QEMU comes from."""
        return f"{SUITE}-backports" if self.backports else SUITE


FLAVOURS = {
    "10": Flavour("10", TOP / ".qemu10" / "root", backports=False),
    "11": Flavour("11", TOP / ".qemu11" / "root", backports=True),
}

#: The apt source a version 11 root adds (deb822, as trixie writes its own).
BACKPORTS_SOURCE = f"""\
Types: deb
URIs: {MIRROR}
Suites: {SUITE}-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def log(message: str) -> None:
    """One line of progress on stderr."""
    print(f"qemu-root: {message}", file=sys.stderr, flush=True)


def run(
    command: Sequence[str], *, quiet: bool = False, env: Mapping[str, str] | None = None
) -> None:
    """Run a command, printing it first; a failure raises CalledProcessError.

    The command gets its own process group: if we are interrupted, all of it
    (debootstrap, its wget, the dpkg in the target) gets SIGTERM, on which
    debootstrap's exit trap unmounts the /proc and /sys it mounted there.
    """
    log("$ " + " ".join(command))
    with subprocess.Popen(
        command,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL if quiet else None,
        start_new_session=True,
    ) as process:
        try:
            status = process.wait()
        except BaseException:
            stop_group(process)
            raise
    if status != 0:
        raise subprocess.CalledProcessError(status, list(command))


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process's group, give it time to clean up, then SIGKILL it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def installed_qemu(root: Path) -> str | None:
    """The version of ``qemu-system-x86`` dpkg installed in ``root`` (None: none)."""
    try:
        status = (root / DPKG_STATUS).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    for stanza in status.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " "
        )
        if fields.get("Package") == "qemu-system-x86" and "installed" in fields.get("Status", ""):
            return fields.get("Version")
    return None


def qemu_major(package_version: str) -> str:
    """``1:11.1.3+ds-1~bpo13+1`` -> ``11``: the epoch dropped, the first number kept."""
    return package_version.split(":", 1)[-1].split(".", 1)[0]


def is_complete(root: Path, version: str = "10") -> bool:
    """Whether ``root`` is a finished root with QEMU ``version`` (only those get their name)."""
    if not (root / QEMU_IN_ROOT).is_file():
        return False
    installed = installed_qemu(root)
    return installed is not None and qemu_major(installed) == version


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below ``path``, deepest first (so they unmount in order)."""
    top = os.path.realpath(path)
    found: list[Path] = []
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        for line in mountinfo:
            # Field 5 is the mount point, with space, tab, newline and
            # backslash written as octal escapes (proc(5)).
            point = line.split()[4]
            for char in " \t\n\\":
                point = point.replace(f"\\{ord(char):03o}", char)
            if point == top or point.startswith(top + "/"):
                found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def unmount(point: Path) -> None:
    """Unmount ``point``; if it is busy, detach it lazily (it goes once unused)."""
    done = subprocess.run(["umount", str(point)], check=False, capture_output=True, text=True)
    if done.returncode != 0:
        log(f"umount {point} failed ({done.stderr.strip()}); detaching it lazily")
        subprocess.run(["umount", "--lazy", str(point)], check=True)


def remove_tree(path: Path) -> None:
    """Delete a directory tree after unmounting what is mounted inside it.

    A killed build leaves /proc (and /dev) mounted in its target; deleting
    through those mounts would reach the host's files.
    """
    for point in mounts_under(path):
        unmount(point)
    if mounts_under(path):
        raise RuntimeError(f"{path} still has mounts inside; not deleting it")
    shutil.rmtree(path)


def ensure_debootstrap() -> None:
    """Install debootstrap from the host's apt sources if it is missing."""
    if shutil.which("debootstrap") is not None:
        return
    log("debootstrap is missing; installing it with apt-get")
    run(["apt-get", "update", "-qq"])
    run(
        ["apt-get", "install", "-y", "-qq", "debootstrap"],
        quiet=True,
        env={"DEBIAN_FRONTEND": "noninteractive"},
    )


def disk_usage(path: Path) -> int:
    """Bytes the files under ``path`` take (hard links counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            info = os.lstat(os.path.join(dirpath, name))
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_blocks * 512
    return total


@contextlib.contextmanager
def root_lock(root: Path, *, shared: bool = False, busy: str | None = None) -> Iterator[bool]:
    """Hold the lock next to ``root``; yields whether it was taken.

    Exclusive while a root is built, copied or removed; shared while tests
    use it.  With ``busy`` a lock held elsewhere is waited for, after
    logging ``busy``; without it the block gets False at once instead.
    """
    kind = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, kind | fcntl.LOCK_NB)
        except BlockingIOError:
            if busy is None:
                yield False
                return
            log(busy)
            fcntl.flock(lock, kind)
        yield True


@contextlib.contextmanager
def build_lock(root: Path) -> Iterator[None]:
    """Hold a lock next to ``root`` so that two builds never run at once."""
    with root_lock(root, busy="another build of this root is running; waiting for it"):
        yield


def drop_archives(root: Path) -> None:
    """Delete downloaded package archives: installed, they are not needed again."""
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()


def debootstrap(target: Path) -> None:
    """Plain trixie with QEMU 10.0 in ``target`` (an empty directory)."""
    ensure_debootstrap()
    run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            SUITE,
            str(target),
            MIRROR,
        ]
    )


def copy_root(source: Path, target: Path) -> None:
    """Copy the finished root ``source`` into the empty directory ``target``.

    Only a root with nothing mounted inside is copied, and only with
    ``cp -ax`` (one file system): a copy through a live /proc bind mount
    would try to copy the host's whole /proc and fill the disk.
    """
    if mounts_under(source):
        raise RuntimeError(
            f"{source} has mounts inside (is a test using it?); not copying it. "
            "Unmount them, or let the test finish, and run again."
        )
    run(["cp", "-ax", f"{source}/.", f"{target}/"])


def install_backports(target: Path) -> None:
    """Add trixie-backports to ``target``'s apt sources and install QEMU from it."""
    (target / "etc/apt/sources.list.d/trixie-backports.sources").write_text(BACKPORTS_SOURCE)
    # The root has the host's resolver from debootstrap; refresh it in case it moved.
    shutil.copyfile("/etc/resolv.conf", target / "etc/resolv.conf")
    env = {"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8"}
    with bind_mounts(target):
        run(["chroot", str(target), "apt-get", "update", "-qq"], env=env)
        run(
            [
                "chroot",
                str(target),
                "apt-get",
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "-t",
                f"{SUITE}-backports",
                "qemu-system-x86",
            ],
            quiet=True,
            env=env,
        )


def build(flavour: Flavour, partial: Path, base: Path | None) -> None:
    """Fill ``partial`` with a root of ``flavour``; ``base`` is the version 10 root to copy."""
    if not flavour.backports:
        debootstrap(partial)
    else:
        source = base or FLAVOURS["10"].default_root
        ensure_root(source, "10")
        # Tests hold a shared lock on the roots they mount /proc and /dev in.
        with root_lock(source, busy=f"{source} is in use by a test run; waiting to copy it"):
            copy_root(source, partial)
        install_backports(partial)
    if not is_complete(partial, flavour.version):
        found = installed_qemu(partial)
        raise RuntimeError(
            f"the build finished but QEMU {flavour.version} is not installed (found: {found})"
        )
    drop_archives(partial)


def ensure_root(root: Path, version: str = "10", *, base: Path | None = None) -> bool:
    """Build the root at ``root`` with QEMU ``version`` unless it is there; True if built now."""
    flavour = FLAVOURS[version]
    if is_complete(root, version):
        log(f"{root} is already complete (qemu-system-x86 {installed_qemu(root)}); nothing to do")
        return False
    if os.geteuid() != 0:
        raise PermissionError("building a root needs root (debootstrap, chroot, mount --bind)")
    root.parent.mkdir(parents=True, exist_ok=True)
    with build_lock(root):
        if is_complete(root, version):  # built by the run we waited for
            log(f"{root} is complete now; nothing to do")
            return False
        if root.exists():
            # Never renamed into place by this script: not ours to trust.
            log(f"{root} exists but has no QEMU {version}; removing it")
            remove_tree(root)
        for stale in root.parent.glob(f"{root.name}.partial-*"):
            log(f"removing {stale}, left by an interrupted build")
            remove_tree(stale)
        partial = Path(tempfile.mkdtemp(prefix=f"{root.name}.partial-", dir=root.parent))
        started = time.monotonic()
        try:
            build(flavour, partial, base)
            # mkdtemp made it 0700; a root's / is 0755 like any other.
            partial.chmod(0o755)
            os.rename(partial, root)
        except BaseException:
            log(f"build failed; removing {partial}")
            remove_tree(partial)
            raise
    elapsed = time.monotonic() - started
    log(
        f"built {root} with qemu-system-x86 {installed_qemu(root)} in {elapsed:.0f} s; "
        f"it takes {disk_usage(root) / 2**20:.0f} MiB"
    )
    return True


def remove_root(root: Path) -> None:
    """Delete the root and any interrupted build of it, mounts unmounted first.

    A plain ``rm -rf`` is dangerous here: a test killed while the host's /dev
    was bound into the root would have it delete the host's device nodes.
    """
    for path in [root, *root.parent.glob(f"{root.name}.partial-*")]:
        if path.exists():
            log(f"removing {path}")
            remove_tree(path)


@contextlib.contextmanager
def bind_mounts(root: Path) -> Iterator[None]:
    """Bind-mount the host's /proc and /dev into ``root``; unmount on the way out.

    Whatever runs inside must have exited before the block ends, or the
    unmount finds the mounts busy (then they are detached lazily).
    """
    done: list[Path] = []
    try:
        for name in BIND_MOUNTS:
            target = root / name
            subprocess.run(
                ["mount", "--bind", f"/{name}", str(target)],
                check=True,
                capture_output=True,
                text=True,
            )
            done.append(target)
        yield
    finally:
        for target in reversed(done):
            unmount(target)


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def parse_args(argv: Sequence[str] | None, version: str | None) -> argparse.Namespace:
    """The command line; ``version`` fixed means no ``--version`` option."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    if version is None:
        parser.add_argument(
            "--version", choices=sorted(FLAVOURS), default="10", help="QEMU's major version"
        )
    parser.add_argument("root", nargs="?", type=Path, help="default: .qemuVERSION/root")
    parser.add_argument(
        "--base",
        type=Path,
        help="version 11 only: the version 10 root to copy (built if missing)",
    )
    parser.add_argument(
        "--remove",
        action="store_true",
        help="delete the root (and interrupted builds), unmounting what a killed test left",
    )
    args = parser.parse_args(argv)
    if version is not None:
        args.version = version
    return args


def main(argv: Sequence[str] | None = None, *, version: str | None = None) -> int:
    """Command line: build the root if it is missing (or remove it)."""
    args = parse_args(argv, version)
    # A build stopped with SIGTERM (a timeout, a killed make) cleans up like
    # one stopped with Ctrl-C, instead of leaving debootstrap or apt running alone.
    signal.signal(signal.SIGTERM, _terminated)
    flavour = FLAVOURS[args.version]
    root: Path = (args.root or flavour.default_root).absolute()
    base: Path | None = args.base.absolute() if args.base else None
    try:
        if args.remove:
            remove_root(root)
        else:
            ensure_root(root, flavour.version, base=base)
    except PermissionError as exc:
        log(str(exc))
        return 1
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        log(f"failed: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted; nothing half-built is left under the root's name")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
