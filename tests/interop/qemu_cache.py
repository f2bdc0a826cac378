"""The QEMU roots of the version matrix, cached outside the clone and keyed by version.

``make test`` run as root runs the QEMU matrix (``test_qemu_versions.py``,
``test_qemu_cpr_exec.py``) in its one pytest, on the Debian 13 roots that
``qemu_root.py`` builds.  They are kept in a cache, ``/var/cache/fdchannel``
unless ``--cache`` or ``FDCHANNEL_QEMU_CACHE`` says otherwise, one directory
per root, named like Debian's package files::

    qemu10_10.0.13+ds-0+deb13u1_9b1c4e/root    QEMU from trixie
    qemu11_11.1.3+ds-2~bpo13+1_9b1c4e/root     QEMU from trixie-backports

that is the flavour, the version of ``qemu-system-x86`` that the flavour's
suite offers (epoch dropped) and the recipe: a hash of ``RECIPE``, the suite
and the package list.  A root whose name is wanted and complete is reused;
otherwise it is built (and outdated ones of its flavour are removed once
nothing uses them).

Why that key.  The version the archive offers is what decides whether a
root is outdated, and it is cheap to know: each suite's ``InRelease``
(54 KB for trixie-backports, 140 KB for trixie) names the hash of its
package index, and the version in an index of a given hash never changes,
so an index is downloaded (by hash) only when it is new, about once a
point release for trixie, and the answer is kept in ``archive.json``.  A
hash of the whole index or the release date would rebuild on every other
package's update; the recipe alone would never see a new QEMU.  Offline
(the archive unreachable within ``ARCHIVE_TIMEOUT``) the newest complete
root of the recipe is reused, with a warning.

Run as ``python -m tests.interop.qemu_cache`` from the top directory::

    [--versions 10,11] run [--matrix auto|skip|require] -- COMMAND...
        root: build or reuse the roots, run COMMAND with FDCHANNEL_QEMU10_ROOT
        and FDCHANNEL_QEMU11_ROOT naming them; otherwise say loudly which rows
        are skipped and why, and run COMMAND without them
    ensure      build or reuse the roots; print the variables (for eval)
    list        the cached roots
    remove      delete the cached roots nobody uses (unmounting first)

While COMMAND runs the roots are held with a shared lock: an outdated root
is removed, and the version 10 root copied for a version 11 one, only when
no run holds it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import lzma
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from .qemu_root import (
    DPKG_STATUS,
    FLAVOURS,
    MIRROR,
    PACKAGES,
    RECIPE,
    SUITE,
    disk_usage,
    ensure_root,
    installed_qemu,
    is_complete,
    mounts_under,
    qemu_major,
    remove_tree,
    root_lock,
)

__all__ = [
    "CACHE_VARIABLE",
    "DEFAULT_CACHE",
    "ROOT_VARIABLES",
    "SKIPPED_VARIABLE",
    "cached_roots",
    "ensure",
    "main",
    "package_version",
    "recipe",
    "root_for",
    "run",
]

CACHE_VARIABLE = "FDCHANNEL_QEMU_CACHE"
DEFAULT_CACHE = Path("/var/cache/fdchannel")
#: What the tests read (test_qemu_versions.py, test_qemu_cpr_exec.py).
ROOT_VARIABLES = {"10": "FDCHANNEL_QEMU10_ROOT", "11": "FDCHANNEL_QEMU11_ROOT"}
#: Why the matrix was not run; the matrix plugin prints it in pytest's summary.
SKIPPED_VARIABLE = "FDCHANNEL_QEMU_SKIPPED"
PACKAGE = "qemu-system-x86"
#: Seconds each request to the archive may take before we go on offline.
ARCHIVE_TIMEOUT = 10
#: The answers from the archive: index hash -> version, per suite.
MEMO = "archive.json"
#: The longest root path: a test's socket is ROOT/tmp/fdc-XXXXXXXX/src-main.sock
#: (31 bytes more) and sun_path holds 107 bytes and a NUL.
MAX_ROOT_LENGTH = 107 - len("/tmp/fdc-XXXXXXXX/src-main.sock")
#: The end of the skip notice.
REUSE_HINT = "as root the roots are built once (about 1.5 minutes, 85 MB) and cached in {cache}"


def log(message: str) -> None:
    """One line of progress on stderr."""
    print(f"qemu-cache: {message}", file=sys.stderr, flush=True)


def recipe() -> str:
    """Six hex digits naming how roots are built: ``RECIPE``, the suite, the packages."""
    text = repr((RECIPE, SUITE, PACKAGES))
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def root_for(cache: Path, flavour: str, version: str) -> Path:
    """Where the root of ``flavour`` with ``qemu-system-x86`` ``version`` lives."""
    upstream = version.split(":", 1)[-1]  # the epoch: ':' is awkward in paths
    return cache / f"qemu{flavour}_{upstream}_{recipe()}" / "root"


def cached_roots(cache: Path, flavour: str) -> list[Path]:
    """The complete roots of ``flavour`` and this recipe, newest install first."""
    found = [
        key / "root"
        for key in cache.glob(f"qemu{flavour}_*_{recipe()}")
        if is_complete(key / "root", flavour)
    ]
    return sorted(found, key=lambda root: (root / DPKG_STATUS).stat().st_mtime, reverse=True)


# --------------------------------------------------------------------------
# What the archive offers.


def architecture() -> str:
    """Debian's name for this machine's architecture (the roots are built for it)."""
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        done = subprocess.run(
            ["dpkg", "--print-architecture"], check=True, capture_output=True, text=True
        )
        return done.stdout.strip()
    return "amd64"


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=ARCHIVE_TIMEOUT) as response:
        data: bytes = response.read()
        return data


def index_hash(release: str, index: str) -> str:
    """The SHA256 an ``InRelease`` gives for ``index`` (main/binary-amd64/Packages.xz)."""
    in_sha256 = False
    for line in release.splitlines():
        if not line.startswith(" "):
            in_sha256 = line == "SHA256:"
            continue
        fields = line.split()
        if in_sha256 and len(fields) == 3 and fields[2] == index:
            return fields[0]
    raise ValueError(f"InRelease names no {index}")


def package_version(index: bytes, package: str) -> str | None:
    """The version of ``package`` in a Packages index (None: not there)."""
    start = 0
    needle = f"Package: {package}\n".encode()
    while (start := index.find(needle, start)) != -1:
        if start == 0 or index[start - 1 : start] == b"\n":
            end = index.find(b"\n\n", start)
            for line in index[start : end if end != -1 else len(index)].split(b"\n"):
                if line.startswith(b"Version: "):
                    return line.removeprefix(b"Version: ").decode()
        start += len(needle)
    return None


def offered(suite: str, memo: dict[str, dict[str, str | None]]) -> str | None:
    """The ``qemu-system-x86`` version ``suite`` offers now; ``memo`` remembers indexes."""
    arch = architecture()
    index = f"main/binary-{arch}/Packages.xz"
    release = fetch(f"{MIRROR}/dists/{suite}/InRelease").decode()
    digest = index_hash(release, index)
    known = memo.get(f"{suite}/{arch}")
    if known is not None and known.get("sha256") == digest:
        return known.get(PACKAGE)
    log(f"{suite} has a new package index; reading it for {PACKAGE}'s version")
    data = fetch(f"{MIRROR}/dists/{suite}/main/binary-{arch}/by-hash/SHA256/{digest}")
    if hashlib.sha256(data).hexdigest() != digest:
        raise ValueError(f"{suite}'s {index} does not match its InRelease")
    version = package_version(lzma.decompress(data), PACKAGE)
    memo[f"{suite}/{arch}"] = {"sha256": digest, PACKAGE: version}
    return version


def archive_offers(cache: Path, suites: set[str]) -> dict[str, str | None]:
    """Each suite's ``qemu-system-x86`` version; a suite that could not be asked is left out."""
    memo_path = cache / MEMO
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    offers: dict[str, str | None] = {}
    for suite in sorted(suites):
        try:
            offers[suite] = offered(suite, memo)
        except (OSError, ValueError, lzma.LZMAError, http.client.HTTPException) as exc:
            log(f"could not ask {MIRROR} what {suite} offers ({exc}); going on offline")
    with tempfile.NamedTemporaryFile("w", dir=cache, prefix=f".{MEMO}.", delete=False) as new:
        json.dump(memo, new, indent=1, sort_keys=True)
    os.chmod(new.name, 0o644)  # readable like the roots
    os.replace(new.name, memo_path)  # whole, also with another run writing it
    return offers


# --------------------------------------------------------------------------
# Building, reusing, pruning.


def ensure_flavour(
    cache: Path, flavour: str, offers: Mapping[str, str | None], base: Path | None
) -> tuple[Path, bool]:
    """The root of ``flavour`` to use, built if needed; and whether it is the current one."""
    suite = FLAVOURS[flavour].suite
    wanted = offers.get(suite)
    if wanted is not None and qemu_major(wanted) == flavour:
        root = root_for(cache, flavour, wanted)
        if is_complete(root, flavour):
            log(f"reusing {root}: {PACKAGE} {wanted}, what {suite} offers")
            return root, True
        if len(str(root)) > MAX_ROOT_LENGTH:
            raise RuntimeError(
                f"{root} is too long for the tests' socket paths (at most "
                f"{MAX_ROOT_LENGTH} characters); choose a shorter {CACHE_VARIABLE}"
            )
        older = cached_roots(cache, flavour)
        log(
            f"building {root}: {suite} offers {PACKAGE} {wanted}"
            + (f" (cached: {installed_qemu(older[0])})" if older else " (none cached)")
        )
        ensure_root(root, flavour, base=base)
        installed = installed_qemu(root)
        if installed != wanted:  # the archive changed while we built
            log(f"warning: {root} has {PACKAGE} {installed}, not {wanted}")
        return root, True
    older = cached_roots(cache, flavour)
    if wanted is None and suite in offers:
        why = f"{suite} offers no {PACKAGE}"
    elif wanted is None:
        why = f"what {suite} offers is unknown"
    else:
        why = f"{suite} offers {PACKAGE} {wanted}, which is not QEMU {flavour}"
    if not older:
        raise RuntimeError(f"no QEMU {flavour} root is cached in {cache} and {why}")
    log(
        f"WARNING: {why}; reusing {older[0]} ({PACKAGE} {installed_qemu(older[0])}), "
        "which may be outdated"
    )
    return older[0], False


def prune(cache: Path, flavour: str, current: Path) -> None:
    """Remove the other roots of ``flavour``, and interrupted builds, that nobody uses."""
    for key in sorted(cache.glob(f"qemu{flavour}_*")):
        if not key.is_dir():
            continue
        stale = [key] if key != current.parent else list(key.glob("root.partial-*"))
        if not stale:
            continue
        with root_lock(key / "root") as free:
            if not free or mounts_under(key):
                log(f"keeping {key}: another run holds it")
                continue
            for path in stale:
                log(f"removing {path}: outdated or left by an interrupted build")
                remove_tree(path)


def ensure(cache: Path, versions: Sequence[str]) -> dict[str, Path]:
    """Build or reuse the roots of ``versions`` (11 needs 10: it is copied from it)."""
    if os.geteuid() != 0:
        raise PermissionError("building a root needs root (debootstrap, chroot, mount --bind)")
    wanted = sorted({"10", *versions}, key=int)
    cache.mkdir(mode=0o755, parents=True, exist_ok=True)
    offers = archive_offers(cache, {FLAVOURS[v].suite for v in wanted})
    roots: dict[str, Path] = {}
    for flavour in wanted:
        roots[flavour], current = ensure_flavour(cache, flavour, offers, roots.get("10"))
        if current:
            prune(cache, flavour, roots[flavour])
    return {v: roots[v] for v in versions}


# --------------------------------------------------------------------------
# Running the tests.


def skip_reason(matrix: str) -> str | None:
    """Why the matrix cannot run here (None: it can)."""
    if matrix == "skip":
        return "FDCHANNEL_QEMU_MATRIX=skip"
    if os.geteuid() != 0:
        return (
            f"not root (uid {os.geteuid()}): the roots are built with debootstrap and "
            "QEMU runs in them with chroot and bind mounts, which need root; "
            "`sudo make test` runs them"
        )
    return None


def announce_skip(reason: str, cache: Path) -> None:
    """The block on stderr that says which rows will not run, and why."""
    from .matrix import COLUMNS, ROWS  # matrix imports this module

    rule = "=" * 78
    lines = [
        rule,
        "QEMU VERSION MATRIX SKIPPED: no real QEMU 10.0 or 11.1 runs in this test run",
        f"why: {reason}",
        f"rows not run, on {', '.join(COLUMNS)}:",
        *(f"  - {row}" for row in ROWS),
        REUSE_HINT.format(cache=cache),
        rule,
    ]
    print("\n".join(lines), file=sys.stderr, flush=True)


def call(command: Sequence[str], env: Mapping[str, str]) -> int:
    """Run ``command`` to its end; Ctrl-C reaches it (our group), SIGTERM is passed on."""
    process = subprocess.Popen(command, env=env)
    interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the child gets it and decides
    terminate = signal.signal(signal.SIGTERM, lambda _signum, _frame: process.terminate())
    try:
        status = process.wait()
    finally:
        signal.signal(signal.SIGINT, interrupt)
        signal.signal(signal.SIGTERM, terminate)
    return 128 - status if status < 0 else status


def run(cache: Path, versions: Sequence[str], matrix: str, command: Sequence[str]) -> int:
    """Run ``command`` with the roots named (root), or say loudly why not."""
    env = {k: v for k, v in os.environ.items() if k not in ROOT_VARIABLES.values()}
    reason = skip_reason(matrix)
    if reason is not None:
        if matrix == "require":
            log(f"the QEMU matrix must run here, but: {reason}")
            return 1
        announce_skip(reason, cache)
        return call(command, {**env, SKIPPED_VARIABLE: reason})
    try:
        roots = ensure(cache, versions)
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        log(f"the QEMU roots are not ready: {exc}")
        log("FDCHANNEL_QEMU_MATRIX=skip runs the tests without the QEMU matrix")
        return 1
    except KeyboardInterrupt:
        return 130
    skipped = [v for v in ROOT_VARIABLES if v not in roots]
    if skipped:
        env[SKIPPED_VARIABLE] = f"only QEMU {', '.join(sorted(roots))} asked for"
    with contextlib.ExitStack() as held:
        for version, root in roots.items():
            held.enter_context(root_lock(root, shared=True, busy=f"waiting to use {root}"))
            if not is_complete(root, version):
                log(f"{root} was removed by another run while we were starting; run again")
                return 1
        env.update({ROOT_VARIABLES[v]: str(root) for v, root in roots.items()})
        return call(command, env)


# --------------------------------------------------------------------------
# Command line.


def versions_list(text: str) -> list[str]:
    """``10,11`` -> ["10", "11"]; a version without a root flavour is an error."""
    versions = sorted({v.strip() for v in text.split(",")}, key=lambda v: (len(v), v))
    unknown = [v for v in versions if v not in ROOT_VARIABLES]
    if unknown or not versions:
        raise argparse.ArgumentTypeError(f"expected some of {','.join(ROOT_VARIABLES)}")
    return versions


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.interop.qemu_cache",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get(CACHE_VARIABLE) or DEFAULT_CACHE),
        help=f"the cache directory (default: ${CACHE_VARIABLE} or {DEFAULT_CACHE})",
    )
    parser.add_argument(
        "--versions",
        type=versions_list,
        default=sorted(ROOT_VARIABLES, key=int),
        help="the QEMU versions, comma-separated (default: 10,11)",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    runner = sub.add_parser("run", help="run a command with the roots named")
    runner.add_argument(
        "--matrix",
        choices=("auto", "skip", "require"),
        default=os.environ.get("FDCHANNEL_QEMU_MATRIX") or "auto",
        help="auto: run it when root; skip: never; require: fail if it cannot run",
    )
    runner.add_argument("command", nargs="+", help="after --: the command, e.g. pytest")
    sub.add_parser("ensure", help="build or reuse the roots; print their variables")
    sub.add_parser("list", help="the cached roots")
    sub.add_parser("remove", help="delete the cached roots that no run uses")
    return parser.parse_args(argv)


def list_roots(cache: Path) -> None:
    for key in sorted(cache.glob("qemu*_*")):
        root = key / "root"
        installed = installed_qemu(root) if root.is_dir() else None
        size = disk_usage(key) / 2**20
        use = "in use" if mounts_under(key) else ""
        print(f"{key}  {PACKAGE} {installed or '-'}  {size:.0f} MiB  {use}".rstrip())


def remove_all(cache: Path) -> int:
    busy = 0
    for key in sorted(cache.glob("qemu*_*")):
        with root_lock(key / "root") as free:
            if not free or mounts_under(key):
                log(f"not removing {key}: a run is using it")
                busy += 1
                continue
            log(f"removing {key}")
            remove_tree(key)
    return 1 if busy else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # A build stopped with SIGTERM (a timeout, a killed make) cleans up as
    # one stopped with Ctrl-C; ``call`` passes it on to its command instead.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    cache: Path = args.cache.absolute()
    versions: list[str] = args.versions
    if args.action == "run":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        return run(cache, versions, args.matrix, command)
    if args.action == "list":
        list_roots(cache)
        return 0
    try:
        if args.action == "remove":
            return remove_all(cache)
        roots = ensure(cache, versions)
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        log(f"failed: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130
    for version, root in roots.items():
        print(f"{ROOT_VARIABLES[version]}={shlex.quote(str(root))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
