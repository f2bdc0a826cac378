"""A service's record of its upgrades, handed from generation to generation.

A service starts with its first generation (generation 0, started by no
previous one) and lives on through its upgrades; each generation holds the
record and hands it on: when the service started, how many upgrades went
well, failed, were rolled back (after the switch) or refused (busy), and
the last upgrade's outcome (a refusal is no upgrade: it is counted only).
The old generation sends it with the listeners, and again once the upgrade
is settled, with that upgrade counted.  ``fdchannel upgrade --status``
reads it from the serving generation (its control socket) or from the
status file beside the pidfile, where each outcome is recorded with it.

A fresh service starts a fresh record: the counts are the service's, not
those of whatever ran before under the same pidfile.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["COUNTS", "History", "outcome_kind", "status_document", "timestamp"]

#: What the record counts, in the order shown.
COUNTS = ("ok", "failed", "rolled_back", "refused")


def timestamp(seconds: float | None = None) -> str:
    """A wall-clock time as ISO 8601 with the local offset, to the millisecond."""
    moment = datetime.fromtimestamp(time.time() if seconds is None else seconds)
    return moment.astimezone().isoformat(timespec="milliseconds")


def outcome_kind(outcome: dict[str, Any]) -> str:
    """Which count an upgrade's outcome goes to."""
    if outcome.get("busy"):
        return "refused"
    if outcome.get("rolled_back"):
        return "rolled_back"
    return "ok" if outcome.get("ok") is True else "failed"


@dataclass
class History:
    """Since when the service runs, its upgrades counted, the last one's outcome."""

    since: str = field(default_factory=timestamp)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    last: dict[str, Any] | None = None

    def count(self, outcome: dict[str, Any]) -> None:
        """An upgrade is over (or was refused): count it, and keep it as the last."""
        kind = outcome_kind(outcome)
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if kind != "refused":
            self.last = dict(outcome)

    def as_json(self) -> dict[str, Any]:
        return {"since": self.since, "counts": dict(self.counts), "last": self.last}

    @classmethod
    def from_json(cls, found: object) -> History | None:
        """The record another generation sent (or the status file holds); None when
        ``found`` is none."""
        if not isinstance(found, dict) or not isinstance(found.get("since"), str):
            return None
        counts = found.get("counts")
        counts = counts if isinstance(counts, dict) else {}
        last = found.get("last")
        return cls(
            found["since"],
            {name: _count(counts.get(name)) for name in COUNTS},
            last if isinstance(last, dict) else None,
        )


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def status_document(
    pid: int,
    generation: int | None,
    started: str | None,
    history: History,
    probation: dict[str, Any] | None,
) -> dict[str, Any]:
    """What ``fdchannel upgrade --status`` shows, the same from a control socket and
    from a pidfile: the generation serving (``pid``, ``generation``: None if
    unknown, ``started``: when its process started), the service's record, and
    the probation under way (``{"pid", "seconds"}``) or None."""
    return {
        "ok": True,
        "pid": pid,
        "generation": generation,
        "started": started,
        "service_started": history.since,
        "counts": dict(history.counts),
        "last": history.last,
        "probation": probation,
    }
