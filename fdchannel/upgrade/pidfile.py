"""The pidfile names the generation serving now; its status file tells how the
last upgrade went (for ``fdchannel upgrade PIDFILE``, which only has a signal
to ask with).

Both are replaced atomically (write a temporary file, rename), so a reader
sees the old content or the new, never half of one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["read_pid", "read_status", "status_path", "write_pid", "write_status"]


def _replace(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_pid(path: str | os.PathLike[str], pid: int) -> None:
    """Write ``pid`` and a newline, as daemons do."""
    _replace(Path(path), f"{pid}\n")


def read_pid(path: str | os.PathLike[str]) -> int:
    """The pid in a pidfile; ValueError if it holds no positive number."""
    text = Path(path).read_text(encoding="utf-8", errors="replace").strip()
    if not text.isascii() or not text.isdigit() or int(text) <= 0:
        raise ValueError(f"{os.fspath(path)} does not hold a process id: {text[:40]!r}")
    return int(text)


def status_path(pidfile: str | os.PathLike[str]) -> Path:
    """Where the status of the last upgrade lives: beside the pidfile."""
    path = Path(pidfile)
    return path.with_name(path.name + ".upgrade")


def write_status(pidfile: str | os.PathLike[str], status: dict[str, Any]) -> None:
    """Record an upgrade's outcome (``attempt`` counts every request so far)."""
    _replace(status_path(pidfile), json.dumps(status) + "\n")


def read_status(pidfile: str | os.PathLike[str]) -> dict[str, Any]:
    """The last recorded outcome, or ``{"attempt": 0}`` when there is none yet."""
    try:
        status: dict[str, Any] = json.loads(status_path(pidfile).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {"attempt": 0}
    return status if isinstance(status, dict) else {"attempt": 0}
