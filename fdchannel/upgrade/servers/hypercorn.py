"""hypercorn, upgradable: ``run(app, listen=...)`` for an ASGI application.

::

    from fdchannel.upgrade.servers import hypercorn as upgradable

    upgradable.run(app, listen="tcp:0.0.0.0:8080", pidfile="/run/app/app.pid",
                   control="/run/app/app.ctl")

``serve(...)`` is the same in a running loop: asyncio, uvloop or trio.
What it does around hypercorn, and why, is in ``common`` and
docs/servers.md; what is hypercorn's own here:

* hypercorn's ``serve()`` sets its workers' ``terminated`` flag when told to
  stop, which closes every idle keep-alive connection at once (racing with
  the clients' next requests), and only then stops accepting.  So the
  adapter runs hypercorn's worker itself, from hypercorn's own parts: the
  application's lifespan, ``TCPServer`` for each connection, the
  ``WorkerContext`` whose ``terminated`` it sets once the connections have
  drained.  Accepting starts once ``Upgrader.ready()`` has returned;
* on asyncio the connections are accepted by an asyncio server, stopped
  without the accept trap, and counted from their accept on
  (``_Connection``): the task hypercorn serves each in starts a loop turn
  later;
* on trio they are accepted by a loop of ``accept()`` calls, which trio
  makes safe to cancel (a connection accepted is returned, never dropped):
  trio has no accept trap.

Those parts are not hypercorn's documented API: ``check()`` raises
UnsupportedServer, naming what is missing, when a version lacks one or
takes other arguments.  ``config`` is a ``hypercorn.config.Config``; its
``bind`` is not used (the listener is ``listen``), nor its graceful timeout
(``drain_timeout`` is the time a replaced generation gives its connections).
ASGI applications only: a WSGI one would be served without the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import signal
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Unpack, cast

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

if TYPE_CHECKING:
    import trio
    from hypercorn.typing import ASGIFramework

try:
    import hypercorn.asyncio.lifespan
    import hypercorn.asyncio.statsd
    import hypercorn.asyncio.tcp_server
    import hypercorn.asyncio.worker_context
    import hypercorn.utils
    from hypercorn.config import Config
except ImportError as error:
    raise common.missing_server("hypercorn", error) from error

__all__ = ["TESTED", "check", "run", "serve"]

#: The hypercorn this adapter was tested with.
TESTED = "0.18"

#: hypercorn's parts the adapter builds a worker from, on each loop, and the
#: arguments it passes each.
_PARTS = {
    "asyncio": {
        "asyncio.lifespan.Lifespan": ["app", "config", "loop", "lifespan_state"],
        "asyncio.tcp_server.TCPServer": [
            "app",
            "loop",
            "config",
            "context",
            "state",
            "reader",
            "writer",
        ],
        "asyncio.worker_context.WorkerContext": ["max_requests"],
    },
    "trio": {
        "trio.lifespan.Lifespan": ["app", "config", "state"],
        "trio.tcp_server.TCPServer": ["app", "config", "context", "state", "stream"],
        "trio.worker_context.WorkerContext": ["max_requests"],
    },
}


def check(loop: str = "asyncio") -> None:
    """Raise UnsupportedServer if this hypercorn lacks what the adapter relies on
    (on ``loop``: ``asyncio``, which uvloop is, or ``trio``)."""
    require = common.require
    require("hypercorn", TESTED, hypercorn.utils, "wrap_app")
    require("hypercorn", TESTED, Config, "set_statsd_logger_class", "ssl_enabled", "backlog")
    for name, arguments in _PARTS[loop].items():
        module, _, attribute = f"hypercorn.{name}".rpartition(".")
        try:
            part = getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError):
            raise common.UnsupportedServer(
                f"hypercorn has no {name}, which fdchannel.upgrade.servers.hypercorn "
                f"relies on (tested with hypercorn {TESTED})"
            ) from None
        if name.endswith("Lifespan"):
            require("hypercorn", TESTED, part, "handle_lifespan")
            require("hypercorn", TESTED, part, "wait_for_startup", "wait_for_shutdown")
        taken = [p for p in inspect.signature(part).parameters if p != "self"]
        if taken != arguments:
            raise common.UnsupportedServer(
                f"hypercorn's {name} takes ({', '.join(taken)}), not ({', '.join(arguments)}) "
                f"as fdchannel.upgrade.servers.hypercorn passes them "
                f"(tested with hypercorn {TESTED})"
            )


class _Hypercorn:
    """What the adapter's steps share on either loop: the application, wrapped."""

    def __init__(self, app: ASGIApp, config: Config | None, loop: str) -> None:
        check(loop)
        self.traffic = Traffic()
        self.config = config = config if config is not None else Config()
        statsd = importlib.import_module(f"hypercorn.{loop}.statsd")
        config.set_statsd_logger_class(statsd.StatsdLogger)
        # hypercorn types ASGI messages as TypedDicts, common as plain mappings.
        asgi = cast("ASGIFramework", CloseWhenDraining(app, self.traffic))
        self.app = hypercorn.utils.wrap_app(asgi, config.wsgi_max_body_size, "asgi")
        self.state: dict[str, Any] = {}


class _OnAsyncio(_Hypercorn):
    """The adapter's steps (common.Server) over hypercorn's parts, on asyncio."""

    def __init__(self, app: ASGIApp, config: Config | None) -> None:
        super().__init__(app, config, "asyncio")
        self.context = hypercorn.asyncio.worker_context.WorkerContext(None)
        common.require("hypercorn", TESTED, self.context, "terminated")
        #: Each connection, from its accept to its close (its transport).
        self.connected: dict[_Connection, asyncio.BaseTransport] = {}
        #: Each connection's task: hypercorn's TCPServer.
        self.serving: set[asyncio.Task[Any]] = set()
        self.cutting = False
        self.servers: list[tuple[asyncio.Server, int]] = []
        self.lifespan: hypercorn.asyncio.lifespan.Lifespan | None = None
        self.lifespan_task: asyncio.Task[None] | None = None

    async def start(self, tasks: anyio.abc.TaskGroup) -> None:
        loop = asyncio.get_running_loop()
        self.lifespan = hypercorn.asyncio.lifespan.Lifespan(self.app, self.config, loop, self.state)
        self.lifespan_task = loop.create_task(self.lifespan.handle_lifespan())
        await self.lifespan.wait_for_startup()
        if self.lifespan_task.done() and self.lifespan_task.exception() is not None:
            raise self.lifespan_task.exception()  # type: ignore[misc]  # (checked: not None)

    async def accept(self, sock: socket.socket) -> None:
        config = self.config
        options: dict[str, Any] = {}
        if config.ssl_enabled:
            options["ssl"] = config.create_ssl_context()
            options["ssl_handshake_timeout"] = config.ssl_handshake_timeout
        loop = asyncio.get_running_loop()

        def connection() -> _Connection:
            return _Connection(self.connected, self._serve)

        try:
            fd = sock.fileno()
            server = await loop.create_server(
                connection, sock=sock, backlog=config.backlog, **options
            )
        except BaseException:
            sock.close()
            raise
        self.servers.append((server, fd))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.serving.add(task)
        task.add_done_callback(self.serving.discard)
        loop = asyncio.get_running_loop()
        try:
            await hypercorn.asyncio.tcp_server.TCPServer(
                self.app, loop, self.config, self.context, self.state, reader, writer
            )
        except asyncio.CancelledError:
            if not self.cutting:
                raise
            # Cut by close(): end quietly (Python 3.11's start_server logs a cancelled one).

    async def stop_accepting(self) -> None:
        servers, self.servers = self.servers, []

        async def close() -> None:
            for server, _ in servers:
                server.close()  # the socket closes with it: the upgrader holds its own

        await common.stop_accepting([fd for _, fd in servers], close)

    def connections(self) -> int:
        # A connection its client closed stays in hypercorn until its keep-alive timeout
        # (or ``terminated``) ends it: it takes no more requests, so it counts only
        # while a request is in flight (an HTTP client rarely half-closes).
        open_ = sum(
            not (connection.reader.at_eof() or transport.is_closing())
            for connection, transport in self.connected.items()
        )
        return max(open_, self.traffic.in_flight)

    async def close(self) -> None:
        await self.stop_accepting()  # if still accepting (uvicorn's and aiohttp's closes do too)
        await self.context.terminated.set()  # hypercorn closes what is idle
        self.cutting = True
        for task in list(self.serving):
            task.cancel()  # past the drain: what is in flight is cut
        await asyncio.gather(*self.serving, return_exceptions=True)
        for transport in self.connected.values():
            transport.close()  # accepted, not served yet: its task had not run
        if self.lifespan is not None and self.lifespan_task is not None:
            try:
                await self.lifespan.wait_for_shutdown()
            finally:
                self.lifespan_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.lifespan_task


class _OnTrio(_Hypercorn):
    """The adapter's steps (common.Server) over hypercorn's parts, on trio."""

    def __init__(self, app: ASGIApp, config: Config | None) -> None:
        super().__init__(app, config, "trio")
        from hypercorn.trio.lifespan import Lifespan
        from hypercorn.trio.worker_context import WorkerContext

        self.context = WorkerContext(None)
        common.require("hypercorn", TESTED, self.context, "terminated")
        self.lifespan = Lifespan(self.app, self.config, self.state)
        self.lifespan_scope = anyio.CancelScope()
        self.lifespan_ended = False
        self.failure: Exception | None = None
        self.tasks: anyio.abc.TaskGroup | None = None
        #: Each connection, from its accept to its end, and what cuts it.
        self.connected: dict[_Watched, anyio.CancelScope] = {}
        self.ended = anyio.Event()  # set when the last connection ends, once cutting
        self.accepting: list[tuple[anyio.CancelScope, anyio.Event]] = []

    async def start(self, tasks: anyio.abc.TaskGroup) -> None:
        self.tasks = tasks
        await tasks.start(self._lifespan)
        await self._lifespan_step(self.lifespan.wait_for_startup)
        if self.failure is not None:
            raise self.failure
        failed = self.traffic.startup_failed
        if failed is not None:  # raised in the lifespan's task, which may not have ended yet
            self.lifespan_scope.cancel()
            raise hypercorn.utils.LifespanFailureError("startup", failed)

    async def _lifespan(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        try:
            with self.lifespan_scope:
                await self.lifespan.handle_lifespan(task_status=task_status)
        except Exception as exc:  # the start-up failed: start() raises it
            self.failure = exc
        finally:
            self.lifespan_ended = True

    async def _lifespan_step(self, step: Callable[[], Awaitable[None]]) -> None:
        """The lifespan's start-up or shutdown, unless the application has left it.

        An application that returns from the lifespan scope (rather than raise,
        as ASGI asks of one without a lifespan) has closed its channel: hypercorn's
        own trio worker fails on it (0.18); its asyncio one, and uvicorn, go on.
        """
        import trio

        if not self.lifespan_ended:
            with contextlib.suppress(trio.ClosedResourceError):
                await step()

    async def accept(self, sock: socket.socket) -> None:
        import trio

        assert self.tasks is not None, "start() first"
        try:
            listener: trio.abc.Listener[Any] = trio.SocketListener(
                trio.socket.from_stdlib_socket(sock)
            )
        except BaseException:
            sock.close()
            raise
        if self.config.ssl_enabled:
            context = self.config.create_ssl_context()
            assert context is not None  # ssl_enabled
            listener = trio.SSLListener(listener, context, https_compatible=True)
        scope, stopped = anyio.CancelScope(), anyio.Event()
        self.accepting.append((scope, stopped))
        self.tasks.start_soon(self._accept, listener, scope, stopped)

    async def _accept(
        self, listener: trio.abc.Listener[Any], scope: anyio.CancelScope, stopped: anyio.Event
    ) -> None:
        assert self.tasks is not None
        try:
            with scope:
                while True:
                    # Cancelled, trio's accept() has taken no connection; one taken is returned.
                    watched = _Watched(await listener.accept())
                    self.connected[watched] = anyio.CancelScope()
                    self.tasks.start_soon(self._serve, watched)
        finally:
            with anyio.CancelScope(shield=True):
                await listener.aclose()  # ours: the upgrader holds its own
            stopped.set()

    async def _serve(self, watched: _Watched) -> None:
        from hypercorn.trio.tcp_server import TCPServer

        try:
            with self.connected[watched]:
                # hypercorn types its stream as TLS; it takes a plain one as well.
                stream = cast("trio.SSLStream[trio.SocketStream]", watched)
                await TCPServer(self.app, self.config, self.context, self.state, stream)
        finally:
            with anyio.CancelScope(shield=True):
                await watched.aclose()
            del self.connected[watched]
            if not self.connected:
                self.ended.set()

    async def stop_accepting(self) -> None:
        accepting, self.accepting = self.accepting, []
        for scope, _ in accepting:
            scope.cancel()
        for _, stopped in accepting:
            await stopped.wait()

    def connections(self) -> int:
        # A connection its client closed stays in hypercorn until its keep-alive timeout
        # (or ``terminated``) ends it: as on asyncio, it counts only while in flight.
        open_ = sum(not (watched.eof or watched.closed) for watched in self.connected)
        return max(open_, self.traffic.in_flight)

    async def close(self) -> None:
        await self.stop_accepting()
        await self.context.terminated.set()  # hypercorn closes what is idle
        for scope in self.connected.values():
            scope.cancel()  # past the drain: what is in flight is cut
        if self.connected:
            await self.ended.wait()
        try:
            if self.failure is None:
                await self._lifespan_step(self.lifespan.wait_for_shutdown)
        finally:
            self.lifespan_scope.cancel()


class _Watched:
    """A connection's stream, as hypercorn's trio TCPServer uses it, telling
    whether the client has closed it (an end of stream read) or we have."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.eof = False
        self.closed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)  # socket, send_all, do_handshake (TLS), ...

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.stream.receive_some(max_bytes)
        self.eof = self.eof or not data
        return data

    async def aclose(self) -> None:
        self.closed = True
        await self.stream.aclose()


class _Connection(asyncio.StreamReaderProtocol):
    """asyncio's stream protocol (as ``asyncio.start_server`` makes it), counted in
    ``connected`` from its accept on: its task, which hypercorn serves it in,
    starts a loop turn later, and a drain must not miss it meanwhile."""

    def __init__(
        self,
        connected: dict[_Connection, asyncio.BaseTransport],
        serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    ) -> None:
        self.reader = asyncio.StreamReader(limit=2**16)  # start_server's
        super().__init__(self.reader, serve)
        self.connected = connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.connected[self] = transport
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connected.pop(self, None)
        super().connection_lost(exc)


async def serve(
    app: ASGIApp,
    *,
    listen: str | Address,
    name: str = "http",
    drain_timeout: float = DRAIN_TIMEOUT,
    config: Config | None = None,
    on_serving: Callable[[Serving], object] | None = None,
    stop_signals: Sequence[signal.Signals] = STOP_SIGNALS,
    stop: anyio.Event | None = None,
    upgrader: Upgrader | None = None,
    **upgrader_options: Unpack[UpgraderOptions],
) -> Drained:
    """Serve ``app`` with hypercorn as one generation, in the running loop (asyncio,
    uvloop or trio).

    ``listen`` is an fdchannel address (``tcp:HOST:PORT``, ``unix:PATH``),
    handed on from generation to generation under ``name``; ``config`` is
    hypercorn's (its ``bind`` and ``graceful_timeout`` unused).  The
    generation serves until it is replaced, gets one of ``stop_signals``, or
    ``stop`` is set, then drains for up to ``drain_timeout`` seconds.
    ``upgrader_options`` go to the ``Upgrader`` (``pidfile``, ``control``,
    ...), or ``upgrader`` is one the caller entered.
    """
    server = _OnTrio(app, config) if common.running_on() == "trio" else _OnAsyncio(app, config)
    return await common.serve_generation(
        server,
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
    config: Config | None = None,
    on_serving: Callable[[Serving], object] | None = None,
    stop_signals: Sequence[signal.Signals] = STOP_SIGNALS,
    **upgrader_options: Unpack[UpgraderOptions],
) -> Drained:
    """``serve(...)`` in a new event loop, ``loop``: ``asyncio``, ``uvloop`` or ``trio``.

    The program's main function: returns once this generation has drained.
    """

    async def main() -> Drained:
        return await serve(
            app,
            listen=listen,
            name=name,
            drain_timeout=drain_timeout,
            config=config,
            on_serving=on_serving,
            stop_signals=stop_signals,
            **upgrader_options,
        )

    return common.run_on(loop, main, ("asyncio", "uvloop", "trio"), "hypercorn")
