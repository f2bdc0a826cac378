"""QEMU 11.1's cpr-exec with ``fdchannel probe --cpr-exec`` as its cpr-exec-command.

Runs only when ``FDCHANNEL_QEMU11_ROOT`` names a Debian 13 root with QEMU
11.1 (``make interop-qemu`` builds one and runs this), as root: QEMU runs
there with ``chroot``, the host's /proc and /dev bound in.  The probe runs
there too, from a copy of the package in the root's /tmp, with the root's
own python3 (``probe --cpr-exec`` needs nothing but the standard library).

What QEMU does, from migration/cpr-exec.c, cpr.c and vmstate-types.c, and
seen here:

* ``migrate-set-parameters`` takes ``mode: cpr-exec`` and
  ``cpr-exec-command``, a list of strings (argv, no shell).  ``migrate``
  then needs only a main channel that is not a stream between two live
  processes (here ``file:``); no cpr channel.
* Before the main stream, QEMU writes its cpr state into a memfd named
  ``QEMU_CPR_EXEC_STATE`` (close-on-exec, not sealable): the cpr-transfer
  stream with each descriptor's number (big-endian i32) where the 0x20
  marker would be, then ``CprState/vfio devices``.  It dups the memfd
  without close-on-exec and puts the dup's number in the environment
  variable ``QEMU_CPR_EXEC_STATE``; the dup shares the offset, which stays
  at the end of the state.
* Once the migration has completed, QEMU clears close-on-exec on every
  descriptor of the state (RAM and each ROM: memfds) and execvp's the
  command, keeping its pid.  Its QMP socket is close-on-exec: the monitor
  connection ends.
* The new QEMU, given ``-incoming defer`` (or the main channel), finds the
  variable at start-up, unsets it, seeks the memfd to 0, reads the state,
  sets close-on-exec again on what it names and creates RAM and ROMs from
  those descriptors.  ``migrate-incoming`` on the main channel finishes the
  migration, and the guest runs again if it ran before.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import anyio
import anyio.abc
import pytest

import fdchannel

from .capture_cpr import RUNNING_GUEST_ARGS
from .qemu import QmpClient, accept_monitor, show_log, spawn_with_monitor
from .qemu_root import bind_mounts, is_complete

ROOT_VARIABLE = "FDCHANNEL_QEMU11_ROOT"

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.interop,
    pytest.mark.skipif(
        not os.environ.get(ROOT_VARIABLE),
        reason=f"{ROOT_VARIABLE} is not set: it names a Debian 13 root with QEMU 11.1 "
        "('make test' or 'make interop-qemu' sets it when run as root)",
    ),
]

#: A running guest whose RAM is a shared memfd, as cpr-exec requires.
GUEST_ARGS = RUNNING_GUEST_ARGS
RAM_SIZE = 256 * 1024 * 1024
#: What the guest RAM's memfd is called (the backend's type, not its id).
RAM_LINK = "/memfd:memory-backend-memfd (deleted)"
#: Where a pattern goes in guest RAM (firmware leaves it alone), and its size.
PATTERN_ADDR = 0x200000
PATTERN_SIZE = 4096
#: Seconds the whole test may take; it takes two or three.
TEST_TIMEOUT = 60
#: The environment QEMU runs in: small, so that it can be compared whole.
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Place:
    """A directory both sides see: ``host`` is our path to it, ``guest`` QEMU's."""

    host: Path
    guest: PurePosixPath


@pytest.fixture(scope="module")
def qemu11_root() -> Iterator[Path]:
    """The root, with the host's /proc and /dev bound in while the tests run."""
    root = Path(os.environ[ROOT_VARIABLE]).absolute()
    if not is_complete(root, "11"):
        pytest.fail(f"{ROOT_VARIABLE}={root} is not a root with QEMU 11")
    if os.geteuid() != 0:
        pytest.fail("chroot and mount --bind need root")
    with bind_mounts(root):  # unmounted on the way out, whatever happened
        yield root


def _in_root(root: Path, host: Path) -> Place:
    return Place(host, PurePosixPath("/") / host.relative_to(root))


@pytest.fixture(scope="module")
def package(qemu11_root: Path) -> Iterator[Place]:
    """A copy of the fdchannel package in the root's /tmp (its directory: PYTHONPATH)."""
    source = Path(fdchannel.__file__).parent
    with tempfile.TemporaryDirectory(prefix="fdc-src-", dir=qemu11_root / "tmp") as d:
        shutil.copytree(source, Path(d) / "fdchannel", ignore=shutil.ignore_patterns("__pycache__"))
        yield _in_root(qemu11_root, Path(d))


@pytest.fixture
def place(qemu11_root: Path) -> Iterator[Place]:
    """A fresh directory in the root's /tmp, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="fdc-", dir=qemu11_root / "tmp") as d:
        yield _in_root(qemu11_root, Path(d))


def _ram_fd(pid: int) -> tuple[int, int]:
    """The guest RAM's memfd in QEMU ``pid``: its number there and its inode."""
    for name in os.listdir(f"/proc/{pid}/fd"):
        path = f"/proc/{pid}/fd/{name}"
        try:
            if os.readlink(path) == RAM_LINK and os.stat(path).st_size == RAM_SIZE:
                return int(name), os.stat(path).st_ino
        except OSError:
            continue
    raise AssertionError(f"QEMU {pid} holds no {RAM_SIZE}-byte {RAM_LINK}")


def _write_guest_ram(pid: int, data: bytes) -> None:
    """Write into the running guest's RAM through QEMU's own memfd."""
    fd, _ = _ram_fd(pid)
    ram = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
    try:
        os.pwrite(ram, data, PATTERN_ADDR)
    finally:
        os.close(ram)


async def _guest_memory(qmp: QmpClient, place: Place, name: str) -> bytes:
    """The pattern's page of guest RAM, as QEMU's ``pmemsave`` writes it out."""
    await qmp.execute(
        "pmemsave",
        {"val": PATTERN_ADDR, "size": PATTERN_SIZE, "filename": str(place.guest / name)},
    )
    return await anyio.Path(place.host / name).read_bytes()


def _report(log: Path) -> dict[str, Any]:
    """The probe's ``--json`` report, which it wrote to QEMU's stderr (our log)."""
    text = log.read_text(errors="replace")
    start = text.find('{\n  "ok"')
    assert start >= 0, f"no report from the probe in QEMU's output:\n{text}"
    report, _ = json.JSONDecoder().raw_decode(text, start)
    assert isinstance(report, dict)
    return report


def _environment(pid: int) -> dict[str, str]:
    """The environment process ``pid`` was exec'd with."""
    with open(f"/proc/{pid}/environ", "rb") as file:
        items = file.read().split(b"\0")
    return dict(os.fsdecode(item).split("=", 1) for item in items if item)


async def _connect(
    listener: fdchannel.Listener, process: anyio.abc.Process, name: str
) -> QmpClient:
    """Accept a QEMU's QMP connection (it connects to us) and greet it."""
    qmp = QmpClient(await accept_monitor(listener, process, name, 20), timeout=20)
    try:
        version = await qmp.handshake()
    except BaseException:
        await qmp.aclose()
        raise
    assert (version["major"], version["minor"]) >= (10, 2), f"QEMU {version} has no cpr-exec"
    return qmp


async def test_qemu11_execs_the_probe_which_execs_the_new_qemu(
    qemu11_root: Path, package: Place, place: Place
) -> None:
    """The guest runs on in the new QEMU, in the RAM the probe saw pass."""
    pattern = os.urandom(PATTERN_SIZE)
    qmp_path = place.guest / "qmp.sock"
    state = place.guest / "vm.state"
    new_qemu = [
        "qemu-system-x86_64",
        "-name",
        "new",
        *GUEST_ARGS,
        "-qmp",
        f"unix:{qmp_path}",
        "-incoming",
        "defer",
    ]
    probe = ["python3", "-m", "fdchannel", "probe", "--cpr-exec", "--json", "--", *new_qemu]
    environment = {"PATH": PATH, "LANG": "C.UTF-8", "PYTHONPATH": str(package.guest)}
    command = [
        "chroot",
        str(qemu11_root),
        "env",
        "-i",
        *(f"{key}={value}" for key, value in environment.items()),
        "qemu-system-x86_64",
        "-name",
        "old",
        *GUEST_ARGS,
        "-qmp",
        f"unix:{qmp_path}",
    ]
    log = place.host / "qemu.log"
    with anyio.fail_after(TEST_TIMEOUT):
        # chroot and env exec, so the pid is QEMU's; cpr-exec keeps it.
        process, listener = await spawn_with_monitor(command, place.host / "qmp.sock", log)
        try:
            async with listener:
                old = await _connect(listener, process, "old")
                async with old.stream:
                    assert (await old.execute("query-status"))["status"] == "running"
                    ram_fd, ram_inode = _ram_fd(process.pid)
                    _write_guest_ram(process.pid, pattern)
                    assert await _guest_memory(old, place, "old.mem") == pattern
                    parameters = {"mode": "cpr-exec", "cpr-exec-command": probe}
                    await old.execute("migrate-set-parameters", parameters)
                    await old.execute("migrate", {"uri": f"file:{state}"})
                    # QEMU now writes the state, completes, and execs the probe.
                new = await _connect(listener, process, "new (after the exec)")
            async with new.stream:
                assert (await new.execute("query-status"))["status"] == "inmigrate"
                await new.enable_migration_events()
                await new.execute("migrate-incoming", {"uri": f"file:{state}"})
                await new.wait_migration()
                # The guest was running: it runs again, on the same memfd.
                assert (await new.execute("query-status"))["status"] == "running"
                assert _ram_fd(process.pid) == (ram_fd, ram_inode)
                assert await _guest_memory(new, place, "new.mem") == pattern
                _check_report(_report(log), ram_fd, probe, new_qemu)
                env = _environment(process.pid)
                assert env == {**environment, "QEMU_CPR_EXEC_STATE": env["QEMU_CPR_EXEC_STATE"]}
                await new.execute("quit")
                await process.wait()
            assert process.returncode == 0
        except BaseException:
            await show_log("old, then new", command, log)
            raise
        finally:
            with anyio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                await process.aclose()


def _check_report(
    report: dict[str, Any], ram_fd: int, probe: list[str], new_qemu: list[str]
) -> None:
    """The probe saw QEMU's state: RAM and ROMs as memfds, inherited as they were."""
    assert report["ok"] is True
    assert report["state_description"]["name"] == "QEMU_CPR_EXEC_STATE"
    assert report["state_offset"] == report["state_size"]  # QEMU leaves it at the end
    ram = [d for d in report["descriptors"] if d["name"] == "ram0"]
    assert len(ram) == 1 and ram[0]["fd"] == ram_fd and ram[0]["id"] == 0
    assert ram[0]["description"]["kind"] == "memfd"
    assert ram[0]["description"]["size"] == RAM_SIZE
    assert all(d["description"]["kind"] == "memfd" for d in report["descriptors"])
    assert not any(d["cloexec"] for d in report["descriptors"])
    assert [(s["name"], s["known"]) for s in report["subsections"]] == [
        ("CprState/vfio devices", True)
    ]
    assert report["exec"] == {"program": "/usr/bin/qemu-system-x86_64", "argv": new_qemu}
    assert probe[-len(new_qemu) :] == new_qemu
