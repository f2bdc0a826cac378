"""A server run under the Upgrader, for the upgrade tests.

Protocol: each request is one byte; the answer is the serving pid and
generation (two be32).  Requests never split, so connections move between
generations at request boundaries: ``pause`` stops every connection
between requests and hands it over; the new generation serves it on.

Events go to stdout as JSON lines (every generation inherits the same
stdout): ``{"event": "ready", "pid": ..., "generation": ..., "port": ...,
"fds": [...]}`` and ``{"event": "exit", ...}``.

``--die-at STEP --die-once FLAG``: a new generation SIGKILLs itself at
STEP (one of the upgrader's NEW_STEPS, or "start"), once: the first to do
so creates FLAG, and later generations live.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import struct
import sys
from typing import Any

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

import fdchannel
from fdchannel.upgrade import Upgrader

ANSWER = struct.Struct(">II")


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "pid": os.getpid(), **fields}), flush=True)


def die_here(options: argparse.Namespace, step: str) -> None:
    if step != options.die_at:
        return
    if step == "start" and "FDCHANNEL_UPGRADE" not in os.environ:
        return  # the first generation is not the new one
    try:
        os.close(os.open(options.die_once, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


class Connections:
    """Every open client connection; paused between requests for a handover."""

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.streams: dict[int, fdchannel.Stream] = {}
        self.scopes: dict[int, anyio.CancelScope] = {}
        self.serving = 0
        self.idle = anyio.Event()
        self.task_group: anyio.abc.TaskGroup | None = None

    def add(self, stream: fdchannel.Stream) -> None:
        ident = max(self.streams, default=-1) + 1
        self.streams[ident] = stream
        assert self.task_group is not None
        self.task_group.start_soon(self.serve, ident)

    async def serve(self, ident: int) -> None:
        stream = self.streams[ident]
        self.serving += 1
        answer = ANSWER.pack(os.getpid(), self.generation)
        try:
            while True:
                with anyio.CancelScope() as scope:
                    self.scopes[ident] = scope
                    try:
                        await stream.receive(1)
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        await stream.aclose()
                        del self.streams[ident]
                        return
                    finally:
                        del self.scopes[ident]
                if scope.cancelled_caught:
                    return  # paused between requests: the byte not read stays in the socket
                with anyio.CancelScope(shield=True):
                    await stream.send(answer)
        finally:
            self.serving -= 1
            if not self.serving:
                self.idle.set()

    async def pause(self) -> fdchannel.FdState:
        """Stop serving between requests; what is returned goes to the next generation."""
        for scope in list(self.scopes.values()):
            scope.cancel()
        if self.serving:
            self.idle = anyio.Event()
            await self.idle.wait()
        entries = [fdchannel.NamedFd("conn", i, s.fileno()) for i, s in self.streams.items()]
        return fdchannel.FdState(entries)

    async def resume(self) -> None:
        for ident in self.streams:
            assert self.task_group is not None
            self.task_group.start_soon(self.serve, ident)

    async def close(self) -> None:
        for stream in self.streams.values():
            await stream.aclose()
        self.streams.clear()


async def accept_all(listener: fdchannel.Listener, connections: Connections) -> None:
    """Accept until the listener is closed (the next generation accepts then)."""
    while True:
        try:
            stream = await listener.accept()
        except anyio.ClosedResourceError:
            return
        connections.add(stream)


async def run(options: argparse.Namespace) -> None:
    die_here(options, "start")
    connections: Connections | None = None

    async def pause() -> fdchannel.FdState | None:
        assert connections is not None
        return await connections.pause() if options.handover else None

    async def resume() -> None:
        assert connections is not None
        await connections.resume()

    upgrader = Upgrader(
        pidfile=options.pidfile,
        control=options.control,
        pause=pause,
        resume=resume,
        progress=lambda step: die_here(options, step),
        ready_timeout=options.ready_timeout,
    )
    async with upgrader as up, anyio.create_task_group() as tg:
        connections = Connections(up.generation)
        connections.task_group = tg
        listener = await up.listen("main", options.listen)
        tg.start_soon(accept_all, listener, connections)
        if options.fail_before_ready and up.inherited:
            raise RuntimeError("the health check failed")
        with await up.ready() as handed:
            for entry in handed.fds:
                connections.add(fdchannel.Stream.from_fd(os.dup(entry.fd)))
        emit(
            "ready",
            generation=up.generation,
            port=listener.extra(SocketAttribute.local_port, None),
            fds=sorted(os.listdir("/proc/self/fd")),
        )
        await up.wait_replaced()
        await listener.aclose()  # stop accepting: the new generation does
        await connections.close()  # handed over already (or, without --handover, just closed)
    emit("exit", generation=upgrader.generation)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", default="tcp:127.0.0.1:0")
    parser.add_argument("--pidfile")
    parser.add_argument("--control")
    parser.add_argument("--handover", action="store_true")
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "uvloop", "trio"])
    parser.add_argument("--die-at")
    parser.add_argument("--die-once")
    parser.add_argument("--fail-before-ready", action="store_true")
    parser.add_argument("--ready-timeout", type=float, default=30)
    options = parser.parse_args()
    backend, backend_options = options.backend, {}
    if backend == "uvloop":
        import uvloop

        backend, backend_options = "asyncio", {"loop_factory": uvloop.new_event_loop}
    try:
        anyio.run(run, options, backend=backend, backend_options=backend_options)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
