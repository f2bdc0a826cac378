"""A line server whose upgrades hand its open connections over without losing a byte.

    RUN=$(mktemp -d)       # pidfile and control socket: a directory of their own
    python examples/upgrade_lines.py --listen tcp:127.0.0.1:8300 --control $RUN/lines.ctl
    fdchannel upgrade $RUN/lines.ctl

Protocol: each request is a line, ``ID payload\\n``; the answer is
``ID pid generation\\n``, in order.  Clients pipeline: they send requests
back to back without waiting for the answers, so one read from the socket
often takes several requests, or the start of the next one.  Those bytes
have left the socket for the stream's buffer: a handover of the descriptor
alone would lose them.

The Upgrader's ``pause`` hook stops accepting and stops each connection at
a request boundary: its task is cancelled while it waits for the next
request (``receive_until`` is cancel-safe: what it read stays buffered),
and a task answering a request finishes first.  Then ``detach()`` takes
each stream's descriptor with the bytes it read but did not return, and
``pack_connections`` puts both in the state handed over.  The new
generation's ``ready()`` returns that state; ``Stream.from_fd(fd,
buffered=...)`` serves those bytes before anything read from the socket.
If the handover fails, ``resume`` wraps the detached connections again,
the same way.  No client reconnects, and every request is answered once.

Events, a JSON line each on stdout (every generation inherits it):
``{"event": "ready", "pid": ..., "generation": ..., "port": ...}`` once
accepting; ``{"event": "serving", "generation": N, "handed": K,
"buffered": B}`` in a new generation: K connections came with B bytes
read but not yet answered; ``{"event": "resumed", "generation": N,
"handed": K, "buffered": B}`` in an old one whose handover failed.  ``--probation``
and ``--die-at STEP --die-once FLAG`` are the Upgrader's probation and
the tests' fault injection (examples/upgrade_common.py).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

import anyio
import anyio.abc
from anyio.abc import SocketAttribute
from upgrade_common import die_here, emit, run_on_backend

from fdchannel import Detached, FdState, Listener, Stream, pack_connections, unpack_connections
from fdchannel.upgrade import Upgrader

#: The longest request taken; a longer one closes its connection.
MAX_LINE = 64 * 1024
#: What ends a connection: the client left, mid-line or not, or sent too long a line.
GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.IncompleteRead, anyio.DelimiterNotFound)


@dataclass(eq=False)
class Connection:
    """A client connection and what its task is doing."""

    stream: Stream
    #: Set while the task waits for the next request: the pause cancels it there.
    waiting: anyio.CancelScope | None = None
    #: Set once the task has stopped (paused, or the client left).
    done: anyio.Event = field(default_factory=anyio.Event)


class LineServer:
    """Accepts, serves each connection in a task, and hands them all over in ``pause``."""

    def __init__(self, generation: int, tasks: anyio.abc.TaskGroup) -> None:
        self.generation = generation
        self.answer = f" {os.getpid()} {generation}\n".encode()
        self.tasks = tasks
        self.connections: set[Connection] = set()
        self.paused = False
        #: What the last pause handed over: ``resume`` serves it again, or it is closed.
        self.detached: list[Detached] = []
        self.listener: Listener | None = None
        self.accepting = anyio.CancelScope()
        self.accept_done = anyio.Event()

    def start_accepting(self, listener: Listener) -> None:
        self.listener = listener
        self.paused = False
        self.accepting = anyio.CancelScope()
        self.accept_done = anyio.Event()
        self.tasks.start_soon(self._accept_all, listener)

    async def _accept_all(self, listener: Listener) -> None:
        try:
            with self.accepting:
                while True:
                    self.serve(await listener.accept())
        finally:
            self.accept_done.set()

    def serve(self, stream: Stream) -> None:
        connection = Connection(stream)
        self.connections.add(connection)
        self.tasks.start_soon(self._serve, connection)

    async def _serve(self, connection: Connection) -> None:
        stream = connection.stream
        try:
            while not self.paused:
                request = None
                with anyio.CancelScope() as connection.waiting:
                    request = await stream.receive_until(b"\n", MAX_LINE)
                connection.waiting = None
                if request is None:
                    return  # paused between requests: the next one stays in the buffer
                ident = request.partition(b" ")[0]
                await stream.send(ident + self.answer)
        except GONE:
            self.connections.discard(connection)
            await stream.aclose()
        finally:
            connection.done.set()

    async def pause(self) -> FdState:
        """The Upgrader's ``pause`` hook: stop at request boundaries, hand every connection over."""
        self.paused = True
        self.accepting.cancel()
        await self.accept_done.wait()
        for connection in self.connections:
            if connection.waiting is not None:
                connection.waiting.cancel()  # waiting for a request: stop there
        for connection in list(self.connections):
            await connection.done.wait()  # answering one: it finishes first
        self.detached = [connection.stream.detach() for connection in self.connections]
        self.connections.clear()
        return pack_connections(self.detached)

    async def resume(self) -> None:
        """The Upgrader's ``resume`` hook: the handover failed, serve everything again."""
        handed, self.detached = self.detached, []
        self.paused = False
        for fd, buffered in handed:
            self.serve(Stream.from_fd(fd, buffered=buffered))
        emit(
            "resumed",
            generation=self.generation,
            handed=len(handed),
            buffered=sum(len(c.buffered) for c in handed),
        )
        if self.listener is not None:
            self.start_accepting(self.listener)

    def close_handed(self) -> None:
        """The new generation has the connections: close this one's descriptors of them."""
        for connection in self.detached:
            os.close(connection.fd)
        self.detached = []


async def run(options: argparse.Namespace) -> None:
    die_here(options, "start")
    server: LineServer | None = None

    async def pause() -> FdState:
        assert server is not None
        return await server.pause()

    async def resume() -> None:
        assert server is not None
        await server.resume()

    upgrader = Upgrader(
        pidfile=options.pidfile,
        control=options.control,
        pause=pause,
        resume=resume,
        probation=options.probation,
        progress=lambda step: die_here(options, step),
    )
    async with upgrader as up, anyio.create_task_group() as tasks:
        server = LineServer(up.generation, tasks)
        listener = await up.listen("main", options.listen)
        with await up.ready() as handed:  # the old generation's connections (none in the first)
            connections = unpack_connections(handed).connections
            streams = [Stream.from_fd(os.dup(fd), buffered=data) for fd, data in connections]
        server.start_accepting(listener)  # only now: see Upgrader.ready
        for stream in streams:
            server.serve(stream)
        if up.inherited:
            buffered = sum(len(connection.buffered) for connection in connections)
            emit("serving", generation=up.generation, handed=len(streams), buffered=buffered)
        port = listener.extra(SocketAttribute.local_port, None)
        emit("ready", generation=up.generation, port=port)
        while True:
            await up.wait_replaced()  # paused and handed over already
            await listener.aclose()
            server.close_handed()
            if await up.settled():  # at once without --probation
                break
            # The new generation exited during its probation (with the connections
            # it was handed): this one accepts again.
            listener = await up.listen("main", options.listen)
            server.start_accepting(listener)
            emit("accepting-again", generation=up.generation)
        tasks.cancel_scope.cancel()
    emit("exit", generation=upgrader.generation)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="tcp:127.0.0.1:0", help="an fdchannel address")
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "uvloop", "trio"])
    parser.add_argument("--pidfile", help="names the serving generation")
    parser.add_argument("--control", help="a unix socket taking upgrade requests")
    parser.add_argument("--probation", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--die-at", metavar="STEP", help="tests: a new generation dies at STEP")
    parser.add_argument("--die-once", metavar="FLAG", help="tests: ... once, creating FLAG")
    options = parser.parse_args()
    run_on_backend(run, options)


if __name__ == "__main__":
    main()
