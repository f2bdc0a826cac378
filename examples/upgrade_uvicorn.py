"""An ASGI application under uvicorn, upgraded without dropping a request.

    python examples/upgrade_uvicorn.py --pidfile /tmp/asgi.pid --control /tmp/asgi.ctl
    fdchannel upgrade /tmp/asgi.ctl       # or: kill -HUP $(cat /tmp/asgi.pid)

The application (``app``) is ordinary ASGI code that knows nothing of
upgrades.  Around it:

* the listening socket comes from ``Upgrader.listen`` (the previous
  generation's when there is one) and uvicorn serves a duplicate of it:
  ``uvicorn.Server(config).serve(sockets=[sock])``;
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
Each generation prints ``ready key=value ...`` once serving and ``exit
key=value ...`` when it leaves (bench/upgrades.py reads them).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import anyio
import anyio.abc
import uvicorn
from anyio.abc import SocketAttribute

import fdchannel
from fdchannel.transports import FdAttribute
from fdchannel.upgrade import Upgrader

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: How often to look at uvicorn's ``started`` flag and its open connections: uvicorn
#: has no event for either (its own shutdown polls them too).
POLL = 0.01


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


class Server(uvicorn.Server):
    """uvicorn's server with the signals left to this program (it drains first)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


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


async def serve(server: Server, sock: socket.socket, done: anyio.Event) -> None:
    try:
        with sock:
            await server.serve(sockets=[sock])
    finally:
        done.set()


async def run(options: argparse.Namespace) -> None:
    stop = anyio.Event()
    why: list[str] = []
    upgrader = Upgrader(pidfile=options.pidfile, control=options.control)
    async with upgrader as up, anyio.create_task_group() as tasks:
        await tasks.start(wait_for_signal, stop, why)
        listener = await up.listen("http", options.listen)
        url = url_of(listener)
        # uvicorn's own duplicate: closing it (uvicorn does) stops this generation accepting.
        sock = socket.socket(fileno=os.dup(listener.extra(FdAttribute.fileno)))
        await listener.aclose()
        middleware = CloseWhenDraining(app)
        config = uvicorn.Config(
            middleware,
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
        with await up.ready():  # nothing else is handed over: the listener came earlier
            pass
        emit("ready", generation=up.generation, server="uvicorn", backend=options.backend, url=url)
        tasks.start_soon(wait_replaced, up, stop, why)

        await stop.wait()
        middleware.draining = True  # each connection closes after its next response
        for listening in server.servers:
            listening.close()  # stop accepting: the next generation (if any) does
        with anyio.move_on_after(options.drain_timeout):
            while server.server_state.connections:  # noqa: ASYNC110 (a set)
                await anyio.sleep(POLL)
        left = len(server.server_state.connections)
        server.should_exit = True  # uvicorn closes what is still open (idle), then returns
        with anyio.move_on_after(options.drain_timeout + 5):
            await served.wait()
        tasks.cancel_scope.cancel()
    emit(
        "exit",
        generation=upgrader.generation,
        reason=why[0] if why else "?",
        requests=server.server_state.total_requests,
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
