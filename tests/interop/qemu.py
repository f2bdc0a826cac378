"""Start and stop real QEMU processes and talk QMP to them over fdchannel streams.

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
import shutil
import signal
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import anyio.abc

import fdchannel
from fdchannel import Stream

__all__ = [
    "GUEST_ARGS",
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
