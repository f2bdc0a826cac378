"""Start and stop real QEMU processes and talk QMP to them over fdchannel streams.

Two kinds: the host's QEMU (Debian 12's 7.2, ``start_qemu``) and a QEMU 10.0
or later from a Debian 13 root, run with chroot for cpr-transfer
(``start_chroot_qemu``); plus the ``fdchannel`` command line as a child
process beside them (``fdchannel_cli``).

Each QEMU connects its QMP monitor to a unix listener of ours (``-qmp unix:PATH``
without ``server=on`` makes QEMU the client), so the monitor is ready the moment
``accept`` returns: no polling for a socket file to appear.  Every process is
killed and reaped when its ``async with`` block ends, however it ends.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread

import fdchannel
from fdchannel import Stream, blocking
from fdchannel.sockets import DEFAULT_RECEIVE

from .childlog import Log, watched

__all__ = [
    "CPR_ENTRIES",
    "CPR_GUEST_ARGS",
    "DEFAULT_TIMEOUT",
    "GUEST_ARGS",
    "MAX_MAIN_STREAM",
    "PATTERN_SIZE",
    "RAM_SIZE",
    "AnyStream",
    "ChrootQemu",
    "CliChild",
    "Place",
    "check_cpr_state",
    "cpr_machine",
    "fdchannel_cli",
    "guest_memory",
    "relay_stream",
    "start_chroot_qemu",
    "start_cpr_transfer",
    "start_incoming",
    "unix_channel",
    "write_guest_ram",
    "MIGRATION_MAGIC",
    "MIGRATION_VERSION",
    "QEMU_BINARY",
    "Qemu",
    "QemuError",
    "QmpClient",
    "QmpError",
    "migration_header",
    "start_qemu",
]

QEMU_BINARY = shutil.which("qemu-system-x86_64")

#: A paused (``-S``) machine with no devices, no display and no configuration
#: files read: it starts in a few tens of milliseconds and only opens what the
#: test names.  TCG keeps both sides of a migration on the same accelerator and
#: away from /dev/kvm.
GUEST_ARGS: tuple[str, ...] = (
    "-machine",
    "pc",
    "-accel",
    "tcg",
    "-m",
    "64",
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    "-serial",
    "none",
    "-monitor",
    "none",
    "-S",
)

#: The start of every QEMU migration stream: "QEVM", then the format version
#: (migration/savevm.c: QEMU_VM_FILE_MAGIC, QEMU_VM_FILE_VERSION).
MIGRATION_MAGIC = 0x5145564D
MIGRATION_VERSION = 3

#: Migration states after which nothing more happens (qapi/migration.json).
FINAL_MIGRATION_STATES = frozenset({"completed", "failed", "cancelled"})

#: Seconds any single QMP exchange or QEMU start may take.
DEFAULT_TIMEOUT = 10.0
#: A QMP message is a line of JSON; anything longer means we lost the framing.
MAX_LINE = 1024 * 1024

JsonObject = dict[str, Any]


class QemuError(Exception):
    """QEMU did not behave as the test expected (exited, was silent, sent garbage)."""


class QmpError(QemuError):
    """QEMU answered a command with an error."""

    def __init__(self, command: str, error: JsonObject) -> None:
        self.command = command
        self.error_class = str(error.get("class", "?"))
        self.desc = str(error.get("desc", ""))
        super().__init__(f"QMP {command} failed: {self.error_class}: {self.desc}")


def migration_header(data: bytes) -> tuple[int, int]:
    """The magic and version a migration stream starts with (big-endian u32 each)."""
    if len(data) < 8:
        raise QemuError(f"migration stream of {len(data)} bytes has no header")
    magic, version = struct.unpack(">II", data[:8])
    return magic, version


class QmpClient:
    """A QMP client over one fdchannel stream: newline-delimited JSON.

    Replies are matched to commands by ``id``; asynchronous events that
    arrive in between are kept (the most recent ones) for ``wait_event``.
    """

    def __init__(self, stream: Stream, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.stream = stream
        self.timeout = timeout
        self.greeting: JsonObject = {}
        self._buffer = bytearray()
        self._events: collections.deque[JsonObject] = collections.deque(maxlen=1000)
        self._ids = itertools.count(1)

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def handshake(self) -> JsonObject:
        """Read the greeting and leave capabilities negotiation; return QEMU's version."""
        with self._bounded("the QMP greeting"):
            self.greeting = await self._read_message()
        if "QMP" not in self.greeting:
            raise QemuError(f"expected a QMP greeting, got {self.greeting!r}")
        await self.execute("qmp_capabilities")
        version: JsonObject = self.greeting["QMP"]["version"]["qemu"]
        return version

    async def execute(
        self,
        command: str,
        arguments: JsonObject | None = None,
        *,
        fds: Sequence[int] = (),
    ) -> Any:
        """Run a command and return its ``return`` value; raise QmpError on ``error``.

        ``fds`` travel with the command's bytes by SCM_RIGHTS (for ``getfd``).
        """
        ident = next(self._ids)
        message: JsonObject = {"execute": command, "id": ident}
        if arguments is not None:
            message["arguments"] = arguments
        line = json.dumps(message).encode() + b"\n"
        with self._bounded(f"the answer to {command}"):
            if fds:
                await self.stream.send_fds(line, list(fds))
            else:
                await self.stream.send(line)
            while True:
                reply = await self._read_message()
                if "event" in reply:
                    self._events.append(reply)
                    continue
                if reply.get("id") != ident:
                    raise QemuError(f"QMP {command} (id {ident}) got a reply to another: {reply}")
                if "error" in reply:
                    raise QmpError(command, reply["error"])
                if "return" not in reply:
                    raise QemuError(f"QMP {command}: neither return nor error in {reply}")
                return reply["return"]

    async def wait_event(
        self, name: str, match: Callable[[JsonObject], bool] = lambda _: True
    ) -> JsonObject:
        """Return the first event called ``name`` whose ``data`` satisfies ``match``.

        Events that arrived during earlier commands count; others are skipped.
        """
        with self._bounded(f"a {name} event"):
            while True:
                while self._events:
                    event = self._events.popleft()
                    if event["event"] == name and match(event.get("data", {})):
                        return event
                message = await self._read_message()
                if "event" not in message:
                    raise QemuError(f"QMP reply while no command was pending: {message}")
                self._events.append(message)

    async def enable_migration_events(self) -> None:
        """Ask for a MIGRATION event at every state change (off by default)."""
        await self.execute(
            "migrate-set-capabilities",
            {"capabilities": [{"capability": "events", "state": True}]},
        )

    async def wait_migration(self) -> JsonObject:
        """Wait until migration reaches a final state; return ``query-migrate``.

        Driven by the MIGRATION event (``enable_migration_events`` first),
        then confirmed by ``query-migrate``, which also says why it failed.
        """
        await self.wait_event("MIGRATION", lambda data: data["status"] in FINAL_MIGRATION_STATES)
        info: JsonObject = await self.execute("query-migrate")
        if info.get("status") != "completed":
            raise QemuError(f"migration did not complete: {info}")
        return info

    def _bounded(self, what: str) -> _Deadline:
        return _Deadline(self.timeout, f"QEMU sent no {what} within {self.timeout:g} s")

    async def _read_message(self) -> JsonObject:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                if not line.strip():
                    continue
                try:
                    message = json.loads(line)
                except ValueError as exc:
                    raise QemuError(f"QMP sent a line that is not JSON: {line!r}") from exc
                if not isinstance(message, dict):
                    raise QemuError(f"QMP sent JSON that is not an object: {line!r}")
                return message
            if len(self._buffer) > MAX_LINE:
                raise QemuError(f"QMP sent more than {MAX_LINE} bytes without a newline")
            try:
                self._buffer += await self.stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError) as exc:
                # QEMU 7.2 exits when an incoming migration fails: this is how that looks.
                raise QemuError("QEMU closed its QMP connection (has it exited?)") from exc


class _Deadline:
    """Like ``anyio.fail_after``, but the TimeoutError says what was awaited."""

    def __init__(self, seconds: float, message: str) -> None:
        self._scope = anyio.move_on_after(seconds)
        self._message = message

    def __enter__(self) -> None:
        self._scope.__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # The scope swallows only its own cancellation, which becomes the
        # TimeoutError; so this never swallows anything (typed None for mypy).
        self._scope.__exit__(exc_type, exc, tb)
        if self._scope.cancelled_caught:
            raise TimeoutError(self._message)


@dataclass
class Qemu:
    """A running QEMU and its QMP connection."""

    name: str
    process: anyio.abc.Process
    qmp: QmpClient
    log: Path
    version: JsonObject


async def accept_monitor(
    listener: fdchannel.Listener, process: anyio.abc.Process, name: str, timeout: float
) -> Stream:
    """Accept QEMU's QMP connection, or say why it never came (without waiting long)."""
    stream: Stream | None = None
    with anyio.move_on_after(timeout):
        async with anyio.create_task_group() as tg:

            async def exited() -> None:
                await process.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(exited)
            stream = await listener.accept()
            tg.cancel_scope.cancel()
    if stream is not None:
        return stream
    if process.returncode is not None:
        raise QemuError(f"QEMU {name} exited with status {process.returncode} before QMP")
    raise QemuError(f"QEMU {name} did not connect to QMP within {timeout:g} s")


async def show_log(name: str, command: list[str], log: Path) -> None:
    """Print QEMU's command and output to stderr: pytest shows them with a failed test,
    including one that timed out."""
    with anyio.CancelScope(shield=True):
        output = await anyio.Path(log).read_text(errors="replace")
    print(f"--- QEMU {name}: {' '.join(command)}\n{output}", file=sys.stderr)


async def spawn_with_monitor(
    command: list[str], monitor: Path, log: Path, cwd: Path | None = None
) -> tuple[anyio.abc.Process, fdchannel.Listener]:
    """Listen on ``monitor`` for QEMU's QMP connection, then start ``command``.

    QEMU is the QMP client (no ``server=on``), so there is no polling for
    its socket file.  Its output goes to ``log``.
    """
    listener = await fdchannel.listen(f"unix:{monitor}")
    try:
        # Shielded: a cancellation while spawning must not lose a started process.
        with log.open("wb") as log_file, anyio.CancelScope(shield=True):
            process = await anyio.open_process(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                cwd=cwd,
                # Its own process group, so that the commands QEMU runs for
                # exec: migration die with it instead of lingering as orphans.
                start_new_session=True,
            )
    except BaseException:
        with anyio.CancelScope(shield=True):
            await listener.aclose()
        raise
    return process, listener


@asynccontextmanager
async def start_qemu(
    workdir: Path, name: str, *args: str, timeout: float = DEFAULT_TIMEOUT
) -> AsyncIterator[Qemu]:
    """Run ``qemu-system-x86_64 GUEST_ARGS ARGS`` in ``workdir`` with QMP ready.

    On the way out the process is killed and reaped, also on error or
    cancellation; if anything failed, QEMU's output goes to stderr, where
    pytest shows it with the failure.
    """
    if QEMU_BINARY is None:
        raise QemuError("qemu-system-x86_64 is not installed")
    qmp_path = workdir / f"{name}-qmp.sock"
    log = workdir / f"{name}.log"
    command = [QEMU_BINARY, "-name", name, *GUEST_ARGS, "-qmp", f"unix:{qmp_path}", *args]
    process, listener = await spawn_with_monitor(command, qmp_path, log, cwd=workdir)
    stream: Stream | None = None
    try:
        try:
            stream = await accept_monitor(listener, process, name, timeout)
        finally:
            with anyio.CancelScope(shield=True):
                await listener.aclose()
        qmp = QmpClient(stream, timeout=timeout)
        version = await qmp.handshake()
        yield Qemu(name, process, qmp, log, version)
    except BaseException:
        await show_log(name, command, log)
        raise
    finally:
        with anyio.CancelScope(shield=True):
            if stream is not None:
                await stream.aclose()
            await _kill(process)


async def _kill(process: anyio.abc.Process) -> None:
    """Kill QEMU and whatever it started, and reap QEMU."""
    if process.returncode is None:
        # Until QEMU is reaped its pid cannot be reused, so the group is its.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    await process.aclose()


# --------------------------------------------------------------------------
# QEMU 10.0 and later, from a Debian 13 root (qemu_root.py), for cpr-transfer.
#
# Debian 12 has no QEMU with cpr-transfer, so these run as ``chroot ROOT
# qemu-system-x86_64 ...`` with the host's /proc and /dev bound into the root
# (qemu_root.bind_mounts).  Sockets live in the root's /tmp: ours are
# ``ROOT/tmp/...``, QEMU's the same files as ``/tmp/...``.

#: A paused guest whose RAM is a shared memfd, as cpr-transfer requires; TCG
#: keeps it off /dev/kvm.  The machine comes from ``cpr_machine``.
CPR_GUEST_ARGS: tuple[str, ...] = (
    "-object",
    "memory-backend-memfd,id=ram0,size=256M,share=on",
    "-m",
    "256",
    "-accel",
    "tcg",
    "-nodefaults",
    "-no-user-config",
    "-nographic",
    "-display",
    "none",
    "-S",
)
RAM_SIZE = 256 * 1024 * 1024
#: The RAM backend's memfd carries the type's name, not the object's id.
RAM_MEMFD = "/memfd:memory-backend-memfd (deleted)"

#: What QEMU 10.0 sends for that guest (tests/codecs/vectors): (name, id),
#: newest first.  ROMs are named after their RAM blocks, RAM after its
#: backend.  11.1 sends the same entries in another order.
CPR_ENTRIES = [
    ("/rom@etc/acpi/rsdp", 0),
    ("/rom@etc/table-loader", 0),
    ("/rom@etc/acpi/tables", 0),
    ("pc.rom", 0),
    ("pc.bios", 0),
    ("ram0", 0),
]

#: Where a test writes a pattern into guest RAM (inside the 256 MiB), and its size.
PATTERN_ADDR = 0x200000
PATTERN_SIZE = 4096
#: The main stream of a 256 MiB guest whose RAM stays in its memfd is about
#: 110 KB; a stream this large would mean the RAM was copied.
MAX_MAIN_STREAM = 1024 * 1024


def cpr_machine(machine: str = "pc") -> tuple[str, ...]:
    """``-machine`` for the guest: ``aux-ram-share`` puts the ROMs in memfds too."""
    return ("-machine", f"{machine},aux-ram-share=on,memory-backend=ram0")


def unix_channel(kind: str, path: str) -> fdchannel.Channel:
    """A channel on a unix socket, built from its QAPI form."""
    addr = {"transport": "socket", "type": "unix", "path": path}
    return fdchannel.Channel.from_qapi({"channel-type": kind, "addr": addr})


@dataclass(frozen=True)
class Place:
    """A directory in a root's /tmp: ``host`` is our path to it, ``guest`` QEMU's."""

    root: Path
    host: Path

    @property
    def guest(self) -> PurePosixPath:
        return PurePosixPath("/") / self.host.relative_to(self.root)

    def channel(self, kind: str, name: str) -> fdchannel.Channel:
        """Our side's unix channel of ``kind`` (main or cpr) on socket ``name``."""
        return unix_channel(kind, str(self.host / name))

    def uri(self, name: str) -> str:
        """Our side's ``unix:`` URI of socket ``name``, for the command line."""
        return f"unix:{self.host / name}"

    def qapi(self, kind: str, name: str) -> JsonObject:
        """The same channel as QEMU spells and sees it."""
        return unix_channel(kind, str(self.guest / name)).to_qapi()


@dataclass
class ChrootQemu:
    """A QEMU started in a root; its QMP monitor connects to our listener."""

    name: str
    process: anyio.abc.Process
    listener: fdchannel.Listener
    log: Path
    qmp_client: QmpClient | None = None
    #: (major, minor) from QMP's greeting, once connected.
    version: tuple[int, int] = (0, 0)

    @property
    def qmp(self) -> QmpClient:
        assert self.qmp_client is not None, f"QEMU {self.name}: connect() first"
        return self.qmp_client

    async def connect(self, timeout: float = DEFAULT_TIMEOUT) -> QmpClient:
        """Accept QEMU's QMP connection and read its greeting, or say why it never came.

        A destination QEMU connects only after it has read its cpr state.
        """
        try:
            stream = await accept_monitor(self.listener, self.process, self.name, timeout)
        finally:
            await self.listener.aclose()
        self.qmp_client = QmpClient(stream, timeout=timeout)
        found = await self.qmp_client.handshake()
        self.version = (int(found["major"]), int(found["minor"]))
        assert self.version >= (10, 0), f"QEMU {found} has no cpr-transfer"
        return self.qmp_client

    async def quit(self) -> None:
        """Ask QEMU to quit and wait until it has exited with status 0."""
        await self.qmp.execute("quit")
        await self.exited(0)

    async def exited(self, status: int | None = None, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Wait (bounded) for QEMU to exit; check its status if ``status`` is given."""
        with _Deadline(timeout, f"QEMU {self.name} did not exit within {timeout:g} s"):
            code = await self.process.wait()
        assert status is None or code == status, f"QEMU {self.name} exited with {code}"
        return code


@asynccontextmanager
async def start_chroot_qemu(
    place: Place, name: str, *args: str, machine: str = "pc"
) -> AsyncIterator[ChrootQemu]:
    """Run ``chroot ROOT qemu-system-x86_64 CPR_GUEST_ARGS -machine ... ARGS``.

    QMP is not connected yet (``connect``).  The process is killed and
    reaped on the way out; if anything failed, QEMU's output goes to
    stderr, where pytest shows it with the failure.
    """
    log = place.host / f"{name}.log"
    qmp_socket = f"{name}-qmp.sock"
    command = [
        "chroot",
        str(place.root),
        "qemu-system-x86_64",
        "-name",
        name,
        *CPR_GUEST_ARGS,
        *cpr_machine(machine),
        # Without server=on QEMU is the client: no polling for its socket file.
        "-qmp",
        f"unix:{place.guest / qmp_socket}",
        *args,
    ]
    process, listener = await spawn_with_monitor(command, place.host / qmp_socket, log)
    vm = ChrootQemu(name, process, listener, log)
    try:
        yield vm
    except BaseException:
        await show_log(name, command, log)
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await listener.aclose()
            if vm.qmp_client is not None:
                await vm.qmp_client.aclose()
            # chroot exec'd QEMU: the pid and its process group are QEMU's.
            await _kill(process)


def check_cpr_state(state: fdchannel.FdState, *, ordered: bool) -> int:
    """QEMU's entries (in 10.0's order if ``ordered``), each a memfd; returns RAM's descriptor."""
    found = [(entry.name, entry.id) for entry in state.fds]
    assert sorted(found) == sorted(CPR_ENTRIES), found
    assert found == CPR_ENTRIES or not ordered, found
    for entry in state.fds:
        target = os.readlink(f"/proc/self/fd/{entry.fd}")
        assert target.startswith("/memfd:"), f"{entry.name} is {target}, not a memfd"
    ram = state.get("ram0", 0)
    assert os.readlink(f"/proc/self/fd/{ram}") == RAM_MEMFD
    assert os.fstat(ram).st_size == RAM_SIZE
    return ram


def write_guest_ram(pid: int, data: bytes, offset: int = PATTERN_ADDR) -> None:
    """Write into a running QEMU's RAM memfd, reached through /proc/PID/fd.

    Opening the link opens the memfd itself (a tmpfs file), not a copy.
    """
    fd_dir = Path(f"/proc/{pid}/fd")
    for link in fd_dir.iterdir():
        with contextlib.suppress(FileNotFoundError):
            if os.readlink(link) == RAM_MEMFD:
                ram = os.open(link, os.O_RDWR | os.O_CLOEXEC)
                try:
                    os.pwrite(ram, data, offset)
                finally:
                    os.close(ram)
                return
    raise QemuError(f"QEMU pid {pid} holds no {RAM_MEMFD}")


async def guest_memory(qmp: QmpClient, place: Place, name: str) -> bytes:
    """The pattern's page of guest RAM, as QEMU's ``pmemsave`` writes it out."""
    await qmp.execute(
        "pmemsave",
        {"val": PATTERN_ADDR, "size": PATTERN_SIZE, "filename": str(place.guest / name)},
    )
    return await anyio.Path(place.host / name).read_bytes()


async def start_cpr_transfer(
    qmp: QmpClient, place: Place, main: str = "main.sock", cpr: str = "cpr.sock"
) -> None:
    """Make the source migrate in mode cpr-transfer to sockets ``main`` and ``cpr``.

    QEMU connects cpr once, with no retry: the listener must be up.
    """
    await qmp.enable_migration_events()
    await qmp.execute("migrate-set-parameters", {"mode": "cpr-transfer"})
    channels = [place.qapi("main", main), place.qapi("cpr", cpr)]
    # Returns once the state is written and half-closed; main waits for the HUP.
    await qmp.execute("migrate", {"channels": channels})


async def start_incoming(qmp: QmpClient, place: Place, main: str) -> None:
    """Make a destination started with ``-incoming defer`` listen on ``main``.

    QEMU acks its cpr state (closes the cpr connection) once it listens.
    """
    await qmp.enable_migration_events()
    await qmp.execute("migrate-incoming", {"channels": [place.qapi("main", main)]})


#: A stream of either API: ``fdchannel``'s (async) or ``fdchannel.blocking``'s.
AnyStream = Stream | blocking.Stream


async def relay_stream(
    source: AnyStream, dest: AnyStream | None, limit: int = MAX_MAIN_STREAM
) -> bytes:
    """Read ``source`` to EOF, forwarding to ``dest`` if given; at most ``limit`` bytes.

    Either may be a ``fdchannel.blocking`` stream: each of its calls that
    may wait runs in a worker thread, bounded by ``DEFAULT_TIMEOUT``.
    """
    data = bytearray()
    while chunk := await _receive(source):
        data += chunk
        assert len(data) <= limit, "the main stream is too large: the guest RAM was copied"
        if dest is not None:
            await _send(dest, chunk)
    if isinstance(dest, blocking.Stream):
        dest.send_eof()  # shutdown(SHUT_WR): it never waits
    elif dest is not None:
        await dest.send_eof()
    return bytes(data)


async def _receive(stream: AnyStream) -> bytes:
    """The next bytes of ``stream``; ``b""`` at its end."""
    if isinstance(stream, blocking.Stream):
        return await anyio.to_thread.run_sync(stream.receive, DEFAULT_RECEIVE, DEFAULT_TIMEOUT)
    try:
        return await stream.receive()
    except anyio.EndOfStream:
        return b""


async def _send(stream: AnyStream, data: bytes) -> None:
    if isinstance(stream, blocking.Stream):
        await anyio.to_thread.run_sync(stream.send, data, DEFAULT_TIMEOUT)
    else:
        await stream.send(data)


# --------------------------------------------------------------------------
# The fdchannel command line as a child process beside QEMU.


@dataclass
class CliChild:
    """A running ``fdchannel`` command; its stderr is read on demand."""

    process: anyio.abc.Process
    log: Log

    async def listening(self) -> None:
        """Wait until the command says it listens (QEMU connects only once)."""
        if not await self.log.wait_for(re.compile(rb"listening on ")):
            raise QemuError(f"fdchannel exited before listening: {self.log.text()}")

    async def result(self, timeout: float = DEFAULT_TIMEOUT) -> JsonObject:
        """Wait (bounded) for the command to end with status 0; its ``--json`` document."""
        assert self.process.stdout is not None
        with _Deadline(timeout, f"fdchannel did not finish within {timeout:g} s"):
            out = bytearray()
            async for chunk in self.process.stdout:
                out += chunk
            code = await self.process.wait()
            await self.log.read_rest()
        assert code == 0, f"fdchannel exited with {code}: {self.log.text()}"
        document: JsonObject = json.loads(out)
        return document


@asynccontextmanager
async def fdchannel_cli(*args: str) -> AsyncIterator[CliChild]:
    """Run ``python -m fdchannel ARGS``; killed and reaped on the way out."""
    process = await anyio.open_process(
        [sys.executable, "-m", "fdchannel", *args], stdin=subprocess.DEVNULL
    )
    async with watched(process, f"fdchannel {args[0]}") as log:
        yield CliChild(process, log)
