"""Capture the cpr channel of a real QEMU cpr-transfer, byte for byte.

A QEMU from a Debian 13 root (``qemu_root.py``) migrates in mode
cpr-transfer to two unix sockets of ours.  A plain receiver (the standard
library only, no fdchannel) records every ``recvmsg`` of the cpr channel:
its bytes and the descriptors that came with it.  It then acks the way a
new QEMU does (closes cpr), drains the main channel and lets the migration
complete.  Root only (``chroot``, ``mount --bind``)::

    python tests/interop/capture_cpr.py --version 11 tests/codecs/vectors/qemu-11.1-cpr.bin
    python tests/interop/capture_cpr.py --version 10 tests/codecs/vectors/qemu-10.0-cpr.bin

OUT gets the cpr channel's bytes only; stdout gets the QEMU version, and
one line per message with the descriptors' ``/proc/self/fd`` targets.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

if not __package__:  # run as a script: make the ``tests`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.interop.qemu_root import FLAVOURS, bind_mounts, installed_qemu, is_complete

__all__ = ["GUEST_ARGS", "RUNNING_GUEST_ARGS", "Capture", "Message", "capture", "main"]

#: A guest whose RAM is a shared memfd, as cpr needs it (``aux-ram-share``
#: puts the ROMs in memfds too); TCG keeps it off /dev/kvm.
RUNNING_GUEST_ARGS: tuple[str, ...] = (
    "-object",
    "memory-backend-memfd,id=ram0,size=256M,share=on",
    "-machine",
    "pc,aux-ram-share=on,memory-backend=ram0",
    "-m",
    "256",
    "-accel",
    "tcg",
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
)
#: The same guest, paused: all a capture of the cpr channel needs.
GUEST_ARGS: tuple[str, ...] = (*RUNNING_GUEST_ARGS, "-S")
#: Seconds any one step (a QMP answer, a connection, the whole cpr read) may take.
TIMEOUT = 30.0
#: One recvmsg: as much as a QEMU state could hold in one message, and
#: SCM_MAX_FD descriptors (the kernel's most per message).
READ_SIZE = 65536
MAX_FDS = 253

JsonObject = dict[str, Any]


@dataclass(frozen=True)
class Message:
    """One recvmsg of the cpr channel: its bytes and where its descriptors pointed."""

    data: bytes
    fds: tuple[str, ...]


@dataclass
class Capture:
    """What one cpr-transfer showed."""

    qemu_version: str = ""
    package: str = ""
    messages: list[Message] = field(default_factory=list)
    main_bytes: int = 0
    status: str = ""

    @property
    def stream(self) -> bytes:
        return b"".join(message.data for message in self.messages)


class Qmp:
    """A blocking QMP client on one accepted connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file = sock.makefile("rb")
        self.events: list[JsonObject] = []
        self.greeting = self._read()

    def _read(self) -> JsonObject:
        line = self.file.readline()
        if not line:
            raise RuntimeError("QEMU closed its QMP connection")
        message: JsonObject = json.loads(line)
        return message

    def execute(self, command: str, arguments: JsonObject | None = None) -> Any:
        """Run a command; its ``return``, or RuntimeError with QEMU's error."""
        request: JsonObject = {"execute": command}
        if arguments is not None:
            request["arguments"] = arguments
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
            elif "error" in reply:
                raise RuntimeError(f"QMP {command}: {reply['error']}")
            else:
                return reply["return"]

    def wait_migration(self) -> str:
        """The final migration state, from the MIGRATION events."""
        final = {"completed", "failed", "cancelled"}
        while True:
            for event in self.events:
                status = str(event.get("data", {}).get("status", ""))
                if event["event"] == "MIGRATION" and status in final:
                    return status
            self.events.clear()
            self.events.append(self._read())

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def listener(path: Path) -> socket.socket:
    """A unix stream listener on ``path`` that accepts within TIMEOUT."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(1)
    sock.settimeout(TIMEOUT)
    return sock


def describe(fd: int) -> str:
    """What a received descriptor points to."""
    return os.readlink(f"/proc/self/fd/{fd}")


def receive(cpr: socket.socket, main: socket.socket, result: Capture) -> None:
    """Record the cpr channel to EOF, ack by closing it, then drain main."""
    conn, _ = cpr.accept()
    with conn:
        conn.settimeout(TIMEOUT)
        while True:
            data, fds, _flags, _addr = socket.recv_fds(
                conn, READ_SIZE, MAX_FDS, socket.MSG_CMSG_CLOEXEC
            )
            try:
                if not data and not fds:
                    break  # EOF: QEMU half-closed after the state
                result.messages.append(Message(data, tuple(describe(fd) for fd in fds)))
            finally:
                for fd in fds:
                    os.close(fd)
    # Closing cpr was the ack: QEMU now connects the main channel.
    stream, _ = main.accept()
    with stream:
        stream.settimeout(TIMEOUT)
        while chunk := stream.recv(READ_SIZE):
            result.main_bytes += len(chunk)


@contextlib.contextmanager
def running_qemu(root: Path, command: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``chroot ROOT`` QEMU, killed and reaped on the way out."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["chroot", str(root), *command],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def capture(root: Path) -> Capture:
    """Run one cpr-transfer from a QEMU in ``root`` to our receiver."""
    result = Capture(package=f"qemu-system-x86 {installed_qemu(root)}")
    with (
        bind_mounts(root),
        tempfile.TemporaryDirectory(prefix="capture-", dir=root / "tmp") as tmp,
    ):
        host = Path(tmp)
        guest = PurePosixPath("/") / host.relative_to(root)
        qmp_listener = listener(host / "qmp.sock")
        cpr_listener = listener(host / "cpr.sock")
        main_listener = listener(host / "main.sock")
        command = [
            "qemu-system-x86_64",
            "-name",
            "src",
            *GUEST_ARGS,
            "-qmp",
            f"unix:{guest / 'qmp.sock'}",  # QEMU is the client: no polling for a socket file
        ]
        try:
            with running_qemu(root, command, host / "qemu.log") as process:
                try:
                    migrate(qmp_listener, cpr_listener, main_listener, guest, result)
                except BaseException:
                    sys.stderr.write((host / "qemu.log").read_text(errors="replace"))
                    raise
                process.wait(timeout=TIMEOUT)
        finally:
            for sock in (qmp_listener, cpr_listener, main_listener):
                sock.close()
    return result


def migrate(
    qmp_listener: socket.socket,
    cpr: socket.socket,
    main: socket.socket,
    guest: PurePosixPath,
    result: Capture,
) -> None:
    """The QMP side: cpr-transfer to our two sockets, then quit."""
    conn, _ = qmp_listener.accept()
    conn.settimeout(TIMEOUT)
    qmp = Qmp(conn)
    try:
        qmp.execute("qmp_capabilities")
        version = qmp.execute("query-version")
        number = version["qemu"]
        result.qemu_version = f"{number['major']}.{number['minor']}.{number['micro']}"
        result.package = str(version["package"]).strip() or result.package
        qmp.execute(
            "migrate-set-capabilities", {"capabilities": [{"capability": "events", "state": True}]}
        )
        qmp.execute("migrate-set-parameters", {"mode": "cpr-transfer"})
        receiver = threading.Thread(target=receive, args=(cpr, main, result))
        receiver.start()
        channels = [
            unix_channel("main", guest / "main.sock"),
            unix_channel("cpr", guest / "cpr.sock"),
        ]
        qmp.execute("migrate", {"channels": channels})
        receiver.join(TIMEOUT)
        if receiver.is_alive():
            raise RuntimeError(f"the cpr and main channels were not done within {TIMEOUT:g} s")
        result.status = qmp.wait_migration()
        qmp.execute("quit")
    finally:
        qmp.close()


def unix_channel(kind: str, path: PurePosixPath) -> JsonObject:
    """A migration channel on a unix socket, in QAPI's form."""
    return {
        "channel-type": kind,
        "addr": {"transport": "socket", "type": "unix", "path": str(path)},
    }


def report(result: Capture) -> str:
    """The capture as text: version, then one line per message."""
    lines = [
        f"QEMU {result.qemu_version} ({result.package})",
        f"cpr channel: {len(result.stream)} bytes in {len(result.messages)} message(s); "
        f"main channel: {result.main_bytes} bytes; migration {result.status}",
    ]
    for number, message in enumerate(result.messages, 1):
        fds = ", ".join(message.fds) or "-"
        lines.append(f"{number:3}  {message.data.hex()}  [{len(message.fds)} fd: {fds}]")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: capture once, write the bytes, print the messages."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", choices=sorted(FLAVOURS), default="11")
    parser.add_argument("--root", type=Path, help="default: .qemuVERSION/root")
    parser.add_argument("out", type=Path, help="file for the cpr channel's bytes")
    args = parser.parse_args(argv)
    root: Path = (args.root or FLAVOURS[args.version].default_root).absolute()
    if not is_complete(root, args.version):
        print(f"{root} is not a QEMU {args.version} root: qemu_root.py builds one", file=sys.stderr)
        return 1
    result = capture(root)
    args.out.write_bytes(result.stream)
    print(report(result))
    return 0 if result.status == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
