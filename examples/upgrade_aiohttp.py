"""An aiohttp application upgraded without dropping a request.

    python examples/upgrade_aiohttp.py --pidfile /tmp/web.pid --control /tmp/web.ctl
    fdchannel upgrade /tmp/web.ctl        # or: kill -HUP $(cat /tmp/web.pid)

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
generation prints ``ready key=value ...`` once serving and ``exit
key=value ...`` when it leaves (bench/upgrades.py reads them).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket

import anyio
import anyio.abc
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from anyio.abc import SocketAttribute

import fdchannel
from fdchannel.transports import FdAttribute
from fdchannel.upgrade import Upgrader

#: How often the drain looks at aiohttp's open connections (aiohttp has no event for it).
POLL = 0.01


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


def emit(event: str, **fields: object) -> None:
    """One ``event key=value ...`` line: a single write, so generations sharing a pipe never mix."""
    words = " ".join(f"{key}={value}" for key, value in fields.items())
    os.write(1, f"{event} pid={os.getpid()} {words}\n".encode())


def url_of(listener: fdchannel.Listener) -> str:
    """``http://host:port/`` for a TCP listener, the socket's path for a unix one."""
    local = listener.extra(SocketAttribute.local_address)
    if isinstance(local, tuple):
        host = f"[{local[0]}]" if ":" in local[0] else local[0]
        return f"http://{host}:{local[1]}/"
    return f"unix:{local}"


async def wait_for_signal(
    stop: anyio.Event, why: list[str], *, task_status: anyio.abc.TaskStatus[None]
) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            why.append(signal.Signals(signum).name)
            stop.set()
            return


async def wait_replaced(up: Upgrader, stop: anyio.Event, why: list[str]) -> None:
    why.append(f"replaced-by-{await up.wait_replaced()}")
    stop.set()


async def run(options: argparse.Namespace) -> None:
    stop = anyio.Event()
    why: list[str] = []
    draining = Draining()
    left = 0
    upgrader = Upgrader(pidfile=options.pidfile, control=options.control)
    async with upgrader as up, anyio.create_task_group() as tasks:
        await tasks.start(wait_for_signal, stop, why)
        listener = await up.listen("http", options.listen)
        url = url_of(listener)
        # aiohttp's own duplicate: closing it (site.stop) stops this generation accepting.
        sock = socket.socket(fileno=os.dup(listener.extra(FdAttribute.fileno)))
        await listener.aclose()
        app = application()
        app.middlewares.append(close_when_draining(draining))
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=options.drain_timeout)
        try:
            await runner.setup()
            site = web.SockSite(runner, sock)
            await site.start()
            with await up.ready():  # nothing else is handed over: the listener came earlier
                pass
            emit(
                "ready",
                generation=up.generation,
                server="aiohttp",
                backend=options.backend,
                url=url,
            )
            tasks.start_soon(wait_replaced, up, stop, why)

            await stop.wait()
            draining.on = True  # each connection closes after its next response
            await site.stop()  # stop accepting: the next generation (if any) does
            assert runner.server is not None
            with anyio.move_on_after(options.drain_timeout):
                while runner.server.connections:  # noqa: ASYNC110 (aiohttp has no event)
                    await anyio.sleep(POLL)
            left = len(runner.server.connections)
        finally:
            await runner.cleanup()  # closes what is still open (idle)
            sock.close()
        tasks.cancel_scope.cancel()
    emit(
        "exit",
        generation=upgrader.generation,
        reason=why[0] if why else "?",
        requests=draining.requests,
        closed_idle=left,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="tcp:127.0.0.1:8080", help="an fdchannel address")
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "uvloop"])
    parser.add_argument("--pidfile", help="names the serving generation")
    parser.add_argument("--control", help="a unix socket taking upgrade requests")
    parser.add_argument(
        "--drain-timeout", type=float, default=10.0, help="close idle connections after (s)"
    )
    options = parser.parse_args()
    backend_options = {}
    if options.backend == "uvloop":
        import uvloop

        backend_options = {"loop_factory": uvloop.new_event_loop}
    anyio.run(run, options, backend="asyncio", backend_options=backend_options)


if __name__ == "__main__":
    main()
