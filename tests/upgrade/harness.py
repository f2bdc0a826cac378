"""Running examples/upgrade_handover.py's generations and clients against them, from a test.

The generations are real processes; each one's events arrive as JSON lines
on the one stdout pipe they all share.  Clients are threads with plain
sockets: the server's event loop, not the test's, is what is under test.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.upgrades import SCRIPTS, Generations

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


class Server(Generations):
    """examples/upgrade_handover.py's generations, run as the benchmarks run them, with
    the tests' way of waiting: each event taken once, in order, those of other
    kinds kept for later."""

    def __init__(
        self,
        tmp: Path,
        backend: str,
        *args: str,
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> None:
        super().__init__(
            SCRIPTS["handover"], tmp, "--backend", backend, *args, env=env, prefix=prefix
        )
        self._taken: set[int] = set()

    def expect(self, event: str, timeout: float = TIMEOUT, **match: object) -> dict[str, Any]:
        """The first event named ``event`` (with ``match``'s fields) not taken yet."""

        def found() -> dict[str, Any] | None:
            for message in self.events:
                if (
                    id(message) not in self._taken
                    and message["event"] == event
                    and match.items() <= message.items()
                ):
                    return message
            return None

        message = self._wait_for(found, f"{event!r} event {match or ''}", timeout)
        self._taken.add(id(message))  # only this (the test's) thread takes events
        return message

    def close(self, timeout: float = 10.0) -> dict[int, str]:
        """Stop every generation, and check that each one is gone."""
        pids = self.pids()
        signalled = super().close(timeout)
        for pid in pids:
            assert wait_gone(pid), f"pid {pid} outlived SIGKILL"
        return signalled


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
