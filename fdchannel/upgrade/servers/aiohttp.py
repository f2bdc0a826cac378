"""aiohttp, upgradable: ``run(app, listen=...)`` for an ``aiohttp.web.Application``.

::

    from fdchannel.upgrade.servers import aiohttp as upgradable

    upgradable.run(app, listen="tcp:0.0.0.0:8080", pidfile="/run/app/app.pid",
                   control="/run/app/app.ctl")

``serve(...)`` is the same in a running asyncio (or uvloop) loop.  What it
does around aiohttp, and why, is in ``common`` and docs/servers.md; what is
aiohttp's own here:

* ``AppRunner.setup()`` runs the application's start-up (``on_startup``),
  then ``Upgrader.ready()``, then a ``SockSite`` accepts (a new one each
  time the serve step runs);
* a middleware, put first, counts the requests and, once draining, makes
  each response close its connection (``force_close``: aiohttp sends
  ``Connection: close``);
* once drained, ``AppRunner.cleanup()`` closes what is left, with no grace
  (the drain timeout has passed), and runs ``on_shutdown``/``on_cleanup``.

All of it is aiohttp's documented API, but for ``Server.connections``,
which ``check()`` looks for.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Unpack

import anyio
import anyio.abc

from ...address import Address
from ..upgrader import Upgrader
from . import common
from .common import DRAIN_TIMEOUT, STOP_SIGNALS, Drained, Serving, Traffic, UpgraderOptions

try:
    from aiohttp import web
    from aiohttp.typedefs import Handler, Middleware
except ImportError as error:
    raise common.missing_server("aiohttp", error) from error

__all__ = ["TESTED", "check", "run", "serve"]

#: The aiohttp this adapter was tested with.
TESTED = "3.14"
#: AppRunner's keyword arguments the adapter sets itself.
_OURS = ("handle_signals", "shutdown_timeout")
#: The grace AppRunner.cleanup() gives a request still in flight after the drain timeout
#: (aiohttp reads 0 as "no timeout").
_CUT = 0.001


def check() -> None:
    """Raise UnsupportedServer if this aiohttp lacks what the adapter relies on."""
    common.require("aiohttp", TESTED, web.Server, "connections")
    common.require("aiohttp", TESTED, web.StreamResponse, "force_close")
    common.require("aiohttp", TESTED, web.HTTPException, "force_close")


def close_when_draining(traffic: Traffic) -> Middleware:
    """Middleware: count the requests, and once draining, close each connection after
    its response (aiohttp then sends ``Connection: close``): see common.CloseWhenDraining."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        traffic.requests += 1
        traffic.in_flight += 1
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # raised, not returned: a response all the same
            if traffic.draining:
                exc.force_close()
            raise
        finally:
            traffic.in_flight -= 1
        if traffic.draining:
            response.force_close()
        return response

    return middleware


class _Aiohttp:
    """The adapter's steps (common.Server) over aiohttp's AppRunner and SockSite."""

    def __init__(self, app: web.Application, options: Mapping[str, Any] | None) -> None:
        check()
        options = dict(options or {})
        ours = sorted(set(options) & set(_OURS))
        if ours:
            raise ValueError(f"AppRunner options {ours} are the adapter's: see drain_timeout=")
        if app.frozen:
            raise RuntimeError("the application has run already: give serve() a new one")
        self.traffic = Traffic()
        app.middlewares.insert(0, close_when_draining(self.traffic))
        self.runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=_CUT, **options)
        self.sites: list[tuple[web.SockSite, int]] = []

    async def start(self, tasks: anyio.abc.TaskGroup) -> None:
        await self.runner.setup()  # the application's on_startup

    async def accept(self, sock: socket.socket) -> None:
        try:
            fd = sock.fileno()
            site = web.SockSite(self.runner, sock)
            await site.start()
        except BaseException:
            sock.close()
            raise
        self.sites.append((site, fd))

    async def stop_accepting(self) -> None:
        sites, self.sites = self.sites, []

        async def close() -> None:
            for site, _ in sites:
                await site.stop()  # the socket closes with it: the upgrader holds its own

        await common.stop_accepting([fd for _, fd in sites], close)

    def connections(self) -> int:
        server = self.runner.server
        return 0 if server is None else len(server.connections)

    async def close(self) -> None:
        await self.runner.cleanup()  # idle connections closed, the rest cut; on_shutdown


async def serve(
    app: web.Application,
    *,
    listen: str | Address,
    name: str = "http",
    drain_timeout: float = DRAIN_TIMEOUT,
    options: Mapping[str, Any] | None = None,
    on_serving: Callable[[Serving], object] | None = None,
    stop_signals: Sequence[signal.Signals] = STOP_SIGNALS,
    stop: anyio.Event | None = None,
    upgrader: Upgrader | None = None,
    **upgrader_options: Unpack[UpgraderOptions],
) -> Drained:
    """Serve ``app`` with aiohttp as one generation, in the running asyncio loop.

    ``listen`` is an fdchannel address (``tcp:HOST:PORT``, ``unix:PATH``),
    handed on from generation to generation under ``name``.  ``options`` go
    to ``web.AppRunner`` (``access_log``, ...; not ``handle_signals`` nor
    ``shutdown_timeout``: ``drain_timeout`` is the time a replaced generation
    gives its connections).  The adapter puts a middleware first in
    ``app.middlewares``.  The generation serves until it is replaced, gets
    one of ``stop_signals``, or ``stop`` is set, then drains.
    ``upgrader_options`` go to the ``Upgrader`` (``pidfile``, ``control``,
    ...), or ``upgrader`` is one the caller entered.
    """
    common.on_asyncio("aiohttp")
    return await common.serve_generation(
        _Aiohttp(app, options),
        listen=listen,
        name=name,
        drain_timeout=drain_timeout,
        upgrader=upgrader,
        upgrader_options=upgrader_options,
        on_serving=on_serving,
        stop_signals=stop_signals,
        stop=stop,
    )


def run(
    app: web.Application,
    *,
    listen: str | Address,
    loop: str = "asyncio",
    name: str = "http",
    drain_timeout: float = DRAIN_TIMEOUT,
    options: Mapping[str, Any] | None = None,
    on_serving: Callable[[Serving], object] | None = None,
    stop_signals: Sequence[signal.Signals] = STOP_SIGNALS,
    **upgrader_options: Unpack[UpgraderOptions],
) -> Drained:
    """``serve(...)`` in a new event loop, ``loop``: ``asyncio`` or ``uvloop``.

    The program's main function: returns once this generation has drained.
    """

    async def main() -> Drained:
        return await serve(
            app,
            listen=listen,
            name=name,
            drain_timeout=drain_timeout,
            options=options,
            on_serving=on_serving,
            stop_signals=stop_signals,
            **upgrader_options,
        )

    return common.run_on(loop, main, ("asyncio", "uvloop"), "aiohttp")
