"""A plain aiohttp application; upgradable by the lines at the end."""

from __future__ import annotations

import asyncio
import os

from aiohttp import web


async def hello(request: web.Request) -> web.Response:
    if request.path == "/slow":  # /slow?ms=N answers after N ms
        await asyncio.sleep(int(request.query["ms"]) / 1000)
    return web.Response(text=f"hello from pid {os.getpid()}\n")


def application() -> web.Application:
    app = web.Application()
    app.router.add_get("/{path:.*}", hello)
    return app


if __name__ == "__main__":
    import json
    import sys

    from fdchannel.upgrade.servers import aiohttp as upgradable

    listen, pidfile, control, loop = sys.argv[1:]
    drained = upgradable.run(
        application(), listen=listen, loop=loop, pidfile=pidfile, control=control
    )
    print(json.dumps(drained.as_json()), flush=True)
