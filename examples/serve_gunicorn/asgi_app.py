"""A plain ASGI application for gunicorn's uvicorn workers, as anyone would write one.

Nothing in it knows about fdchannel: ``fdchannel serve`` gives gunicorn its
sockets, ``-k uvicorn.workers.UvicornWorker`` runs it, and ``/healthz`` is
what its ``--ready`` check asks.  See docs/serve.md and README.md beside this file.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


async def app(
    scope: Scope,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    """``/healthz``: 200 once the application is up; anything else: who answered."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "http":
        return
    healthz = scope["path"] == "/healthz"
    body = b"ok\n" if healthz else f"hello from pid {os.getpid()}\n".encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
