"""Zero-downtime upgrades for servers: hand the listeners to the next generation.

``Upgrader`` is used by the server; ``request_upgrade`` (and ``fdchannel
upgrade``) asks a running one to upgrade.  See docs/upgrade.md.

Inside, by job: a generation's lifecycle (``upgrader``), the handshake between
two generations (``handshake``: its state table, no I/O; ``sides``: each
end's I/O), the line format of every link that carries words (``lines``),
the control socket's server (``control_server``) and client (``control``).
"""

from __future__ import annotations

from ..errors import UpgradeBusy, UpgradeError, UpgradeFailed
from .control import request_upgrade
from .upgrader import CONTROL, NEW_STEPS, OLD_STEPS, Upgrader, UpgradeResult, default_command

__all__ = [
    "CONTROL",
    "NEW_STEPS",
    "OLD_STEPS",
    "UpgradeBusy",
    "UpgradeError",
    "UpgradeFailed",
    "UpgradeResult",
    "Upgrader",
    "default_command",
    "request_upgrade",
]
