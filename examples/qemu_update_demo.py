"""A running guest moved from QEMU 10.0 to QEMU 11.1 by ``fdchannel qemu-update``,
its memory never copied.

``make demo-qemu-update`` (as root) builds or reuses the Debian 13 roots of
the QEMU matrix (``tests/interop/qemu_cache.py``, as ``make test`` does) and
runs this with ``FDCHANNEL_QEMU10_ROOT`` and ``FDCHANNEL_QEMU11_ROOT`` naming
them.  It:

1. starts a guest (1 GiB of RAM in a memfd, ROMs too) on QEMU 10.0, run
   with ``chroot`` from its root, its QMP monitor on a unix socket;
2. writes a random page into guest RAM through the RAM memfd, which the
   guest sees (QEMU's ``pmemsave`` reads it back);
3. runs ``fdchannel qemu-update --qmp OLD-SOCKET -- chroot ROOT11
   qemu-system-x86_64 ... -machine pc-i440fx-10.0,...``, whose report shows
   each step, the guest's downtime and the total;
4. checks that the guest runs on QEMU 11.1, that the RAM memfd the new QEMU
   holds is the very file the old one had (same inode: nothing was
   copied), that the page reads back through the new QEMU, and that the old
   QEMU has exited.

Exit status 0 only if all of that held.  Every QEMU is stopped and the
roots' mounts are undone on the way out, also after a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests/ belongs to the repository, not to the package

from tests.interop.qemu_root import bind_mounts, is_complete  # noqa: E402

ROOTS = {"10": "FDCHANNEL_QEMU10_ROOT", "11": "FDCHANNEL_QEMU11_ROOT"}
RAM = "1G"
#: Guest RAM and ROMs in memfds that can be shared: what cpr-transfer needs.
GUEST = (
    "-name",
    "demo",
    "-object",
    f"memory-backend-memfd,id=ram0,size={RAM},share=on",
    "-m",
    RAM,
    "-accel",
    "tcg",
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
)
#: QEMU 10.0's "pc": 11.1 runs the guest as the machine it was started as.
MACHINE = "pc-i440fx-10.0"
#: The memory backend's memfd is named after its type (/proc/PID/fd shows it).
RAM_MEMFD = "/memfd:memory-backend-memfd (deleted)"
#: Where in guest RAM the page goes: 64 MiB, far from what the firmware uses.
PAGE_ADDRESS = 64 * 2**20
PAGE_SIZE = 4096
#: The longest wait for anything.
TIMEOUT = 30.0


class Qmp:
    """A QMP connection, blocking, with a timeout on every wait."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rb")
        creds = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        #: QEMU's pid: the process that listens on the socket.
        self.pid: int = struct.unpack("3i", creds)[0]
        greeting = json.loads(self.file.readline())["QMP"]["version"]["qemu"]
        self.version = "{major}.{minor}.{micro}".format(**greeting)
        self.ids = 0
        self.execute("qmp_capabilities")

    def execute(self, command: str, **arguments: Any) -> Any:
        self.ids += 1
        request = {"execute": command, "arguments": arguments, "id": self.ids}
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        while True:
            line = self.file.readline()
            if not line:
                raise RuntimeError(f"QEMU closed its monitor; we sent {command}")
            message = json.loads(line)
            if message.get("id") != self.ids:
                continue  # an event
            if "error" in message:
                raise RuntimeError(f"{command}: {message['error']['desc']}")
            return message["return"]

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@contextlib.contextmanager
def qmp(path: Path) -> Iterator[Qmp]:
    monitor = Qmp(path)
    try:
        yield monitor
    finally:
        monitor.close()


class Place:
    """A directory in a root's /tmp: ``host`` is our path to it, ``inside`` QEMU's."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.host = Path(tempfile.mkdtemp(prefix="fdc-demo-", dir=root / "tmp"))
        self.inside = Path("/") / self.host.relative_to(root)

    def qemu(self, *args: str) -> list[str]:
        """``chroot ROOT qemu-system-x86_64 ARGS``, with its QMP monitor in this place."""
        qmp = f"unix:{self.inside / 'qmp.sock'},server=on,wait=off"
        return ["chroot", str(self.root), "qemu-system-x86_64", *args, "-qmp", qmp]


def ram_memfd(pid: int) -> Path:
    """The guest RAM's memfd as ``pid`` holds it, in /proc/PID/fd."""
    for link in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):
            if os.readlink(link) == RAM_MEMFD:
                return link
    raise RuntimeError(f"QEMU pid {pid} holds no {RAM_MEMFD}")


def guest_page(monitor: Qmp, place: Place, name: str) -> bytes:
    """The page at PAGE_ADDRESS as the guest sees it (QEMU's pmemsave writes it out)."""
    monitor.execute("pmemsave", val=PAGE_ADDRESS, size=PAGE_SIZE, filename=str(place.inside / name))
    return (place.host / name).read_bytes()


def wait_gone(pid: int, kill: bool) -> bool:
    """Whether ``pid`` has exited (killed first if ``kill``), within TIMEOUT."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        if kill:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return bool(select.select([pidfd], [], [], TIMEOUT if kill else 0)[0])
    finally:
        os.close(pidfd)


def yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def show(label: str, text: str) -> None:
    print(f"{label:<10}{text}", flush=True)


def demo(old_place: Place, new_place: Place, started: list[int]) -> bool:
    # 1. The guest on QEMU 10.0, started as a daemon: it returns once QMP listens.
    pidfile = str(old_place.inside / "qemu.pid")
    old_argv = old_place.qemu(*GUEST, "-machine", "pc,aux-ram-share=on,memory-backend=ram0")
    subprocess.run([*old_argv, "-daemonize", "-pidfile", pidfile], check=True, timeout=TIMEOUT)
    started.append(int((old_place.host / "qemu.pid").read_text()))
    old_qmp = old_place.host / "qmp.sock"
    with qmp(old_qmp) as old:
        status = old.execute("query-status")["status"]
        memfd = ram_memfd(old.pid)
        inode = memfd.stat().st_ino
        show("old", f"QEMU {old.version}, pid {old.pid}: the guest is {status}")
        show("", f"{RAM[:-1]} GiB of guest RAM in a memfd, inode {inode} ({memfd})")
        # 2. A page written into the memfd is guest RAM: QEMU reads it back.
        page = os.urandom(PAGE_SIZE)
        ram = os.open(memfd, os.O_RDWR | os.O_CLOEXEC)
        try:
            os.pwrite(ram, page, PAGE_ADDRESS)
        finally:
            os.close(ram)
        seen = guest_page(old, old_place, "old.page")
        where = f"guest address {PAGE_ADDRESS:#x}"
        show("", f"4 KiB written at {where}; QEMU {old.version} reads it back: {yes(seen == page)}")
    # 3. The update.  11.1's "pc" is pc-i440fx-11.1: the new QEMU names 10.0's.
    new_argv = new_place.qemu(*GUEST, "-machine", f"{MACHINE},aux-ram-share=on,memory-backend=ram0")
    log = str(new_place.host / "qemu.log")
    command = ["fdchannel", "qemu-update", "--qmp", str(old_qmp), "--log", log, "--", *new_argv]
    print(f"\n$ {shlex.join(command)}", flush=True)
    done = subprocess.run([sys.executable, "-m", *command], timeout=TIMEOUT * 2, check=False)
    print(flush=True)
    if done.returncode != 0:
        show("result", f"the update did not happen (exit status {done.returncode})")
        return False
    # 4. The guest on QEMU 11.1, on the same memory.
    with qmp(new_place.host / "qmp.sock") as new:
        started.append(new.pid)
        status = new.execute("query-status")["status"]
        new_inode = ram_memfd(new.pid).stat().st_ino
        seen = guest_page(new, new_place, "new.page")
        same = new_inode == inode
        show("new", f"QEMU {new.version}, pid {new.pid}: the guest is {status}")
        show("", f"its RAM memfd is inode {new_inode}: the same file as before: {yes(same)}")
        show("", f"the page reads back through QEMU {new.version}: {yes(seen == page)}")
        if same:
            show("", "guest memory was never copied: the new QEMU maps the old one's memfd")
    old_gone = wait_gone(started[0], kill=False)
    show("old", f"pid {started[0]} {'has exited' if old_gone else 'is STILL RUNNING'}")
    return status == "running" and same and seen == page and old_gone


def main() -> int:
    roots = {version: os.environ.get(variable) for version, variable in ROOTS.items()}
    missing = [ROOTS[v] for v, root in roots.items() if not root or not is_complete(Path(root), v)]
    if missing:
        print(
            f"{', '.join(missing)}: not set or not a QEMU root; run `make demo-qemu-update` "
            "as root, which builds or reuses them",
            file=sys.stderr,
        )
        return 2
    root10, root11 = (Path(roots[v] or "").absolute() for v in ("10", "11"))
    started: list[int] = []
    places: list[Place] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(bind_mounts(root10))
        stack.enter_context(bind_mounts(root11))
        try:
            places += [Place(root10), Place(root11)]
            ok = demo(places[0], places[1], started)
        finally:
            # Every QEMU goes before the mounts do (ExitStack unmounts after this).
            for pid in started:
                wait_gone(pid, kill=True)
            for place in places:
                shutil.rmtree(place.host, ignore_errors=True)
    print("demo " + ("passed" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
