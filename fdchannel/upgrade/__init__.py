"""Zero-downtime upgrades for servers: hand the listeners to the next generation.

``Upgrader`` is used by the server; ``request_upgrade`` (and ``fdchannel
upgrade``) asks a running one to upgrade.  See docs/upgrade.md.

Inside, by job: a generation's lifecycle (``upgrader``), the handshake between
two generations (``handshake``: its state table, no I/O; ``sides``: each
end's I/O), the line format of every link that carries words (``lines``),
the control socket's server (``control_server``) and client (``control``),
what the next generation runs (``release``) and how it is started (``spawn``;
its stderr during a probation: ``stderr``), the connections a drain cuts
(``connections``).  The names below are imported on first use, so that asking for an upgrade
(``request_upgrade``, ``fdchannel upgrade``) loads no event loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import exports

if TYPE_CHECKING:
    from ..errors import (
        UpgradeBusy as UpgradeBusy,
        UpgradeError as UpgradeError,
        UpgradeFailed as UpgradeFailed,
    )
    from ..transports.datagram import DatagramListener as DatagramListener
    from .addresses import (
        UdpAddress as UdpAddress,
        UnixDatagramAddress as UnixDatagramAddress,
    )
    from .control import (
        request_status as request_status,
        request_upgrade as request_upgrade,
    )
    from .upgrader import (
        CONTROL as CONTROL,
        NEW_STEPS as NEW_STEPS,
        OLD_STEPS as OLD_STEPS,
        Upgrader as Upgrader,
        UpgradeResult as UpgradeResult,
        UpgradeRolledBack as UpgradeRolledBack,
        default_command as default_command,
    )

#: Each public name and the module it lives in, imported on first use (PEP 562):
#: asking for an upgrade (``fdchannel upgrade``) loads no event loop.
_WHERE = {
    "CONTROL": ".upgrader",
    "DatagramListener": "..transports.datagram",
    "NEW_STEPS": ".upgrader",
    "OLD_STEPS": ".upgrader",
    "UdpAddress": ".addresses",
    "UnixDatagramAddress": ".addresses",
    "UpgradeBusy": "..errors",
    "UpgradeError": "..errors",
    "UpgradeFailed": "..errors",
    "UpgradeResult": ".upgrader",
    "UpgradeRolledBack": ".upgrader",
    "Upgrader": ".upgrader",
    "default_command": ".upgrader",
    "request_status": ".control",
    "request_upgrade": ".control",
}

__all__ = sorted(_WHERE)


__getattr__, __dir__ = exports(__name__, _WHERE)
