"""Running examples/upgrade_handover.py's generations and clients against them, from a test.

The generations are real processes; each one's events arrive as JSON lines
on the one stdout pipe they all share.  Clients are threads with plain
sockets: the server's event loop, not the test's, is what is under test.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

SERVER = str(Path(__file__).parents[2] / "examples" / "upgrade_handover.py")
ANSWER = struct.Struct(">II")
TIMEOUT = 30.0


def wait_gone(pid: int, timeout: float = TIMEOUT) -> bool:
    """Wait for any process (ours or not) to exit: its pidfd turns readable."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


class Server:
    """Generation 0 started by the test, and every generation after it."""

    def __init__(
        self,
        tmp: Path,
        backend: str,
        *args: str,
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> None:
        self.tmp = tmp
        self.pidfile = tmp / "server.pid"
        self.control = tmp / "control.sock"
        command = [
            *prefix,
            sys.executable,
            SERVER,
            "--backend",
            backend,
            "--pidfile",
            str(self.pidfile),
            "--control",
            str(self.control),
            *args,
        ]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.backlog: list[dict[str, Any]] = []
        self.pids: set[int] = {self.process.pid}
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.events.put(json.loads(line))

    def expect(self, event: str, timeout: float = TIMEOUT, **match: object) -> dict[str, Any]:
        """The first event named ``event`` (with ``match``'s fields) not taken yet;
        events of other kinds are kept for later (generations run concurrently)."""
        for message in self.backlog:
            if message["event"] == event and match.items() <= message.items():
                self.backlog.remove(message)
                return message
        deadline = time.monotonic() + timeout
        while True:
            message = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            self.pids.add(message["pid"])
            if message["event"] == event and match.items() <= message.items():
                return message
            self.backlog.append(message)

    def serving(self) -> int:
        return int(self.pidfile.read_text())

    def close(self) -> None:
        """Kill every generation still running and wait for each to be gone."""
        with contextlib.suppress(OSError, ValueError):
            self.pids.add(self.serving())  # one the test never heard from
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(TIMEOUT)
        for pid in self.pids:
            assert wait_gone(pid), f"pid {pid} outlived SIGKILL"
        assert self.process.stdout is not None
        self.process.stdout.close()
        self.reader.join(TIMEOUT)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Clients:
    """Keep-alive connections plus a new connection now and then, requesting
    without pause from a thread; every failure is recorded."""

    def __init__(self, address: Any, family: int = socket.AF_INET, connections: int = 4) -> None:
        self.address = address
        self.family = family
        self.count = connections
        self.errors: list[str] = []
        self.requests = 0
        self.answered_by: list[set[int]] = [set() for _ in range(connections)]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.rounds = 0
        self.progress = threading.Condition()

    def _connect(self) -> socket.socket:
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT)
        sock.connect(self.address)
        return sock

    def _ask(self, sock: socket.socket) -> int:
        sock.sendall(b"+")
        data = b""
        while len(data) < ANSWER.size:
            chunk = sock.recv(ANSWER.size - len(data))
            if not chunk:
                raise ConnectionError("the server closed the connection")
            data += chunk
        self.requests += 1
        pid: int = ANSWER.unpack(data)[0]
        return pid

    def _run(self) -> None:
        socks: list[socket.socket] = []
        try:
            socks = [self._connect() for _ in range(self.count)]
            rounds = 0
            while not self.stop.is_set():
                for i, sock in enumerate(socks):
                    try:
                        self.answered_by[i].add(self._ask(sock))
                    except OSError as exc:
                        self.errors.append(f"connection {i}: {exc!r}")
                rounds += 1
                with self.progress:
                    self.rounds = rounds
                    self.progress.notify_all()
                if rounds % 10 == 0:
                    try:
                        with self._connect() as fresh:
                            self._ask(fresh)
                    except OSError as exc:
                        self.errors.append(f"new connection: {exc!r}")
                self.stop.wait(0.002)  # pacing, not synchronisation
        except OSError as exc:
            self.errors.append(f"setup: {exc!r}")
        finally:
            for sock in socks:
                sock.close()

    @contextlib.contextmanager
    def running(self) -> Iterator[Clients]:
        self.thread.start()
        try:
            yield self
        finally:
            self.stop.set()
            self.thread.join(TIMEOUT)

    def wait_rounds(self, count: int = 2) -> None:
        """Wait until every connection has made ``count`` more requests."""
        with self.progress:
            target = self.rounds + count
            assert self.progress.wait_for(lambda: self.rounds >= target, TIMEOUT)

    def ask_once(self) -> int:
        """One request on a new connection: the pid that answered."""
        with self._connect() as sock:
            return self._ask(sock)
