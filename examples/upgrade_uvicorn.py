"""An ASGI application under uvicorn, upgraded without dropping a request.

    RUN=$(mktemp -d)       # pidfile and control socket: a directory of their own
    python examples/upgrade_uvicorn.py --pidfile $RUN/asgi.pid --control $RUN/asgi.ctl
    fdchannel upgrade $RUN/asgi.ctl   # or: fdchannel upgrade $RUN/asgi.pid (SIGHUP)

The application (``app``) is ordinary ASGI code that knows nothing of
upgrades.  Around it:

* the listening socket comes from ``Upgrader.listen`` (the previous
  generation's when there is one) and uvicorn serves a duplicate of it:
  ``uvicorn.Server(config).serve(sockets=[sock])``;
* ``ReadyAtStartup`` completes the application's lifespan startup only
  once ``Upgrader.ready()`` returns: uvicorn accepts right after that
  startup, so a new generation accepts only once it has the commit (one
  killed before it takes no connection with it);
* once this generation is replaced (or gets SIGTERM/SIGINT), the
  ``CloseWhenDraining`` middleware adds ``connection: close`` to every
  response, uvicorn's listening sockets are closed (the new generation
  accepts alone), and the connections drain: each closes after its next
  response and the client reconnects, to the new generation, without an
  error.  Only then, or after ``--drain-timeout`` seconds for connections
  that stay idle, ``server.should_exit`` is set and uvicorn shuts down.

uvicorn runs on asyncio only: ``--backend asyncio`` or ``uvloop``.  It
installs its own SIGINT/SIGTERM handlers in ``serve()``; the ``Server``
subclass below leaves the signals to this program, which drains first.
Each generation writes a JSON ``ready`` event once serving and an
``exit`` event when it leaves (bench/upgrades.py reads them); that, the
stop conditions and the options are upgrade_common.py's, shared with the
anyio and aiohttp examples.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import anyio
import uvicorn
from upgrade_common import (
    POLL,
    Generation,
    drain,
    parse_options,
    run_on_backend,
    stop_accepting,
    url_of,
)

from fdchannel.transports import FdAttribute

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# ----------------------------------------------------------------------
# The application: plain ASGI, unchanged by the upgrades.


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    body = f"hello from pid {os.getpid()}\n".encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# ----------------------------------------------------------------------
# What the upgrade adds around it.


class CloseWhenDraining:
    """ASGI middleware: once ``draining`` is set, every response carries ``connection: close``.

    uvicorn then closes the connection after the response, and an HTTP
    client opens a new one (to the generation that accepts now) for its
    next request: unlike closing an idle keep-alive connection, which
    races with a request the client may be sending.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.draining = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and self.draining:
                headers = [
                    (name, value)
                    for name, value in message.get("headers", ())
                    if name.lower() != b"connection"
                ]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_closing)


class ReadyAtStartup:
    """ASGI middleware: the lifespan startup completes once the application's has and
    ``ready()`` (the upgrader's health check and, in a new generation, the commit)
    has returned; if it raises, the startup fails and uvicorn exits."""

    def __init__(self, app: ASGIApp, ready: Callable[[], Awaitable[None]]) -> None:
        self.app = app
        self.ready = ready

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_when_ready(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                try:
                    await self.ready()
                except Exception as exc:
                    message = {"type": "lifespan.startup.failed", "message": str(exc)}
            await send(message)

        await self.app(scope, receive, send_when_ready)


class Server(uvicorn.Server):
    """uvicorn's server with the signals left to this program (it drains first)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(server: Server, sock: socket.socket, done: anyio.Event) -> None:
    try:
        with sock:
            await server.serve(sockets=[sock])
    finally:
        done.set()


async def run(options: argparse.Namespace) -> None:
    generation = Generation(options, server="uvicorn")
    async with generation.running() as (up, tasks):
        listener = await up.listen("http", options.listen)
        url = url_of(listener)
        # uvicorn's own duplicate: closing it (uvicorn does) stops this generation accepting.
        sock = socket.socket(fileno=os.dup(listener.extra(FdAttribute.fileno)))
        await listener.aclose()
        middleware = CloseWhenDraining(app)
        config = uvicorn.Config(
            ReadyAtStartup(middleware, generation.ready),
            lifespan="on",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=int(options.drain_timeout),
        )
        server = Server(config)
        served = anyio.Event()
        tasks.start_soon(serve, server, sock, served)
        with anyio.fail_after(30):
            while not server.started and not served.is_set():  # noqa: ASYNC110 (a flag)
                await anyio.sleep(POLL)
        if not server.started:
            raise RuntimeError("uvicorn did not start")
        generation.serving(url)  # ready() returned in the lifespan startup

        await generation.stopped()  # replaced, or SIGTERM/SIGINT
        middleware.draining = True  # each connection closes after its next response
        await stop_accepting(sock)  # the next generation (if any) accepts alone
        for listening in server.servers:
            listening.close()
        left = await drain(lambda: len(server.server_state.connections), options.drain_timeout)
        server.should_exit = True  # uvicorn closes what is still open (idle), then returns
        with anyio.move_on_after(options.drain_timeout + 5):
            await served.wait()
    generation.exited(requests=server.server_state.total_requests, closed_idle=left)


def main() -> None:
    run_on_backend(run, parse_options(__doc__, backends=["asyncio", "uvloop"]))


if __name__ == "__main__":
    main()
