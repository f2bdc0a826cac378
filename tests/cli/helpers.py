"""Running the real command line as a child process, always reaped."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

#: Every wait on a child is bounded by this many seconds.
DEADLINE = 20.0


def cli(*args: str) -> list[str]:
    """argv running ``fdchannel ARGS`` with this interpreter."""
    return [sys.executable, "-m", "fdchannel", *args]


@dataclass(frozen=True)
class Done:
    """A finished child: exit status and what it printed."""

    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def error_line(self) -> str:
        """The single stderr line an error must be (asserted here)."""
        lines = self.stderr.splitlines()
        assert len(lines) == 1, f"expected one line on stderr, got: {self.stderr!r}"
        assert "Traceback" not in self.stderr
        return lines[0]


def run(args: Sequence[str], *, timeout: float = DEADLINE, **kwargs: Any) -> Done:
    """Run to completion (killed after ``timeout``)."""
    done = subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    return Done(done.returncode, done.stdout, done.stderr)


class Child:
    """A child in the background whose stderr can be awaited line by line.

    Leaving the ``with`` block kills and reaps it if it is still running and
    closes its pipes, whatever happened.
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        pass_fds: Iterable[int] = (),
        env: dict[str, str] | None = None,
        stdin: int | None = subprocess.DEVNULL,
    ) -> None:
        self.args = list(args)
        self.popen = subprocess.Popen(
            self.args,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=tuple(pass_fds),
            env=env,
            bufsize=0,
        )
        # Per stream: complete lines read so far, the first one wait_for has
        # not looked at, and the start of the next line.
        self._lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._next = {"stdout": 0, "stderr": 0}
        self._partial = {"stdout": b"", "stderr": b""}

    def wait_for(self, needle: str, timeout: float = DEADLINE, stream: str = "stderr") -> str:
        """Return the first new line of ``stream`` containing ``needle``."""
        pipe = self.popen.stderr if stream == "stderr" else self.popen.stdout
        assert pipe is not None
        lines = self._lines[stream]
        deadline = time.monotonic() + timeout
        while True:
            while self._next[stream] < len(lines):
                line = lines[self._next[stream]]
                self._next[stream] += 1
                if needle in line:
                    return line
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{needle!r} not on {stream} in {timeout} s: {lines}")
            ready, _, _ = select.select([pipe.fileno()], [], [], left)
            if not ready:
                continue
            chunk = os.read(pipe.fileno(), 65536)
            if not chunk:
                status = self.popen.wait(DEADLINE)
                raise AssertionError(f"{needle!r} not on {stream} (exit {status}): {lines}")
            *complete, self._partial[stream] = (self._partial[stream] + chunk).split(b"\n")
            lines += [line.decode(errors="replace") for line in complete]

    def _seen(self, stream: str, rest: bytes) -> str:
        read = "".join(line + "\n" for line in self._lines[stream])
        return read + (self._partial[stream] + rest).decode(errors="replace")

    def finish(self, timeout: float = DEADLINE) -> Done:
        """Wait for the child to exit by itself and collect its output."""
        try:
            out, err = self.popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        return Done(self.popen.returncode, self._seen("stdout", out), self._seen("stderr", err))

    def signal(self, signum: int = signal.SIGTERM) -> Done:
        """Send ``signum`` and collect the child's output."""
        self.popen.send_signal(signum)
        return self.finish()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(DEADLINE)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()
        for pipe in (self.popen.stdout, self.popen.stderr):
            if pipe is not None:
                pipe.close()


def unix_listening(d: Path, stack: contextlib.ExitStack) -> tuple[str, list[int]]:
    """A unix socket listening at ``d``/live.sock until ``stack`` closes: its URI, no fds."""
    sock = stack.enter_context(socket.socket(socket.AF_UNIX))
    sock.bind(str(d / "live.sock"))
    sock.listen()
    return f"unix:{d}/live.sock", []
