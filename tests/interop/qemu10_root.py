"""A Debian 13 (trixie) root with QEMU 10, for the cpr-transfer interop test.

Debian 12 ships QEMU 7.2, which has no cpr-transfer; trixie's QEMU 10 runs
from a root made with ``debootstrap`` and entered with ``chroot``.  Run as a
script (root only) it builds the root if it is missing, or removes it::

    python tests/interop/qemu10_root.py [DIR]            # DIR defaults to .qemu10/root
    python tests/interop/qemu10_root.py --remove [DIR]

The root is built in a temporary directory next to DIR and renamed to DIR
only once debootstrap succeeded, so DIR exists only when it is complete; a
build that was interrupted leaves a ``DIR.partial-*`` directory that the
next run removes.  ``bind_mounts`` gives a running QEMU the host's /proc and
/dev for as long as a test needs them.
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
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = [
    "DEFAULT_ROOT",
    "QEMU_IN_ROOT",
    "bind_mounts",
    "ensure_root",
    "is_complete",
    "main",
    "remove_root",
]

#: Where ``make interop-qemu10`` keeps the root (ignored by git).
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / ".qemu10" / "root"
SUITE = "trixie"
#: Debian's own mirror, the one its apt sources name.
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("qemu-system-x86", "python3")
#: The program whose presence says the root has QEMU (a path inside the root).
QEMU_IN_ROOT = "usr/bin/qemu-system-x86_64"
#: What QEMU needs from the host while it runs: /proc (its own fds, memfd
#: links) and /dev (null, urandom, kvm).  Neither has submounts it needs.
BIND_MOUNTS = ("proc", "dev")
#: Seconds an interrupted debootstrap gets to unmount and exit.
STOP_GRACE = 30


def log(message: str) -> None:
    """One line of progress on stderr."""
    print(f"qemu10-root: {message}", file=sys.stderr, flush=True)


def run(command: Sequence[str], *, quiet: bool = False, **env: str) -> None:
    """Run a command, printing it first; a failure raises CalledProcessError.

    The command gets its own process group: if we are interrupted, all of it
    (debootstrap, its wget, the dpkg in the target) gets SIGTERM, on which
    debootstrap's exit trap unmounts the /proc and /sys it mounted there.
    """
    log("$ " + " ".join(command))
    with subprocess.Popen(
        command,
        env={**os.environ, **env},
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


def is_complete(root: Path) -> bool:
    """Whether ``root`` is a finished root (only finished ones get their name)."""
    return (root / QEMU_IN_ROOT).is_file()


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

    A killed debootstrap leaves /proc and /sys mounted in its target;
    deleting through those mounts would reach the host's files.
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
        DEBIAN_FRONTEND="noninteractive",
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
def build_lock(root: Path) -> Iterator[None]:
    """Hold a lock next to ``root`` so that two builds never run at once."""
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("another build of this root is running; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure_root(root: Path) -> bool:
    """Build the root at ``root`` unless it is there; True if it was built now."""
    if is_complete(root):
        log(f"{root} is already complete; nothing to do")
        return False
    if os.geteuid() != 0:
        raise PermissionError("building a root with debootstrap needs root (sudo)")
    root.parent.mkdir(parents=True, exist_ok=True)
    with build_lock(root):
        if is_complete(root):  # built by the run we waited for
            log(f"{root} is complete now; nothing to do")
            return False
        if root.exists():
            # Never renamed into place by this script: not ours to trust.
            log(f"{root} exists but has no {QEMU_IN_ROOT}; removing it")
            remove_tree(root)
        for stale in root.parent.glob(f"{root.name}.partial-*"):
            log(f"removing {stale}, left by an interrupted build")
            remove_tree(stale)
        ensure_debootstrap()
        partial = Path(tempfile.mkdtemp(prefix=f"{root.name}.partial-", dir=root.parent))
        started = time.monotonic()
        try:
            run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(PACKAGES)}",
                    SUITE,
                    str(partial),
                    MIRROR,
                ]
            )
            if not is_complete(partial):
                raise RuntimeError(f"debootstrap finished but {QEMU_IN_ROOT} is missing")
            # The packages' files are installed; their archives (about 60 MiB)
            # are not needed again.
            for deb in (partial / "var/cache/apt/archives").glob("*.deb"):
                deb.unlink()
            # mkdtemp made it 0700; a root's / is 0755 like any other.
            partial.chmod(0o755)
            os.rename(partial, root)
        except BaseException:
            log(f"build failed; removing {partial}")
            remove_tree(partial)
            raise
    elapsed = time.monotonic() - started
    log(f"built {root} in {elapsed:.0f} s; it takes {disk_usage(root) / 2**20:.0f} MiB")
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


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: build the root if it is missing (or remove it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "root", nargs="?", type=Path, default=DEFAULT_ROOT, help=f"default: {DEFAULT_ROOT}"
    )
    parser.add_argument(
        "--remove",
        action="store_true",
        help="delete the root (and interrupted builds), unmounting what a killed test left",
    )
    args = parser.parse_args(argv)
    # A build stopped with SIGTERM (a timeout, a killed make) cleans up like
    # one stopped with Ctrl-C, instead of leaving debootstrap running alone.
    signal.signal(signal.SIGTERM, _terminated)
    root: Path = args.root.absolute()
    try:
        if args.remove:
            remove_root(root)
        else:
            ensure_root(root)
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
