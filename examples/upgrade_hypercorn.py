"""An ASGI application under hypercorn, upgraded without dropping a request.

    RUN=$(mktemp -d)       # pidfile and control socket: a directory of their own
    python examples/upgrade_hypercorn.py --pidfile $RUN/asgi.pid --control $RUN/asgi.ctl
    fdchannel upgrade $RUN/asgi.ctl   # or: fdchannel upgrade $RUN/asgi.pid (SIGHUP)

The application (``app``) is ordinary ASGI code that knows nothing of
upgrades; ``fdchannel.upgrade.servers.hypercorn`` runs it under hypercorn
(hypercorn's own worker parts, put together by the adapter) as one
generation: its listener handed on from the previous generation, its
accepting held until the new generation has the commit, and once replaced
(or on SIGTERM/SIGINT) a drain that closes each connection after its next
response, then what is left after ``--drain-timeout`` seconds.
docs/servers.md says how, and why.

hypercorn runs on asyncio or trio: ``--backend asyncio``, ``uvloop`` or
``trio``.  Each generation writes a JSON ``ready`` event once serving and
an ``exit`` event when it leaves (bench/upgrades.py reads them); that and
the options are upgrade_common.py's, shared with the other examples.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from upgrade_common import adapter_options, emit, parse_options

from fdchannel.upgrade.servers import hypercorn as upgradable

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Scope]]
Send = Callable[[Scope], Awaitable[None]]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Plain ASGI, unchanged by the upgrades."""
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


def main() -> None:
    options = parse_options(__doc__, backends=["asyncio", "uvloop", "trio"])
    drained = upgradable.run(app, **adapter_options(options, "hypercorn"))
    emit("exit", **drained.as_json())


if __name__ == "__main__":
    main()
