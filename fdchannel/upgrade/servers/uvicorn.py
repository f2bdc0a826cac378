"""uvicorn, upgradable: ``run(app, listen=...)`` for an ASGI application.

::

    from fdchannel.upgrade.servers import uvicorn as upgradable

    upgradable.run(app, listen="tcp:0.0.0.0:8080", pidfile="/run/app/app.pid",
                   control="/run/app/app.ctl", options={"log_level": "warning"})

``serve(...)`` is the same in a running asyncio (or uvloop) loop.  What it
does around uvicorn, and why, is in ``common`` and docs/servers.md; what is
uvicorn's own here:

* uvicorn accepts right after the application's lifespan start-up; the
  ``Server`` below holds its start-up there until ``Upgrader.ready()`` has
  returned, and accepts on sockets the serve step gives it (again after a
  rollback) with uvicorn's own protocol;
* it leaves SIGTERM and SIGINT to the adapter, which drains first (uvicorn
  would close its idle keep-alive connections at once);
* once drained, uvicorn's own shutdown closes what is left, given no grace:
  the drain timeout has passed.

It relies on attributes uvicorn does not document (``Server.servers``,
``Server.lifespan``, ``Server.server_state``, ``Config.http_protocol_class``);
``check()`` raises UnsupportedServer, naming them, when a version lacks one.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Unpack

import anyio
import anyio.abc

from ...address import Address
from ..upgrader import Upgrader
from . import common
from .common import (
    DRAIN_TIMEOUT,
    STOP_SIGNALS,
    ASGIApp,
    CloseWhenDraining,
    Drained,
    Serving,
    Traffic,
    UpgraderOptions,
)

try:
    import uvicorn
except ImportError as error:
    raise common.missing_server("uvicorn", error) from error

__all__ = ["TESTED", "check", "run", "serve"]

#: The uvicorn this adapter was tested with.
TESTED = "0.55"
#: uvicorn's keyword arguments the adapter sets itself.
_OURS = ("app", "fd", "uds", "host", "port", "timeout_graceful_shutdown")


def check() -> None:
    """Raise UnsupportedServer if this uvicorn lacks what the adapter relies on."""
    names = ("serve", "startup", "shutdown", "main_loop", "capture_signals")
    common.require("uvicorn", TESTED, uvicorn.Server, *names)


class _Server(uvicorn.Server):
    """uvicorn's server, its start-up held until the generation accepts, its signals left to us."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        common.require("uvicorn", TESTED, self, "server_state", "should_exit", "started")
        common.require("uvicorn", TESTED, self.server_state, "connections")
        self.app_started = anyio.Event()  # the lifespan start-up is done (or failed)
        self.go: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.servers: list[asyncio.Server] = []

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # SIGTERM and SIGINT are the adapter's: it drains before uvicorn shuts down

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn's own start-up runs the lifespan, then accepts on its sockets: here
        # the accepting waits for the serve step, after Upgrader.ready().
        try:
            common.require("uvicorn", TESTED, self, "lifespan")
            common.require("uvicorn", TESTED, self.lifespan, "startup", "shutdown", "should_exit")
            await self.lifespan.startup()
            if self.lifespan.should_exit:
                raise RuntimeError("uvicorn: the application's lifespan start-up failed")
        finally:
            self.app_started.set()
        if not await self.go:  # ready() failed: no accepting, the application shuts down
            self.should_exit = True
            await self.lifespan.shutdown()
            return
        self.started = True

    async def accept(self, sock: socket.socket) -> None:
        config = self.config
        common.require("uvicorn", TESTED, config, "http_protocol_class", "ssl", "backlog")
        state = self.lifespan.state

        def protocol(loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            made: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=state, _loop=loop
            )  # as uvicorn's own start-up makes it (Config types the class as a bare Protocol)
            return made

        try:
            loop = asyncio.get_running_loop()
            server = await loop.create_server(
                protocol, sock=sock, ssl=config.ssl, backlog=config.backlog
            )
        except BaseException:
            sock.close()
            raise
        self.servers.append(server)  # uvicorn's shutdown closes them too


class _Uvicorn:
    """The adapter's steps (common.Server) over uvicorn."""

    def __init__(self, app: ASGIApp, options: Mapping[str, Any] | None) -> None:
        check()
        options = dict(options or {})
        ours = sorted(set(options) & set(_OURS))
        if ours:
            raise ValueError(
                f"uvicorn options {ours} are the adapter's: see listen=, drain_timeout="
            )
        self.traffic = Traffic()
        self.config = uvicorn.Config(CloseWhenDraining(app, self.traffic), **options)
        self.server: _Server | None = None
        self.served = anyio.Event()
        self.failure: BaseException | None = None
        self.sockets: list[socket.socket] = []

    async def start(self, tasks: anyio.abc.TaskGroup) -> None:
        self.server = server = _Server(self.config)
        tasks.start_soon(self._serve, server)
        await server.app_started.wait()
        if self.failure is not None:
            raise self.failure

    async def _serve(self, server: _Server) -> None:
        try:
            await server.serve()
        except Exception as exc:  # raised where the generation waits: start(), close()
            self.failure = exc
        finally:
            server.app_started.set()  # (if uvicorn failed before the lifespan)
            self.served.set()

    async def accept(self, sock: socket.socket) -> None:
        server = self._running()
        if not server.go.done():
            server.go.set_result(True)  # uvicorn's start-up returns, its main loop runs
        await server.accept(sock)
        self.sockets.append(sock)

    async def stop_accepting(self) -> None:
        server = self._running()
        fds = [sock.fileno() for sock in self.sockets]
        self.sockets.clear()

        async def close() -> None:
            for listening in server.servers:
                listening.close()  # the socket closes with it: the upgrader holds its own

        await common.stop_accepting(fds, close)

    def connections(self) -> int:
        return len(self._running().server_state.connections)

    async def close(self) -> None:
        server = self.server
        if server is None:
            return
        if not server.go.done():
            server.go.set_result(False)
        # Past the drain: uvicorn closes the idle connections and cancels what runs.
        self.config.timeout_graceful_shutdown = 0
        server.should_exit = True
        await self.served.wait()
        for connection in list(server.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:  # uvicorn cancelled its task and left it open
                transport.close()
        if self.failure is not None:
            raise self.failure

    def _running(self) -> _Server:
        assert self.server is not None, "start() first"
        return self.server


async def serve(
    app: ASGIApp,
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
    """Serve ``app`` with uvicorn as one generation, in the running asyncio loop.

    ``listen`` is an fdchannel address (``tcp:HOST:PORT``, ``unix:PATH``),
    handed on from generation to generation under ``name``.  ``options`` go
    to ``uvicorn.Config`` (not its host, port, uds or fd: the listener is
    ``listen``; nor its graceful timeout: ``drain_timeout`` is the time a
    replaced generation gives its connections).  The generation serves until
    it is replaced, gets one of ``stop_signals``, or ``stop`` is set, then
    drains.  ``upgrader_options`` go to the ``Upgrader`` (``pidfile``,
    ``control``, ...), or ``upgrader`` is one the caller entered.
    """
    common.on_asyncio("uvicorn")
    return await common.serve_generation(
        _Uvicorn(app, options),
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
    app: ASGIApp,
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

    return common.run_on(loop, main, ("asyncio", "uvloop"), "uvicorn")
