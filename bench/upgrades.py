"""Running an upgrade example generation after generation, for the upgrade demo and tests.

The examples (examples/upgrade_anyio.py, upgrade_uvicorn.py,
upgrade_aiohttp.py) run under ``fdchannel.upgrade.Upgrader``.  ``Generations``
starts the first generation; each later one is started by the generation
before it, inherits its stdout (a pipe read here) and says on it::

    ready pid=... generation=... server=... backend=... url=http://127.0.0.1:PORT/
    exit pid=... generation=... reason=replaced-by-PID|SIGTERM requests=... closed_idle=...

A pidfd is opened for each generation as soon as its ``ready`` line
arrives, so signals never reach a recycled pid and its exit can be waited
for although it is not our child.  ``close()`` ends every generation still
running (SIGTERM, then SIGKILL) and waits for each, with timeouts::

    with Generations("uvicorn", "uvloop", directory) as servers:
        url = servers.ready(0).url
        request_upgrade(servers.control, timeout=30)
        ...
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BACKENDS", "EXAMPLES", "SCRIPTS", "Event", "Generations"]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
#: The example server for each name.
SCRIPTS = {
    "anyio": EXAMPLES / "upgrade_anyio.py",
    "uvicorn": EXAMPLES / "upgrade_uvicorn.py",
    "aiohttp": EXAMPLES / "upgrade_aiohttp.py",
}
#: The event loops each one runs on.
BACKENDS = {
    "anyio": ("asyncio", "uvloop", "trio"),
    "uvicorn": ("asyncio", "uvloop"),
    "aiohttp": ("asyncio", "uvloop"),
}


@dataclass(frozen=True)
class Event:
    """One ``ready`` or ``exit`` line of a generation."""

    kind: str
    pid: int
    fields: dict[str, str]

    @property
    def generation(self) -> int:
        return int(self.fields["generation"])

    @property
    def url(self) -> str:
        return self.fields["url"]


def parse_event(line: str) -> Event | None:
    """The event in a line, or None for any other output (logs, tracebacks)."""
    kind, _, rest = line.strip().partition(" ")
    if kind not in ("ready", "exit"):
        return None
    fields = dict(word.partition("=")[::2] for word in rest.split())
    if not fields.get("pid", "").isdigit() or not fields.get("generation", "").isdigit():
        return None
    return Event(kind, int(fields.pop("pid")), fields)


class Generations:
    """Generation 0 of an example server, started here, and every generation after it.

    ``options`` go on the example's command line after the shared ones
    (``--die-at STEP --die-once FLAG``, say).
    """

    def __init__(
        self,
        server: str,
        backend: str,
        directory: Path,
        *,
        listen: str = "tcp:127.0.0.1:0",
        drain_timeout: float = 10.0,
        options: tuple[str, ...] = (),
    ) -> None:
        if backend not in BACKENDS[server]:
            raise ValueError(f"{server} runs on {', '.join(BACKENDS[server])}, not {backend}")
        self.server = server
        self.backend = backend
        self.pidfile = directory / "server.pid"
        self.control = directory / "control.sock"
        self.command = [
            sys.executable,
            str(SCRIPTS[server]),
            "--backend",
            backend,
            "--listen",
            listen,
            "--pidfile",
            str(self.pidfile),
            "--control",
            str(self.control),
            "--drain-timeout",
            str(drain_timeout),
            *options,
        ]
        #: Everything the generations wrote (stdout and stderr), line by line.
        self.output: list[str] = []
        self.events: list[Event] = []
        self._changed = threading.Condition()
        self._pidfds: dict[int, int] = {}  # pid -> pidfd, for every generation seen
        self._signalled: dict[int, str] = {}  # pid -> the last signal close() sent it
        self._closed = False
        self.process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        try:
            self._watch(self.process.pid)
        except BaseException:
            self.process.kill()
            self.process.wait()
            assert self.process.stdout is not None
            self.process.stdout.close()
            raise
        self._reader = threading.Thread(target=self._read, name="generations", daemon=True)
        self._reader.start()

    # ------------------------------------------------------------------
    # What the generations say.

    def _watch(self, pid: int) -> None:
        with self._changed:
            if pid not in self._pidfds:
                try:
                    self._pidfds[pid] = os.pidfd_open(pid)
                except ProcessLookupError:
                    self._pidfds[pid] = -1  # gone already

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            event = parse_event(line)
            if event is not None and event.kind == "ready":
                self._watch(event.pid)
            with self._changed:
                self.output.append(line.rstrip("\n"))
                if event is not None:
                    self.events.append(event)
                self._changed.notify_all()

    def _wait_for(self, found: Callable[[], Event | None], what: str, timeout: float) -> Event:
        with self._changed:
            self._changed.wait_for(lambda: found() is not None, timeout)
            event = found()
        if event is None:
            raise TimeoutError(f"no {what} within {timeout:g} s{self.tail()}")
        return event

    def ready(self, generation: int, timeout: float = 30.0) -> Event:
        """The ``ready`` line of ``generation``, waiting up to ``timeout`` seconds for it."""

        def found() -> Event | None:
            return next(
                (e for e in self.events if e.kind == "ready" and e.generation == generation), None
            )

        return self._wait_for(found, f"ready line from generation {generation}", timeout)

    def exits(self) -> list[Event]:
        """The ``exit`` lines so far."""
        with self._changed:
            return [e for e in self.events if e.kind == "exit"]

    def tail(self, lines: int = 30) -> str:
        """The generations' last lines of output, for an error message."""
        with self._changed:
            last = self.output[-lines:]
        return "".join(f"\n  | {line}" for line in last) if last else ""

    def serving(self) -> int:
        """The pid the pidfile names: the generation serving now."""
        return int(self.pidfile.read_text())

    # ------------------------------------------------------------------
    # Their processes.

    def pids(self) -> list[int]:
        """Every generation seen so far (generation 0 first)."""
        with self._changed:
            return list(self._pidfds)

    def running(self, pids: list[int] | None = None) -> list[int]:
        """Those of ``pids`` (default: every generation) that have not exited.

        Only generations whose ``ready`` line has been read are known: wait for
        the last one's (``ready(n)``) first.  KeyError for a pid never seen.
        """
        with self._changed:
            fds = {pid: self._pidfds[pid] for pid in (self._pidfds if pids is None else pids)}
        live = [fd for fd in fds.values() if fd >= 0]
        gone = set(select.select(live, [], [], 0)[0]) if live else set()
        return [pid for pid, fd in fds.items() if fd >= 0 and fd not in gone]

    def wait_exited(self, pids: list[int] | None = None, timeout: float = 30.0) -> list[int]:
        """Wait up to ``timeout`` for ``pids`` (default: all) to exit; those still running."""
        deadline = time.monotonic() + timeout
        while True:
            left = self.running(pids)
            remaining = deadline - time.monotonic()
            if not left or remaining <= 0:
                return left
            with self._changed:
                fds = [self._pidfds[pid] for pid in left]
            select.select(fds, [], [], remaining)

    def _signal(self, pids: list[int], signum: signal.Signals) -> None:
        for pid in pids:
            with self._changed:
                fd = self._pidfds[pid]
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signum)
            self._signalled[pid] = signum.name

    def close(self, timeout: float = 15.0) -> dict[int, str]:
        """End every generation: SIGTERM (they drain and exit), SIGKILL after ``timeout``.

        Returns the pids signalled and the last signal each needed.  Raises
        RuntimeError if one outlives SIGKILL or the output pipe stays open.
        Closing again does nothing.
        """
        if self._closed:
            return dict(self._signalled)
        self._closed = True
        try:
            self._signal(self.running(), signal.SIGTERM)
            left = self.wait_exited(timeout=timeout)
            if left:
                self._signal(left, signal.SIGKILL)
                left = self.wait_exited(left, timeout=timeout)
            if left:
                raise RuntimeError(f"pids {left} outlived SIGKILL")
        finally:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)  # generation 0 is our child: reap it
            if self.process.returncode is None:
                self.process.kill()
                self.process.wait()
            # The pipe ends once nothing holds it (a generation that never said "ready"
            # may, until its parent's exit makes it give up).
            self._reader.join(timeout)
            reading = self._reader.is_alive()
            with self._changed:
                for fd in self._pidfds.values():
                    if fd >= 0:
                        os.close(fd)
                self._pidfds = {pid: -1 for pid in self._pidfds}
            if not reading:
                assert self.process.stdout is not None
                self.process.stdout.close()
        if reading:
            raise RuntimeError(f"something still holds the servers' stdout{self.tail()}")
        return dict(self._signalled)

    def __enter__(self) -> Generations:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
