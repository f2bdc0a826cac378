"""A gunicorn worker for ASGI applications that drains as an upgrade needs:
``-k fdchannel.upgrade.launch_gunicorn.UvicornWorker``.

uvicorn's own worker (``uvicorn.workers.UvicornWorker``), told to stop,
closes every idle keep-alive connection at once.  A client that sends its
next request on such a connection meanwhile reads an end of stream or a
reset: a failed request for clients that do not retry (wrk counts each as a
read error; 238 over 20 upgrades at 1,000 requests/s over 10 connections,
here).  This worker is uvicorn's, with the drain of the server adapters
(``fdchannel.upgrade.servers.common``): once told to stop (gunicorn's
SIGTERM, which ``fdchannel serve`` sends a replaced server), it stops
accepting (without asyncio's accept trap), each connection's next response
says ``Connection: close`` and the connection closes after it, and only
what is still open after gunicorn's ``--graceful-timeout`` (less a second)
goes to uvicorn's own shutdown.  The application is unchanged.

It relies on what uvicorn's worker and ``Server`` do not document
(``Worker._serve``, ``Server.servers``, ``Server.server_state``,
``Config.loaded_app``); tested with uvicorn 0.55 and gunicorn 27.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

from gunicorn.arbiter import Arbiter  # type: ignore[import-untyped]
from uvicorn.config import Config
from uvicorn.server import Server
from uvicorn.workers import UvicornWorker as _UvicornWorker

from .servers.common import CloseWhenDraining, Traffic, stop_accepting

__all__ = ["UvicornWorker"]

#: How often the drain counts the open connections: uvicorn has no event for it.
_POLL = 0.01


class _DrainingServer(Server):
    """uvicorn's Server, whose shutdown drains first (see the module)."""

    def __init__(self, config: Config, traffic: Traffic, drain_timeout: float) -> None:
        super().__init__(config=config)
        self.traffic = traffic
        self.drain_timeout = drain_timeout

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.traffic.draining = True  # each connection closes after its next response

        async def close() -> None:
            for server in self.servers:
                server.close()  # accepting stops; the sockets stay with the next generation

        # Then a few loop turns: a connection just accepted (uvloop tells its protocol a
        # turn later) is counted before the drain looks.
        await stop_accepting([sock.fileno() for sock in sockets or ()], close)
        deadline = time.monotonic() + self.drain_timeout
        while self.server_state.connections and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(_POLL)
        await super().shutdown(sockets=sockets)  # what is left: idle, or past the timeout


class UvicornWorker(_UvicornWorker):
    """uvicorn's gunicorn worker, closing connections between requests when it stops."""

    async def _serve(self) -> None:
        config: Config = self.config
        config.app = self.wsgi
        config.load()  # uvicorn's own wrapping first: the middleware sees ASGI 3
        traffic = Traffic()
        config.loaded_app = CloseWhenDraining(config.loaded_app, traffic)
        graceful: float = self.cfg.graceful_timeout
        # gunicorn's master SIGKILLs the workers once its graceful timeout has passed.
        server = _DrainingServer(config, traffic, max(graceful - 1.0, 0.0))
        self._install_sigquit_handler()
        sockets: Sequence[Any] = self.sockets
        await server.serve(sockets=list(sockets))
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
