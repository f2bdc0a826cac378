"""What every command prints: human text or one JSON document, and errors as one line.

The result of a command goes to stdout; notices for a person or a script
watching it run ("listening on ...", progress, refused peers) go to stderr,
one line each, flushed at once.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

from ..text import UNSAFE_BUT_NEWLINE, escape, format_size, printable

__all__ = [
    "OK",
    "PROBLEM",
    "USAGE",
    "CliError",
    "Output",
    "UsageError",
    "format_ms",
    "format_size",
    "plural",
    "printable",
    "single",
]

#: Exit statuses: all went well, a problem was found, the command line was wrong.
OK, PROBLEM, USAGE = 0, 1, 2


class CliError(Exception):
    """A problem the command found: one line on stderr, exit status 1.

    ``prog`` names the command the line is about (``fdchannel send``).
    """

    exit_status = PROBLEM

    def __init__(self, message: str, prog: str | None = None) -> None:
        super().__init__(message)
        self.prog = prog


class UsageError(CliError):
    """The command line itself is wrong: exit status 2."""

    exit_status = USAGE


class Output:
    """Where a command's result and notices go.

    Writing never fails a command: by the time there is a result, the
    descriptors have moved, and the exit status must say so.  Text that the
    stream's encoding cannot carry is escaped, and a stream that cannot be
    written (closed pipe, full disk) is given up on.
    """

    def __init__(self, json_mode: bool, prog: str = "fdchannel") -> None:
        self.json = json_mode
        self.prog = prog
        #: Set once a write failed: what was lost is not worth the exit status.
        self.lost_output = False

    def result(self, document: dict[str, Any], text: str, file: TextIO | None = None) -> None:
        """The command's result: ``document`` with --json, else ``text`` (on stdout)."""
        file = sys.stdout if file is None else file
        if self.json:
            import json  # only here: ``fdchannel --help`` should not pay for it

            # ASCII with \u escapes: exact, whatever the names hold.
            self.write(file, json.dumps(document, indent=2, default=str) + "\n")
        else:
            # Lines are ours; anything else a terminal would act on is escaped.
            self.write(file, UNSAFE_BUT_NEWLINE.sub(escape, text.rstrip("\n")) + "\n")

    def notice(self, line: str) -> None:
        """One line on stderr for whoever watches the command run."""
        self.write(sys.stderr, f"{self.prog}: {printable(line)}\n")

    def write(self, file: TextIO, text: str) -> None:
        """Write and flush ``text`` as is; never raises (see the class)."""
        encoding = getattr(file, "encoding", None) or "utf-8"
        try:
            # Escape what the encoding cannot carry rather than fail on it.
            file.write(text.encode(encoding, "backslashreplace").decode(encoding, "replace"))
            file.flush()
        except (OSError, ValueError):
            self.lost_output = True
            _silence(file)


def _silence(file: TextIO) -> None:
    """Point a stream that cannot be written at /dev/null, so that the
    interpreter's own flush at exit does not fail again."""
    try:
        fd = file.fileno()
    except (OSError, ValueError):
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        os.dup2(null, fd)
    except OSError:
        pass
    finally:
        os.close(null)


def single(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member groups, else ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def plural(count: int, word: str) -> str:
    """``1 descriptor``, ``2 descriptors``."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def format_ms(seconds: float) -> str:
    """A duration in milliseconds, as people read them."""
    ms = seconds * 1000
    return f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"
