"""What the upgrade examples (upgrade_anyio.py, upgrade_uvicorn.py, upgrade_hypercorn.py,
upgrade_aiohttp.py) share.

* The events every generation writes on its stdout, a JSON line each in a
  single write (generations share the pipe), which bench/upgrades.py reads::

      {"event": "ready", "pid": ..., "generation": ..., "server": ..., "backend": ...,
       "url": "http://127.0.0.1:PORT/"}
      {"event": "exit", "pid": ..., "generation": ..., "reason": "replaced-by-PID" | "SIGTERM"
       | "SIGINT", "requests": ..., ...}

* The stop conditions: a generation serves until it is replaced by the
  next one or gets SIGTERM or SIGINT, whichever comes first (the ``exit``
  line's ``reason``); then it stops accepting and drains.  The uvicorn,
  hypercorn and aiohttp examples leave all of it to their adapter in
  ``fdchannel.upgrade.servers`` (``adapter_options`` gives it these
  options and events); ``Generation`` runs that skeleton for the anyio one,
  which fills in the serving and the draining itself.

* The command-line options they share (``--listen``, ``--backend``,
  ``--pidfile``, ``--control``, ``--drain-timeout``, and for the tests
  ``--die-at STEP --die-once FLAG``), and running on the event loop
  ``--backend`` names (uvloop is asyncio with uvloop's loop).

The examples run as scripts, so this file's directory is on ``sys.path``
and they import it as ``upgrade_common``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

import fdchannel
from fdchannel.upgrade import Upgrader

if TYPE_CHECKING:
    from fdchannel.upgrade.servers import Serving

__all__ = [
    "Generation",
    "adapter_options",
    "die_here",
    "emit",
    "parse_options",
    "run_on_backend",
    "url_of",
]


def emit(event: str, **fields: object) -> None:
    """One JSON line, ``{"event": EVENT, "pid": PID, **fields}``, in a single write: a
    write of less than PIPE_BUF bytes to a pipe never mixes with another's."""
    os.write(1, json.dumps({"event": event, "pid": os.getpid(), **fields}).encode() + b"\n")


def die_here(options: argparse.Namespace, step: str) -> None:
    """Fault injection (``--die-at STEP --die-once FLAG``): a new generation SIGKILLs
    itself at STEP (one of the upgrader's NEW_STEPS, or "start"), once: the first
    to do so creates FLAG, and later generations live."""
    if step != options.die_at:
        return
    if step == "start" and "FDCHANNEL_UPGRADE" not in os.environ:
        return  # the first generation is not the new one
    try:
        os.close(os.open(options.die_once, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


def url_of(listener: fdchannel.Listener) -> str:
    """``http://host:port/`` for a TCP listener, the socket's path for a unix one."""
    local = listener.extra(SocketAttribute.local_address)
    if isinstance(local, tuple):
        host = f"[{local[0]}]" if ":" in local[0] else local[0]
        return f"http://{host}:{local[1]}/"
    return f"unix:{local}"


class Generation:
    """This process's generation, from its ``Upgrader`` to its ``exit`` line.

    Each example's ``run`` has the same shape::

        generation = Generation(options, server="anyio")
        async with generation.running() as (up, tasks):
            listener = await up.listen("http", options.listen)
            await generation.ready()  # up.ready(): the commit, in a new generation
            ...  # start accepting on it (only now: see Upgrader.ready)
            generation.serving(url_of(listener))  # the ready line
            await generation.stopped()  # replaced, or SIGTERM/SIGINT
            ...  # stop accepting, drain
        generation.exited(requests=..., closed_idle=...)
    """

    def __init__(self, options: argparse.Namespace, server: str) -> None:
        self.options = options
        self.server = server
        self.upgrader = Upgrader(
            pidfile=options.pidfile,
            control=options.control,
            progress=lambda step: die_here(options, step),
        )
        #: Set once this generation is to stop; ``why`` says why (the first reason counts).
        self.stop = anyio.Event()
        self.why: list[str] = []
        self._tasks: anyio.abc.TaskGroup | None = None

    @property
    def reason(self) -> str:
        return self.why[0] if self.why else "?"

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[tuple[Upgrader, anyio.abc.TaskGroup]]:
        """The entered Upgrader and a task group, SIGTERM/SIGINT watched; cancelled on leaving."""
        async with self.upgrader as up, anyio.create_task_group() as tasks:
            self._tasks = tasks
            await tasks.start(self._wait_for_signal)
            yield up, tasks
            tasks.cancel_scope.cancel()

    async def ready(self) -> None:
        """Tell the Upgrader this generation is healthy: in a new one, wait for the commit.

        Start accepting only once it returns: a new generation killed before
        the commit must not take connections with it.
        """
        with await self.upgrader.ready():  # nothing else is handed over: the listener came earlier
            pass

    def serving(self, url: str) -> None:
        """Print ``ready`` (this generation accepts) and watch for a successor."""
        assert self._tasks is not None, "inside running() only"
        emit(
            "ready",
            generation=self.upgrader.generation,
            server=self.server,
            backend=self.options.backend,
            url=url,
        )
        self._tasks.start_soon(self._wait_replaced)

    async def stopped(self) -> None:
        """Wait until this generation is replaced or gets SIGTERM or SIGINT."""
        await self.stop.wait()

    def exited(self, **fields: object) -> None:
        """Print the ``exit`` line: the generation, why it stopped, then ``fields``."""
        emit("exit", generation=self.upgrader.generation, reason=self.reason, **fields)

    async def _wait_for_signal(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                self.why.append(signal.Signals(signum).name)
                self.stop.set()
                return

    async def _wait_replaced(self) -> None:
        self.why.append(f"replaced-by-{await self.upgrader.wait_replaced()}")
        self.stop.set()


def parse_options(doc: str, backends: Sequence[str]) -> argparse.Namespace:
    """The shared options; the description is ``doc``'s first paragraph."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--listen", default="tcp:127.0.0.1:8080", help="an fdchannel address")
    parser.add_argument("--backend", default="asyncio", choices=list(backends))
    parser.add_argument("--pidfile", help="names the serving generation")
    parser.add_argument("--control", help="a unix socket taking upgrade requests")
    parser.add_argument("--drain-timeout", type=float, default=10.0, help="drain for at most (s)")
    parser.add_argument("--die-at", metavar="STEP", help="tests: a new generation dies at STEP")
    parser.add_argument("--die-once", metavar="FLAG", help="tests: ... once, creating FLAG")
    return parser.parse_args()


def adapter_options(options: argparse.Namespace, server: str) -> dict[str, Any]:
    """The keyword arguments of an adapter's ``run`` (fdchannel.upgrade.servers) for
    the shared options: where to listen, on what loop, the Upgrader's files and
    fault injection, and the ``ready`` event each time the generation accepts."""

    def serving(now: Serving) -> None:
        emit(
            "ready", generation=now.generation, server=server, backend=options.backend, url=now.url
        )

    return {
        "listen": options.listen,
        "loop": options.backend,
        "drain_timeout": options.drain_timeout,
        "on_serving": serving,
        "pidfile": options.pidfile,
        "control": options.control,
        "progress": lambda step: die_here(options, step),
    }


def run_on_backend(
    run: Callable[[argparse.Namespace], Awaitable[None]], options: argparse.Namespace
) -> None:
    """``run(options)`` on ``options.backend``: asyncio, trio, or asyncio with uvloop's
    loop; an interrupt exits with status 130, as a shell reports SIGINT."""
    backend: str = options.backend
    backend_options: dict[str, Any] = {}
    if backend == "uvloop":
        import uvloop

        backend, backend_options = "asyncio", {"loop_factory": uvloop.new_event_loop}
    try:
        anyio.run(run, options, backend=backend, backend_options=backend_options)
    except KeyboardInterrupt:
        sys.exit(130)
