"""An aiohttp application upgraded without dropping a request.

    RUN=$(mktemp -d)       # pidfile and control socket: a directory of their own
    python examples/upgrade_aiohttp.py --pidfile $RUN/web.pid --control $RUN/web.ctl
    fdchannel upgrade $RUN/web.ctl   # or: fdchannel upgrade $RUN/web.pid (SIGHUP)

The handler (``hello``) is ordinary aiohttp code that knows nothing of
upgrades; ``fdchannel.upgrade.servers.aiohttp`` runs the application as
one generation: its listener handed on from the previous generation, its
``SockSite`` started only once the new generation has the commit, and
once replaced (or on SIGTERM/SIGINT) a drain that closes each connection
after its next response, then what is left after ``--drain-timeout``
seconds.  docs/servers.md says how, and why.

aiohttp runs on asyncio: ``--backend asyncio`` or ``uvloop``.  Each
generation writes a JSON ``ready`` event once serving and an ``exit``
event when it leaves (bench/upgrades.py reads them); that and the options
are upgrade_common.py's, shared with the other examples.
"""

from __future__ import annotations

import os

from aiohttp import web
from upgrade_common import adapter_options, emit, parse_options

from fdchannel.upgrade.servers import aiohttp as upgradable


async def hello(request: web.Request) -> web.Response:
    """Plain aiohttp, unchanged by the upgrades."""
    return web.Response(text=f"hello from pid {os.getpid()}\n")


def application() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{path:.*}", hello)
    return app


def main() -> None:
    options = parse_options(__doc__, backends=["asyncio", "uvloop"])
    quiet = {"access_log": None}
    drained = upgradable.run(application(), options=quiet, **adapter_options(options, "aiohttp"))
    emit("exit", **drained.as_json())


if __name__ == "__main__":
    main()
