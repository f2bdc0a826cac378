"""A small aiohttp server for the load-harness tests, run as its own process.

``python -m tests.http_target [--close-every N] [--status CODE] [--keepalive-timeout S]``

It listens on 127.0.0.1, port 0, and prints ``PORT <port>`` once it accepts
connections.  ``GET /`` answers ``ok`` with status CODE (200), with
``Connection: close`` on every Nth response (N = 0: never); an idle
keep-alive connection is closed after S seconds (75).  When its standard
input reaches its end it prints ``STATS <json>`` (requests, closes, peers:
the distinct client addresses it served) and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from aiohttp import web


async def serve(close_every: int, status: int, keepalive_timeout: float) -> None:
    counts = {"requests": 0, "closes": 0}
    peers: set[object] = set()

    async def answer(request: web.Request) -> web.Response:
        counts["requests"] += 1
        if request.transport is not None:
            peers.add(request.transport.get_extra_info("peername"))
        response = web.Response(text="ok\n", status=status)
        if close_every and counts["requests"] % close_every == 0:
            response.force_close()
            counts["closes"] += 1
        return response

    app = web.Application()
    app.router.add_get("/", answer)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=keepalive_timeout)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, shutdown_timeout=1.0)
        await site.start()
        port = runner.addresses[0][1]
        print(f"PORT {port}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.read)
        print("STATS " + json.dumps({**counts, "peers": len(peers)}), flush=True)
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.http_target")
    parser.add_argument("--close-every", type=int, default=0, metavar="N")
    parser.add_argument("--status", type=int, default=200, metavar="CODE")
    parser.add_argument("--keepalive-timeout", type=float, default=75.0, metavar="S")
    options = parser.parse_args()
    asyncio.run(serve(options.close_every, options.status, options.keepalive_timeout))


if __name__ == "__main__":
    main()
