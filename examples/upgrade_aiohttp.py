"""An aiohttp application upgraded without dropping a request.

    RUN=$(mktemp -d)       # pidfile and control socket: a directory of their own
    python examples/upgrade_aiohttp.py --pidfile $RUN/web.pid --control $RUN/web.ctl
    fdchannel upgrade $RUN/web.ctl   # or: fdchannel upgrade $RUN/web.pid (SIGHUP)

The handler (``hello``) is ordinary aiohttp code that knows nothing of
upgrades.  Around it:

* the listening socket comes from ``Upgrader.listen`` (the previous
  generation's when there is one) and aiohttp serves a duplicate of it
  through ``web.AppRunner`` and ``web.SockSite``;
* once this generation is replaced (or gets SIGTERM/SIGINT), a middleware
  forces ``Connection: close`` on every response, the site stops (the new
  generation accepts alone), and the connections drain: each closes after
  its next response and the client reconnects, to the new generation,
  without an error.  Only then, or after ``--drain-timeout`` seconds for
  connections that stay idle, ``runner.cleanup()`` closes the rest.

aiohttp runs on asyncio: ``--backend asyncio`` or ``uvloop``.  Each
generation writes a JSON ``ready`` event once serving and an
``exit`` event when it leaves (bench/upgrades.py reads them); that, the
stop conditions and the options are upgrade_common.py's, shared with the
anyio and uvicorn examples.
"""

from __future__ import annotations

import argparse
import os
import socket

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from upgrade_common import (
    Generation,
    drain,
    parse_options,
    run_on_backend,
    stop_accepting,
    url_of,
)

from fdchannel.transports import FdAttribute

# ----------------------------------------------------------------------
# The application: plain aiohttp, unchanged by the upgrades.


async def hello(request: web.Request) -> web.Response:
    return web.Response(text=f"hello from pid {os.getpid()}\n")


def application() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{path:.*}", hello)
    return app


# ----------------------------------------------------------------------
# What the upgrade adds around it.


class Draining:
    """Whether this generation drains (replaced, or told to stop), and how much it served."""

    def __init__(self) -> None:
        self.on = False
        self.requests = 0


def close_when_draining(draining: Draining) -> Middleware:
    """Middleware: once draining, every response closes its connection.

    aiohttp then sends ``Connection: close`` and closes after the response,
    and an HTTP client opens a new connection (to the generation that
    accepts now) for its next request: unlike closing an idle keep-alive
    connection, which races with a request the client may be sending.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        draining.requests += 1
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # raised, not returned: a response all the same
            if draining.on:
                exc.force_close()
            raise
        if draining.on:
            response.force_close()
        return response

    return middleware


async def run(options: argparse.Namespace) -> None:
    generation = Generation(options, server="aiohttp")
    draining = Draining()
    left = 0
    async with generation.running() as (up, _tasks):
        listener = await up.listen("http", options.listen)
        url = url_of(listener)
        # aiohttp's own duplicate: closing it (site.stop) stops this generation accepting.
        sock = socket.socket(fileno=os.dup(listener.extra(FdAttribute.fileno)))
        await listener.aclose()
        app = application()
        app.middlewares.append(close_when_draining(draining))
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=options.drain_timeout)
        try:
            await runner.setup()  # the application's on_startup: part of the health check
            await generation.ready()
            # Accept only once ready() returned (the commit): a new generation that
            # dies before it must not take connections with it.
            site = web.SockSite(runner, sock)
            await site.start()
            generation.serving(url)

            await generation.stopped()  # replaced, or SIGTERM/SIGINT
            draining.on = True  # each connection closes after its next response
            await stop_accepting(sock)  # the next generation (if any) accepts alone
            await site.stop()
            server = runner.server
            assert server is not None
            left = await drain(lambda: len(server.connections), options.drain_timeout)
        finally:
            await runner.cleanup()  # closes what is still open (idle)
            sock.close()
    generation.exited(requests=draining.requests, closed_idle=left)


def main() -> None:
    run_on_backend(run, parse_options(__doc__, backends=["asyncio", "uvloop"]))


if __name__ == "__main__":
    main()
