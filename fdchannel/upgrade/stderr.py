"""A new generation's stderr until its upgrade is settled: relayed, its last lines kept.

A new generation starts with a pipe as its stderr.  The old generation
relays what arrives to its own stderr, where the service's logs go, and
keeps the last lines: if the new generation exits before ``ready()`` (an
ImportError, a bad configuration) or during its probation, they say why.
The relay is a thread, so the new generation never waits on the old one's
event loop; the pipe is enlarged (1 MiB where the system allows) for the
moments the thread is not scheduled.

Once the upgrade is settled (at the commit, or at the end of a probation)
the new generation puts its own stderr back (the old generation's,
inherited as another descriptor) and relays the pipe itself, in a thread,
until nothing holds it any more: processes it started meanwhile (workers
forked before it was settled) inherited the pipe as their stderr, and would
get EPIPE once the old generation exits.

The lines kept are for a person and a one-line reason: control characters
and bytes that are no UTF-8 are escaped (``text.printable``).
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import select
import threading
from collections.abc import Sequence

from ..text import printable

__all__ = ["Pipe", "Relay", "Tail", "last_words"]

#: Lines kept, and the longest kept of each (the rest is cut).
LINES = 10
WIDTH = 300
#: The pipe's size asked for (the default is 64 KiB; /proc/sys/fs/pipe-max-size bounds it).
PIPE_SIZE = 1 << 20
_CHUNK = 1 << 16


class Tail:
    """The last ``lines`` lines of what was fed, each cut to ``width`` characters."""

    def __init__(self, lines: int = LINES, width: int = WIDTH) -> None:
        self._lines: collections.deque[str] = collections.deque(maxlen=lines)
        self._partial = b""
        self._width = width
        self._lock = threading.Lock()

    def feed(self, data: bytes) -> None:
        with self._lock:
            *whole, self._partial = (self._partial + data).split(b"\n")
            for line in whole:
                self._add(line)
            if len(self._partial) > 4 * self._width:  # a line without end: keep its start
                self._partial = self._partial[: 4 * self._width]

    def lines(self) -> list[str]:
        """The last lines, the one still without its newline included."""
        with self._lock:
            last = list(self._lines)
            if self._partial.strip():
                last = [*last, self._text(self._partial)][-(self._lines.maxlen or 1) :]
            return last

    def _add(self, line: bytes) -> None:
        if line.strip():
            self._lines.append(self._text(line))

    def _text(self, line: bytes) -> str:
        text = line.decode("utf-8", errors="surrogateescape").rstrip("\r")
        text = text if len(text) <= self._width else text[: self._width] + "..."
        return printable(text)


#: The first line of a Python traceback, and of each of its frames (indented, as the
#: source lines that follow them).
_TRACEBACK = "Traceback (most recent call last):"
_FRAME = '  File "'


def last_words(lines: Sequence[str], last: int = 3) -> list[str]:
    """What the last lines of a stderr say of why a process ended: the last ``last``
    lines; of a Python traceback, only what follows its frames (the exception)."""
    tracebacks = [i for i, line in enumerate(lines) if line.startswith(_TRACEBACK)]
    if tracebacks:  # the last exception of a chain
        lines = lines[tracebacks[-1] + 1 :]
    if tracebacks or any(line.startswith(_FRAME) for line in lines):
        lines = [line for line in lines if not line[:1].isspace()]
    return list(lines[-last:])


class Pipe:
    """A pipe to be a new generation's stderr: ``write`` is its end, ``read`` ours."""

    def __init__(self) -> None:
        self.read, self.write = os.pipe2(os.O_CLOEXEC)
        with contextlib.suppress(OSError):  # EPERM beyond pipe-max-size: the default then
            fcntl.fcntl(self.write, fcntl.F_SETPIPE_SZ, PIPE_SIZE)

    def close(self) -> None:
        for fd in (self.read, self.write):
            with contextlib.suppress(OSError):
                os.close(fd)


class Relay:
    """A thread copying ``source`` (a pipe's read end, ours to close) to ``sink`` until
    the pipe ends or ``stop()``; what it copies is fed to ``tail`` too."""

    def __init__(self, source: int, sink: int, tail: Tail | None = None) -> None:
        self.source = source
        self.sink: int | None = sink
        self.tail = tail
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(source, False)
        self._thread = threading.Thread(target=self._run, name="fdchannel-stderr", daemon=True)
        self._stopping = False

    def start(self) -> Relay:
        self._thread.start()
        return self

    def start_unless_done(self) -> Relay:
        """Copy what is in the pipe now; at its end already (nothing holds its other end
        any more), close it without a thread; else ``start()``."""
        try:
            done = not self._copy(PIPE_SIZE)
        except OSError:
            done = True
        if not done:
            return self.start()
        self._stopping = True
        self._close()
        return self

    def stop(self, timeout: float = 1.0) -> None:
        """Copy what is in the pipe now, then stop (the thread closes the pipe)."""
        if not self._stopping:
            self._stopping = True
            with contextlib.suppress(OSError):
                os.write(self._wake_write, b"x")
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while not self._stopping:
                ready = select.select([self.source, self._wake_read], [], [])[0]
                if self.source in ready and not self._copy():
                    return  # the end: nothing holds the pipe's other end any more
            self._copy(PIPE_SIZE)  # stopping: what is there already (writers may go on)
        except OSError:
            pass
        finally:
            self._close()

    def _close(self) -> None:
        for fd in (self.source, self._wake_read, self._wake_write):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _copy(self, limit: int | None = None) -> bool:
        """Copy what can be read without waiting (up to ``limit`` bytes); False at the
        pipe's end."""
        copied = 0
        while limit is None or copied < limit:
            try:
                data = os.read(self.source, _CHUNK)
            except BlockingIOError:
                return True
            if not data:
                return False
            copied += len(data)
            if self.tail is not None:
                self.tail.feed(data)
            self._write(data)
        return True

    def _write(self, data: bytes) -> None:
        while data and self.sink is not None:
            try:
                data = data[os.write(self.sink, data) :]
            except InterruptedError:
                continue
            except BlockingIOError:  # a non-blocking stderr: wait for room
                select.select([], [self.sink], [], 1.0)
            except OSError:  # our stderr is gone: keep reading (the writer must not block)
                self.sink = None
