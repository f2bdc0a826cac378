"""A plain ASGI application, served by hypercorn; upgradable by the lines at the end."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import anyio  # hypercorn runs it on asyncio or trio

Scope = MutableMapping[str, Any]


async def app(
    scope: Scope,
    receive: Callable[[], Awaitable[Scope]],
    send: Callable[[Scope], Awaitable[None]],
) -> None:
    if scope["type"] != "http":
        return  # no lifespan: the server carries on without it
    if scope["path"] == "/slow":  # /slow?ms=N answers after N ms
        await anyio.sleep(int(parse_qs(scope["query_string"].decode())["ms"][0]) / 1000)
    body = f"hello from pid {os.getpid()}\n".encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    import json
    import sys

    from fdchannel.upgrade.servers import hypercorn as upgradable

    listen, pidfile, control, loop = sys.argv[1:]
    drained = upgradable.run(app, listen=listen, loop=loop, pidfile=pidfile, control=control)
    print(json.dumps(drained.as_json()), flush=True)
