"""Running an upgrade example generation after generation: the demo, benchmarks and tests.

The examples (examples/upgrade_anyio.py, upgrade_uvicorn.py,
upgrade_hypercorn.py, upgrade_aiohttp.py, upgrade_handover.py) run under
``fdchannel.upgrade.Upgrader``.  ``Generations`` starts the first
generation; each later one is started by the generation before it,
inherits its stdout (a pipe read here) and writes JSON events on it, one
line each::

    {"event": "ready", "pid": ..., "generation": ..., "url": "http://127.0.0.1:PORT/", ...}
    {"event": "exit", "pid": ..., "generation": ..., "reason": "replaced-by-PID", ...}

(upgrade_handover.py says more: ``serving``, ``paused``, ``memory``,
``holding``, ``closed``; see its docstring.)  A pidfd is opened for each
generation at its first event, so signals never reach a recycled pid and
its exit can be waited for although it is not our child.  ``close()``
ends every generation still running (SIGTERM, then SIGKILL) and waits
for each, with timeouts::

    with Generations.http("uvicorn", "uvloop", directory) as servers:
        url = servers.ready(0)["url"]
        request_upgrade(servers.control, timeout=30)
        ...
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self

from fdchannel.upgrade.pidfile import read_pid

__all__ = ["BACKENDS", "EXAMPLES", "SCRIPTS", "Event", "Generations"]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
#: The example server for each name.
SCRIPTS = {
    "anyio": EXAMPLES / "upgrade_anyio.py",
    "uvicorn": EXAMPLES / "upgrade_uvicorn.py",
    "hypercorn": EXAMPLES / "upgrade_hypercorn.py",
    "aiohttp": EXAMPLES / "upgrade_aiohttp.py",
    "handover": EXAMPLES / "upgrade_handover.py",
}
#: The event loops each HTTP example runs on.
BACKENDS = {
    "anyio": ("asyncio", "uvloop", "trio"),
    "uvicorn": ("asyncio", "uvloop"),
    "hypercorn": ("asyncio", "uvloop", "trio"),
    "aiohttp": ("asyncio", "uvloop"),
}
#: One event: ``event`` (its kind), ``pid``, ``generation`` and the kind's fields.
Event = dict[str, Any]


def parse_event(line: str) -> Event | None:
    """The event in a line, or None for any other output (logs, tracebacks)."""
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
        return None
    if not isinstance(event.get("pid"), int):
        return None
    return event


class Generations:
    """Generation 0 of an example server, started here, and every generation after it.

    ``args`` go on the example's command line after ``--pidfile`` and
    ``--control``; ``prefix`` before the interpreter (a program that starts
    it, such as ``systemd-socket-activate``); ``env`` adds to the environment.
    """

    def __init__(
        self,
        script: Path,
        directory: Path,
        *args: str,
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> None:
        self.pidfile = directory / "server.pid"
        self.control = directory / "control.sock"
        self.command = [
            *prefix,
            sys.executable,
            str(script),
            "--pidfile",
            str(self.pidfile),
            "--control",
            str(self.control),
            *args,
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
            env={**os.environ, **(env or {})},
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

    @classmethod
    def http(
        cls,
        server: str,
        backend: str,
        directory: Path,
        *,
        listen: str = "tcp:127.0.0.1:0",
        drain_timeout: float = 10.0,
        options: tuple[str, ...] = (),
    ) -> Generations:
        """An HTTP example (``anyio``, ``uvicorn``, ``hypercorn``, ``aiohttp``) on ``backend``;
        ``options`` go after the shared ones (``--die-at STEP --die-once FLAG``, say)."""
        if backend not in BACKENDS[server]:
            raise ValueError(f"{server} runs on {', '.join(BACKENDS[server])}, not {backend}")
        return cls(
            SCRIPTS[server],
            directory,
            "--backend",
            backend,
            "--listen",
            listen,
            "--drain-timeout",
            str(drain_timeout),
            *options,
        )

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
            if event is not None:
                self._watch(event["pid"])
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

    def wait_for(self, kind: str, generation: int, timeout: float = 30.0) -> Event:
        """The event ``kind`` of ``generation``, waiting up to ``timeout`` seconds for it."""

        def found() -> Event | None:
            return next(
                (
                    e
                    for e in self.events
                    if e["event"] == kind and e.get("generation") == generation
                ),
                None,
            )

        return self._wait_for(found, f"{kind!r} event from generation {generation}", timeout)

    def said(self, text: str, timeout: float = 30.0) -> str:
        """The first line a generation wrote (stdout or stderr) holding ``text``,
        waiting up to ``timeout`` seconds for it."""

        def found() -> Event | None:
            return next(({"line": line} for line in self.output if text in line), None)

        return str(self._wait_for(found, f"a line saying {text!r}", timeout)["line"])

    def ready(self, generation: int, timeout: float = 30.0) -> Event:
        """The ``ready`` event of ``generation``, waiting up to ``timeout`` seconds for it."""
        return self.wait_for("ready", generation, timeout)

    def exits(self) -> list[Event]:
        """The ``exit`` lines so far."""
        with self._changed:
            return [e for e in self.events if e["event"] == "exit"]

    def tail(self, lines: int = 30) -> str:
        """The generations' last lines of output, for an error message."""
        with self._changed:
            last = self.output[-lines:]
        return "".join(f"\n  | {line}" for line in last) if last else ""

    def serving(self) -> int:
        """The pid the pidfile names: the generation serving now."""
        return read_pid(self.pidfile)

    # ------------------------------------------------------------------
    # Their processes.

    def pids(self) -> list[int]:
        """Every generation seen so far (generation 0 first)."""
        with self._changed:
            return list(self._pidfds)

    def running(self, pids: list[int] | None = None) -> list[int]:
        """Those of ``pids`` (default: every generation) that have not exited.

        Only generations that have said something are known: wait for the
        last one's ``ready`` (``ready(n)``) first.  KeyError for a pid never seen.
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
        with contextlib.suppress(OSError, ValueError):
            self._watch(read_pid(self.pidfile))  # serving, maybe before any event
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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
