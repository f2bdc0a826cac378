"""What a generation learns from the one that started it: the ``FDCHANNEL_UPGRADE``
variable, naming three inherited socket descriptors.

* ``cpr``: a cpr channel carrying the listeners (and the upgrader's own
  bookkeeping in the state's metadata); the new generation closes it once
  they are received: the close-as-ack.
* ``control``: JSON lines from the new generation: ``{"ready": true}`` or
  ``{"failed": "reason"}``.
* ``handover``: a second cpr channel, sent after "ready": whatever the old
  generation hands over (connections, memory), empty if nothing.  Its ack
  is the commit point of the upgrade.

``parent`` is the old generation's pid: as with systemd's ``LISTEN_PID``,
a process that finds the variable but was not started by that pid (a
grandchild that inherited the environment) ignores it.  A malformed
variable (a field missing or extra, a number that is none or beyond a C
int) is an UpgradeError naming it.
"""

from __future__ import annotations

import fcntl
import logging
import os
from dataclasses import asdict, dataclass

from ..errors import UpgradeError

__all__ = ["ENV", "Lineage", "take"]

ENV = "FDCHANNEL_UPGRADE"
#: Descriptors and pids are C ints: nothing beyond this names one.
_INT_MAX = 2**31 - 1
log = logging.getLogger("fdchannel.upgrade")


@dataclass(frozen=True)
class Lineage:
    """The inherited descriptors and who passed them."""

    cpr: int
    control: int
    handover: int
    parent: int
    generation: int

    def encode(self) -> str:
        return ",".join(f"{key}={value}" for key, value in asdict(self).items())

    @classmethod
    def parse(cls, text: str) -> Lineage:
        """Parse ``cpr=N,control=N,...``; ValueError when malformed."""
        fields: dict[str, int] = {}
        for part in text.split(","):
            key, sep, value = part.partition("=")
            number = value.isascii() and value.isdigit() and len(value) <= 10
            if not sep or not number or int(value) > _INT_MAX:
                raise ValueError(f"malformed {ENV} entry {part!r}")
            fields[key] = int(value)
        try:
            return cls(**fields)
        except TypeError:
            raise ValueError(
                f"{ENV} must name exactly cpr, control, handover, parent, generation"
            ) from None

    def fds(self) -> tuple[int, int, int]:
        return self.cpr, self.control, self.handover


def take() -> Lineage | None:
    """Read and remove ``FDCHANNEL_UPGRADE`` if it is meant for us; its descriptors
    become close-on-exec, so none of our own children inherits them.  UpgradeError
    if it is malformed or names descriptors that are not open."""
    text = os.environ.pop(ENV, None)
    if text is None:
        return None
    try:
        lineage = Lineage.parse(text)
    except ValueError as exc:  # not ours to guess whom it was for: say so
        raise UpgradeError(f"{ENV} is malformed: {exc}") from None
    if lineage.parent != os.getppid():
        log.warning("ignoring %s: it was meant for a child of pid %d", ENV, lineage.parent)
        return None
    for fd in lineage.fds():
        try:
            fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
        except OSError as exc:
            raise UpgradeError(f"{ENV} names descriptor {fd}, which is not open") from exc
    return lineage
