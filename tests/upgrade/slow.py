"""slow_peer.py's generations, and its clients, run from a test (the drain and
probation tests)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

from bench.upgrades import Generations

from .harness import TIMEOUT

SLOW = Path(__file__).with_name("slow_peer.py")
BACKENDS = ["asyncio", "uvloop", "trio"]


class Request:
    """One request of ``ms`` milliseconds on a connection of its own, in a thread (or
    ``!TEXT``: the generation writes TEXT on its stderr)."""

    def __init__(self, path: Path, ms: int | str) -> None:
        self.ms = ms
        self.answer: list[bytes] = []
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(str(path))
        self.sock.sendall(f"{ms}\n".encode())
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        data = b""
        try:
            while chunk := self.sock.recv(64):
                data += chunk
        except OSError:
            pass  # a reset: cut, as an end of file is
        self.answer.append(data)

    def result(self) -> bytes:
        self.thread.join(TIMEOUT)
        self.sock.close()
        assert self.answer, "no end to the request"
        return self.answer[0]


class SlowServer(Generations):
    """slow_peer.py's generations, listening on ``app.sock`` in ``tmp``."""

    def __init__(self, tmp: Path, backend: str, *args: str) -> None:
        super().__init__(SLOW, tmp, "--backend", backend, "--listen", f"unix:{tmp}/app.sock", *args)

    def in_flight(self, ms: int, generation: int = 0) -> None:
        """Wait until ``generation`` has read the request of ``ms`` milliseconds."""

        def found() -> dict[str, object] | None:
            for event in self.events:
                if event["event"] == "request" and (event["generation"], event["ms"]) == (
                    generation,
                    ms,
                ):
                    return event
            return None

        self._wait_for(found, f"the request of {ms} ms", TIMEOUT)


def fdchannel_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fdchannel", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
    )
