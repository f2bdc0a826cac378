"""What every command prints: human text or one JSON document, and errors as one line.

The result of a command goes to stdout; notices for a person or a script
watching it run ("listening on ...", progress, refused peers) go to stderr,
one line each, flushed at once.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

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
    """Where a command's result and notices go."""

    def __init__(self, json_mode: bool, prog: str = "fdchannel") -> None:
        self.json = json_mode
        self.prog = prog

    def result(self, document: dict[str, Any], text: str, file: TextIO | None = None) -> None:
        """The command's result: ``document`` with --json, else ``text`` (on stdout)."""
        file = sys.stdout if file is None else file
        if self.json:
            import json  # only here: ``fdchannel --help`` should not pay for it

            file.write(json.dumps(document, indent=2, default=str) + "\n")
        else:
            file.write(text.rstrip("\n") + "\n")
        file.flush()

    def notice(self, line: str) -> None:
        """One line on stderr for whoever watches the command run."""
        sys.stderr.write(f"{self.prog}: {line}\n")
        sys.stderr.flush()


def single(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member groups, else ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def plural(count: int, word: str) -> str:
    """``1 descriptor``, ``2 descriptors``."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def format_size(value: int) -> str:
    """Bytes in the largest binary unit that keeps three digits: ``4 KiB``, ``1.5 MiB``."""
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{value} B" if unit == "B" else f"{size:.3g} {unit}"
        size /= 1024
    raise AssertionError  # pragma: no cover


def format_ms(seconds: float) -> str:
    """A duration in milliseconds, as people read them."""
    ms = seconds * 1000
    return f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"
