"""The QEMU roots' cache (qemu_cache.py) and the matrix's skip notice, without QEMU or root.

Roots here are fakes: a directory with ``usr/bin/qemu-system-x86_64`` and
a dpkg status naming the QEMU package, which is all ``is_complete`` reads.
The archive is a dictionary of URLs standing in for ``fetch``.
"""

from __future__ import annotations

import ast
import hashlib
import lzma
import os
import sys
from pathlib import Path

import pytest

from . import qemu_cache
from .matrix import COLUMNS, ROWS, Matrix, Run
from .qemu_cache import (
    DEFAULT_CACHE,
    MAX_ROOT_LENGTH,
    ROOT_VARIABLES,
    SKIPPED_VARIABLE,
    cached_roots,
    ensure_flavour,
    index_hash,
    package_version,
    prune,
    root_for,
)
from .qemu_root import DPKG_STATUS, MIRROR, QEMU_IN_ROOT, root_lock

V10 = "1:10.0.13+ds-0+deb13u1"
V10_NEWER = "1:10.0.14+ds-0+deb13u1"
V11 = "1:11.1.3+ds-2~bpo13+1"
V11_NEWER = "1:11.2.0+ds-1~bpo13+1"


def fake_root(root: Path, version: str) -> Path:
    """A directory that ``is_complete`` takes for a root with QEMU ``version``."""
    (root / QEMU_IN_ROOT).parent.mkdir(parents=True)
    (root / QEMU_IN_ROOT).write_bytes(b"")
    (root / DPKG_STATUS).parent.mkdir(parents=True)
    (root / DPKG_STATUS).write_text(
        f"Package: qemu-system-x86\nStatus: install ok installed\nVersion: {version}\n\n"
    )
    return root


def packages(*stanzas: tuple[str, str]) -> bytes:
    """A Packages index of (package, version) stanzas."""
    return "".join(
        f"Package: {p}\nArchitecture: amd64\nVersion: {v}\n\n" for p, v in stanzas
    ).encode()


@pytest.mark.parametrize(
    ("index", "expected"),
    [
        pytest.param(packages(("qemu-system-x86", V10)), V10, id="first"),
        pytest.param(packages(("acl", "2.3"), ("qemu-system-x86", V11)), V11, id="later"),
        pytest.param(
            packages(("qemu-system-x86-xen", "9"), ("qemu-system-x86", V10)), V10, id="prefix"
        ),
        pytest.param(packages(("xqemu-system-x86", "9")), None, id="suffix-only"),
        pytest.param(packages(("qemu-system-arm", V10)), None, id="absent"),
        pytest.param(b"", None, id="empty"),
    ],
)
def test_package_version(index: bytes, expected: str | None) -> None:
    assert package_version(index, "qemu-system-x86") == expected


def test_index_hash_takes_sha256() -> None:
    release = (
        "Codename: trixie\nMD5Sum:\n 0123 10 main/binary-amd64/Packages.xz\n"
        "SHA256:\n aaaa 5 main/binary-arm64/Packages.xz\n beef 10 main/binary-amd64/Packages.xz\n"
    )
    assert index_hash(release, "main/binary-amd64/Packages.xz") == "beef"
    with pytest.raises(ValueError, match="names no"):
        index_hash(release, "main/binary-i386/Packages.xz")


def test_root_names() -> None:
    """Epoch dropped, recipe last, room left for the tests' socket paths."""
    root = root_for(DEFAULT_CACHE, "11", V11)
    assert root.parent.name == f"qemu11_11.1.3+ds-2~bpo13+1_{qemu_cache.recipe()}"
    assert root.name == "root"
    assert len(str(root)) <= MAX_ROOT_LENGTH


class Archive:
    """Stands in for ``fetch``: one suite's InRelease and index, and what was asked."""

    def __init__(self, suite: str, version: str) -> None:
        self.urls: dict[str, bytes] = {}
        self.asked: list[str] = []
        self.publish(suite, version)

    def publish(self, suite: str, version: str) -> None:
        index = lzma.compress(packages(("qemu-system-x86", version)))
        digest = hashlib.sha256(index).hexdigest()
        arch = qemu_cache.architecture()
        release = f"SHA256:\n {digest} {len(index)} main/binary-{arch}/Packages.xz\n"
        self.urls[f"{MIRROR}/dists/{suite}/InRelease"] = release.encode()
        self.urls[f"{MIRROR}/dists/{suite}/main/binary-{arch}/by-hash/SHA256/{digest}"] = index

    def fetch(self, url: str) -> bytes:
        self.asked.append(url)
        if url not in self.urls:
            raise OSError(f"unreachable: {url}")
        return self.urls[url]


def test_archive_index_read_once_per_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = Archive("trixie-backports", V11)
    monkeypatch.setattr(qemu_cache, "fetch", archive.fetch)
    suites = {"trixie-backports"}
    assert qemu_cache.archive_offers(tmp_path, suites) == {"trixie-backports": V11}
    assert len(archive.asked) == 2  # InRelease, then the index
    assert qemu_cache.archive_offers(tmp_path, suites) == {"trixie-backports": V11}
    assert len(archive.asked) == 3  # InRelease only: same index, version remembered
    archive.publish("trixie-backports", V11_NEWER)
    assert qemu_cache.archive_offers(tmp_path, suites) == {"trixie-backports": V11_NEWER}
    assert len(archive.asked) == 5


def test_archive_unreachable_is_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemu_cache, "fetch", Archive("trixie", V10).fetch)
    assert qemu_cache.archive_offers(tmp_path, {"trixie", "trixie-backports"}) == {"trixie": V10}


@pytest.mark.parametrize(
    ("cached", "offers", "expected"),
    [
        pytest.param([V10], {"trixie": V10}, (V10, True), id="offered-and-cached: reuse"),
        pytest.param([V10, V10_NEWER], {}, (V10_NEWER, False), id="offline: newest cached"),
        pytest.param([V10], {"trixie": None}, (V10, False), id="no package: cached"),
        pytest.param([V10], {"trixie": "1:12.0+ds-1"}, (V10, False), id="other major: cached"),
        pytest.param([], {}, "no QEMU 10 root is cached", id="offline, nothing cached"),
        pytest.param([], {"trixie": "1:12.0+ds-1"}, "not QEMU 10", id="other major, nothing"),
    ],
)
def test_which_root(
    tmp_path: Path,
    cached: list[str],
    offers: dict[str, str | None],
    expected: tuple[str, bool] | str,
) -> None:
    """What is reused without building; what cannot be had is an error saying why."""
    for age, version in enumerate(cached):
        root = fake_root(root_for(tmp_path, "10", version), version)
        os.utime(root / DPKG_STATUS, (age, age))  # later in the list: installed later
    if isinstance(expected, str):
        with pytest.raises(RuntimeError, match=expected):
            ensure_flavour(tmp_path, "10", offers, None)
        return
    version, current = expected
    assert ensure_flavour(tmp_path, "10", offers, None) == (
        root_for(tmp_path, "10", version),
        current,
    )


def test_prune_keeps_current_and_used(tmp_path: Path) -> None:
    """Outdated roots go unless a run holds them; the current one stays."""
    current = fake_root(root_for(tmp_path, "11", V11_NEWER), V11_NEWER)
    used = fake_root(root_for(tmp_path, "11", V11), V11)
    old = fake_root(tmp_path / "qemu11_11.0.0_000000" / "root", "1:11.0.0")
    partial = current.parent / "root.partial-x"
    partial.mkdir()
    other = fake_root(root_for(tmp_path, "10", V10), V10)
    with root_lock(used, shared=True) as held:
        assert held
        prune(tmp_path, "11", current)
    assert set(cached_roots(tmp_path, "11")) == {current, used}
    assert not old.parent.exists()
    assert not partial.exists()
    assert cached_roots(tmp_path, "10") == [other]


@pytest.fixture
def not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """We are uid 1000, and a root was named by someone (it must not reach the tests)."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv(ROOT_VARIABLES["10"], "/somewhere")


#: Prints the variables the command sees.
SHOW_ENV = [
    sys.executable,
    "-c",
    "import os; print([os.environ.get(v) for v in "
    f"{[*ROOT_VARIABLES.values(), SKIPPED_VARIABLE]!r}])",
]


@pytest.mark.usefixtures("not_root")
@pytest.mark.parametrize(
    ("matrix", "status", "skipped"),
    [
        pytest.param("auto", 0, "not root (uid 1000)", id="auto"),
        pytest.param("skip", 0, "FDCHANNEL_QEMU_MATRIX=skip", id="skip"),
        pytest.param("require", 1, None, id="require"),
    ],
)
def test_run_without_root(
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    matrix: str,
    status: int,
    skipped: str | None,
) -> None:
    """The command runs without the roots named, after a block naming every row; or not at all."""
    assert qemu_cache.run(tmp_path, ["10", "11"], matrix, SHOW_ENV) == status
    out, err = capfd.readouterr()
    if skipped is None:
        assert out == ""
        assert "must run here, but: not root" in err
        return
    root10, root11, reason = ast.literal_eval(out)
    assert (root10, root11) == (None, None)  # FDCHANNEL_QEMU10_ROOT was set: not passed on
    assert reason.startswith(skipped)
    assert "QEMU VERSION MATRIX SKIPPED" in err
    assert f"why: {reason}\n" in err
    assert all(f"  - {row}\n" in err for row in ROWS)
    assert ", ".join(COLUMNS) in err
    assert list(tmp_path.iterdir()) == []  # nothing built, nothing written


@pytest.mark.parametrize(
    ("why", "expected"),
    [
        pytest.param(
            "not root (uid 1000)",
            [
                "SKIPPED 3 of 4 runs: not root (uid 1000)",
                "  QEMU → Incoming: 10.0, 11.1",
                "  because a test said so:",
                "    relay QEMU → QEMU: 11.1",
            ],
            id="why given",
        ),
        pytest.param(
            None,
            [
                "SKIPPED 3 of 4 runs",
                "  because FDCHANNEL_QEMU10_ROOT is not set:",
                "    QEMU → Incoming: 10.0",
                "  because FDCHANNEL_QEMU11_ROOT is not set:",
                "    QEMU → Incoming: 11.1",
                "  because a test said so:",
                "    relay QEMU → QEMU: 11.1",
            ],
            id="tests' reasons",
        ),
    ],
)
def test_matrix_says_what_skipped(
    monkeypatch: pytest.MonkeyPatch, why: str | None, expected: list[str]
) -> None:
    if why is None:
        monkeypatch.delenv(SKIPPED_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(SKIPPED_VARIABLE, why)
    matrix = Matrix()
    runs = [
        Run("QEMU → Incoming", "10.0", "trio", "skip", reason="FDCHANNEL_QEMU10_ROOT is not set"),
        Run("QEMU → Incoming", "11.1", "trio", "skip", reason="FDCHANNEL_QEMU11_ROOT is not set"),
        Run("relay QEMU → QEMU", "11.1", "trio", "skip", reason="a test said so"),
        Run("relay QEMU → QEMU", "10.0", "trio", "pass", 0.5),
    ]
    matrix.runs = {str(i): run for i, run in enumerate(runs)}
    assert matrix.skipped() == expected


def test_matrix_silent_without_skips() -> None:
    matrix = Matrix()
    matrix.runs = {"a": Run("QEMU → Incoming", "10.0", "trio", "pass", 0.1)}
    assert matrix.skipped() == []
