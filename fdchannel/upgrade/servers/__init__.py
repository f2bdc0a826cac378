"""Server adapters: a uvicorn, hypercorn or aiohttp application, upgradable in a few lines.

::

    from fdchannel.upgrade.servers import uvicorn as upgradable

    upgradable.run(app, listen="tcp:0.0.0.0:8080", pidfile="/run/app/app.pid",
                   control="/run/app/app.ctl")

Each adapter (``uvicorn``, ``hypercorn``, ``aiohttp``) has ``run(app, ...)``
for a program's main function and ``serve(app, ...)`` for a loop already
running; each imports its server, which is an optional dependency: this
package imports without any of them.  What they share (the lifecycle of a
generation, the drain, the accept trap) is ``common``.  See docs/servers.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...lazy import exports

if TYPE_CHECKING:
    from .common import (
        DRAIN_TIMEOUT as DRAIN_TIMEOUT,
        Drained as Drained,
        Serving as Serving,
        UnsupportedServer as UnsupportedServer,
    )

#: Each public name and the module it lives in, imported on first use (PEP 562).
_WHERE = {
    "DRAIN_TIMEOUT": ".common",
    "Drained": ".common",
    "Serving": ".common",
    "UnsupportedServer": ".common",
}

__all__ = sorted(_WHERE)


__getattr__, __dir__ = exports(__name__, _WHERE)
