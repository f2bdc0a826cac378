"""What the server adapters share: a generation's lifecycle, the drain, the accept trap.

Each adapter (``uvicorn``, ``hypercorn``, ``aiohttp``) wraps its server in
an object with five steps (``Server`` below): the application's start-up,
accepting on a socket, stopping that (without the accept trap), counting
the open connections, and closing what is left.  ``serve_generation`` runs
them around an ``Upgrader``:

1. the listener comes from ``Upgrader.listen`` (the previous generation's,
   systemd's, or bound here), and the server gets a duplicate of it;
2. the application starts, then ``Upgrader.ready()`` (the health check and,
   in a new generation, the commit), and only then does the server accept:
   a new generation killed before the commit took no connection with it;
3. once replaced (or on SIGTERM/SIGINT, or ``stop``), every response says
   ``Connection: close`` and the connection closes after it, the server
   stops accepting, and the open connections drain: each closes after its
   next response, never under a request;
4. after ``drain_timeout`` (or at a second SIGTERM/SIGINT) what is still
   open is closed: the idle keep-alive connections, and the requests still
   in flight are cut.

Step 2's accepting and step 3's stopping form the serve step
(``accept``/``stop_accepting``), which can run again on the same server.
With a probation (``Upgrader(probation=...)``) a replaced generation stops
accepting at the commit, then waits for ``Upgrader.settled()``: if the new
generation stuck, it drains (the drain timeout counts from there); if it
exited, the old generation accepts again, on the listener the upgrader kept.

This module imports no server: the adapters import theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import signal
import socket
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypedDict, TypeVar

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from ...address import Address
from ...errors import UpgradeError
from ...transports import Listener
from ..release import Variables
from ..upgrader import Upgrader

__all__ = [
    "BACKSTOP",
    "DRAIN_TIMEOUT",
    "POLL",
    "STOP_SIGNALS",
    "ASGIApp",
    "CloseWhenDraining",
    "Drained",
    "Server",
    "Serving",
    "Traffic",
    "UnsupportedServer",
    "UpgraderOptions",
    "missing_server",
    "require",
    "run_on",
    "serve_generation",
    "stop_accepting",
    "stop_watching",
]

#: Seconds a replaced generation gives its connections (default of every adapter).
DRAIN_TIMEOUT = 30.0
#: The signals that end a generation (it drains first), as uvicorn's and hypercorn's own.
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)
#: How often the drain counts the open connections: no server has an event for it.
POLL = 0.01
#: The Upgrader's own drain timeout (its backstop: it exits the process) is the
#: adapter's plus this: the adapter's graceful end (closing what is left, the
#: application's shutdown) comes first.
BACKSTOP = 5.0

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
#: An ASGI 3 application.
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
T = TypeVar("T")


class UnsupportedServer(UpgradeError):
    """This version of the server lacks what its adapter relies on (named in the message)."""


class UpgraderOptions(TypedDict, total=False):
    """The ``Upgrader``'s options, passed through by every adapter (see ``Upgrader``)."""

    command: Sequence[str] | None
    pidfile: str | os.PathLike[str] | None
    control: str | os.PathLike[str] | None
    cwd: str | os.PathLike[str] | None
    env: Variables | None
    trigger: signal.Signals | None
    start_timeout: float
    ready_timeout: float
    handover_timeout: float
    probation: float
    progress: Callable[[str], object] | None


@dataclass(frozen=True)
class Serving:
    """A generation that accepts: ``on_serving`` hears it each time accepting starts."""

    generation: int
    #: ``http://host:port/`` for TCP, ``unix:PATH`` for a unix socket.
    url: str


@dataclass(frozen=True)
class Drained:
    """How a generation ended: why, what it served, what it closed at the drain timeout."""

    generation: int
    #: ``replaced-by-PID``, the signal's name (``SIGTERM``), or ``stopped``.
    reason: str
    #: HTTP requests this generation served (or began to).
    requests: int
    #: Connections still open at the drain timeout with no request in flight, closed.
    closed_idle: int
    #: Connections still open at the drain timeout with a request (or a websocket)
    #: in flight, cut.
    cut: int

    def as_json(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "reason": self.reason,
            "requests": self.requests,
            "closed_idle": self.closed_idle,
            "cut": self.cut,
        }


class Traffic:
    """What the adapter's middleware sees: requests served and in flight, and
    whether this generation drains (then every response closes its connection)."""

    def __init__(self) -> None:
        self.draining = False
        self.requests = 0
        self.in_flight = 0
        #: The message of the application's ``lifespan.startup.failed``, if it sent one.
        self.startup_failed: str | None = None


class CloseWhenDraining:
    """ASGI middleware: count the requests, and once draining, close each
    HTTP/1 connection after its response (``connection: close``).

    The client then opens a new connection, to the generation that accepts
    now, for its next request.  Closing an idle keep-alive connection instead
    races with a request the client may be sending on it: the client reads
    an end of stream or a reset.  HTTP/2 has no such header: its responses
    pass unchanged, and its connections last until the drain timeout.  The
    lifespan passes too, its start-up failure noted (``Traffic``).
    """

    def __init__(self, app: ASGIApp, traffic: Traffic) -> None:
        self.app = app
        self.traffic = traffic

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        traffic = self.traffic
        if kind == "lifespan":
            await self.app(scope, receive, self._noting(send))
            return
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if kind == "http":
            traffic.requests += 1
        traffic.in_flight += 1
        try:
            if kind == "http" and scope.get("http_version", "1.1") in ("1.0", "1.1"):
                await self.app(scope, receive, self._closing(send))
            else:
                await self.app(scope, receive, send)
        finally:
            traffic.in_flight -= 1

    def _noting(self, send: Send) -> Send:
        traffic = self.traffic

        async def send_noting(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":
                traffic.startup_failed = str(message.get("message", ""))
            await send(message)

        return send_noting

    def _closing(self, send: Send) -> Send:
        traffic = self.traffic

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and traffic.draining:
                headers = [
                    (name, value)
                    for name, value in message.get("headers", ())
                    if name.lower() != b"connection"
                ]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        return send_closing


class Server(Protocol):
    """One server under an adapter: what ``serve_generation`` drives."""

    traffic: Traffic

    async def start(self, tasks: anyio.abc.TaskGroup) -> None:
        """Run the application's start-up (its lifespan, on_startup), accepting nothing."""

    async def accept(self, sock: socket.socket) -> None:
        """Accept on ``sock`` (a listening socket, the server's from here on)."""

    async def stop_accepting(self) -> None:
        """Stop accepting, without the accept trap (common's ``stop_accepting``); the
        listener's queue stays for the next generation."""

    def connections(self) -> int:
        """The connections open now."""

    async def close(self) -> None:
        """Close what is still open, cutting what is in flight; the application's shutdown."""


async def stop_accepting(fds: Sequence[int], close: Callable[[], Awaitable[None]]) -> None:
    """Stop the loop accepting on ``fds``, then ``close()`` the server: without the accept trap.

    asyncio's selector loop accepts queued connections in a batch and sets
    each one up in a task of its own, which attaches it to its server.  A
    server closed before such a task ran makes it fail (an assertion in
    ``Server._attach``, which asyncio swallows): the accepted connection is
    never served, and its client waits, then reads a reset.  So stop
    watching the listening sockets first: a callback already due is
    cancelled with it, and the set-up tasks already made run within the next
    loop turns; then the server can close.  uvloop accepts and attaches in
    one callback: nothing is pending there.  The sockets stay open in the
    upgrader (and the next generation), so the connections still queued wait
    for the next generation: none is lost.

    Both loops tell a new connection's protocol ``connection_made`` a turn
    after its accept, and the servers count their connections from there:
    the turns after ``close()`` let every connection accepted be counted
    before the drain looks.
    """
    await stop_watching(fds)
    await close()
    await _turns()


async def stop_watching(fds: Sequence[int]) -> None:
    """The first half of ``stop_accepting``: the selector loop stops watching ``fds``,
    and the connections it accepted are set up; the server can close then."""
    loop = asyncio.get_running_loop()
    if isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop):
        for fd in fds:
            loop.remove_reader(fd)
        await _turns()  # the set-up tasks, scheduled before this task's next step, run


async def _turns() -> None:
    """Two loop turns: what was scheduled before, and what that scheduled, runs."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def missing_server(server: str, error: ImportError) -> ImportError:
    """The ImportError for an adapter whose server is not installed."""
    return ImportError(
        f"fdchannel.upgrade.servers.{server} needs {server}: pip install {server} ({error})"
    )


def require(server: str, tested: str, where: object, *names: str) -> None:
    """Raise UnsupportedServer unless ``where`` has each of ``names`` (the adapter uses them)."""
    missing = [name for name in names if not hasattr(where, name)]
    if not missing:
        return
    try:
        version = importlib.metadata.version(server)
    except importlib.metadata.PackageNotFoundError:
        version = "(version unknown)"
    what = where.__name__ if isinstance(where, type) else type(where).__name__
    raise UnsupportedServer(
        f"{server} {version} is not supported by fdchannel.upgrade.servers.{server}: "
        f"its {what} has no {', '.join(missing)}, which the adapter relies on "
        f"(tested with {server} {tested})"
    )


def run_on(loop: str, main: Callable[[], Awaitable[T]], loops: Sequence[str], server: str) -> T:
    """``main()`` in a new event loop: asyncio, asyncio with uvloop's loop, or trio."""
    if loop not in loops:
        raise ValueError(f"{server} runs on {' or '.join(loops)}, not {loop!r}")
    if loop == "uvloop":
        import uvloop

        return anyio.run(
            main, backend="asyncio", backend_options={"loop_factory": uvloop.new_event_loop}
        )
    return anyio.run(main, backend=loop)


def running_on() -> str:
    """The event loop this task runs on: ``asyncio`` (uvloop is asyncio), ``trio`` or ``?``."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return "asyncio"
    try:
        import trio

        trio.lowlevel.current_task()
    except (ImportError, RuntimeError):
        return "?"
    return "trio"


def on_asyncio(server: str) -> None:
    """Raise RuntimeError unless running on asyncio (uvloop is asyncio)."""
    if running_on() != "asyncio":
        raise RuntimeError(f"{server} runs on asyncio (or uvloop), not on this event loop")


def url_of(listener: Listener) -> str:
    """``http://host:port/`` for a TCP listener, ``unix:PATH`` for a unix one."""
    local = listener.extra(SocketAttribute.local_address)
    if isinstance(local, tuple):
        host = f"[{local[0]}]" if ":" in local[0] else local[0]
        return f"http://{host}:{local[1]}/"
    return f"unix:{local}"


async def serve_generation(
    server: Server,
    *,
    listen: str | Address,
    name: str = "http",
    drain_timeout: float = DRAIN_TIMEOUT,
    upgrader: Upgrader | None = None,
    upgrader_options: UpgraderOptions | None = None,
    on_serving: Callable[[Serving], object] | None = None,
    stop_signals: Sequence[signal.Signals] = STOP_SIGNALS,
    stop: anyio.Event | None = None,
) -> Drained:
    """One generation of ``server``: listen, start, be ready, accept, drain (see the module).

    ``upgrader`` is an Upgrader the caller entered (with listeners of its
    own, say); without it one is made from ``upgrader_options`` and entered
    here, its own ``drain_timeout`` (a backstop that exits the process) set
    ``BACKSTOP`` seconds past ours.  The generation serves until it is
    replaced (with a probation: once the probation ended; a rollback makes
    it accept again), gets one of ``stop_signals``, or ``stop`` is set.  An
    error is raised as it is, not in an exception group.
    """
    if drain_timeout < 0:
        raise ValueError(f"drain_timeout must be >= 0, not {drain_timeout}")
    if upgrader is not None and upgrader_options:
        raise TypeError("pass the Upgrader's options to the Upgrader itself")
    try:
        async with contextlib.AsyncExitStack() as stack:
            if upgrader is None:
                made = Upgrader(drain_timeout=drain_timeout + BACKSTOP, **(upgrader_options or {}))
                upgrader = await stack.enter_async_context(made)
            return await _generation(
                server, upgrader, listen, name, drain_timeout, on_serving, stop_signals, stop
            )
    except BaseExceptionGroup as group:
        error = _only(group)
        if error is None:
            raise
        raise error from error.__cause__


def _only(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception in nested groups of one, or None."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        if len(error.exceptions) != 1:
            return None
        error = error.exceptions[0]
    return error


async def _generation(
    server: Server,
    up: Upgrader,
    listen: str | Address,
    name: str,
    drain_timeout: float,
    on_serving: Callable[[Serving], object] | None,
    stop_signals: Sequence[signal.Signals],
    stop: anyio.Event | None,
) -> Drained:
    async with await up.listen(name, listen) as listener:
        url = url_of(listener)  # the server gets duplicates of the one the upgrader holds
    held = up.listening()[name]
    why: list[str] = []
    # A list, so that ``stopped`` sees the event renewed after a rollback.
    stopping = [anyio.Event()]
    hurry = anyio.Event()  # a second signal: the drain ends at once

    def stopped(reason: str) -> None:
        if reason.startswith("SIG") and any(w.startswith("SIG") for w in why):
            hurry.set()
        why.append(reason)
        stopping[0].set()

    async with anyio.create_task_group() as tasks:
        if stop_signals:
            await tasks.start(_watch_signals, stop_signals, stopped)
        if stop is not None:
            tasks.start_soon(_watch_event, stop, stopped)
        await server.start(tasks)  # the application's start-up: part of the health check
        try:
            with await up.ready():  # the commit, in a new generation
                pass  # nothing is handed over but the listeners
        except BaseException:
            with anyio.CancelScope(shield=True):
                await server.close()  # the application's shutdown
            raise
        # The serve step: accept until told to stop, then stop accepting.  Once
        # replaced, the probation (if any) decides: the new generation stuck (drain
        # and leave), or it exited and this generation serves again, on the
        # listener the upgrader kept (the connections queued meanwhile wait there).
        while True:
            tasks.start_soon(_watch_replaced, up, stopped)
            copy = os.dup(held)
            try:
                sock = socket.socket(fileno=copy)
            except BaseException:
                os.close(copy)
                raise
            await server.accept(sock)
            if on_serving is not None:
                on_serving(Serving(up.generation, url))
            await stopping[0].wait()
            server.traffic.draining = True  # each connection closes after its next response
            await server.stop_accepting()  # the next generation (if any) accepts alone
            if not why[0].startswith("replaced-by-") or await up.settled():
                break
            # Rolled back: serve again, unless a signal or ``stop`` came meanwhile.
            why[:] = [w for w in why if not w.startswith("replaced-by-")]
            if why:
                break
            stopping[0] = anyio.Event()
            server.traffic.draining = False
        with anyio.move_on_after(drain_timeout):
            while server.connections() and not hurry.is_set():  # noqa: ASYNC110 (no event)
                await anyio.sleep(POLL)
        left = server.connections()
        cut = min(server.traffic.in_flight, left)
        with anyio.CancelScope(shield=True):
            await server.close()
        tasks.cancel_scope.cancel()
    return Drained(up.generation, why[0], server.traffic.requests, left - cut, cut)


async def _watch_signals(
    signums: Sequence[signal.Signals],
    stopped: Callable[[str], None],
    *,
    task_status: anyio.abc.TaskStatus[None],
) -> None:
    # Held open to the end: a second signal ends the drain (and SIGINT's default
    # handler would raise KeyboardInterrupt in the middle of it).
    with anyio.open_signal_receiver(*signums) as signals:
        task_status.started()
        async for signum in signals:
            stopped(signal.Signals(signum).name)


async def _watch_event(event: anyio.Event, stopped: Callable[[str], None]) -> None:
    await event.wait()
    stopped("stopped")


async def _watch_replaced(up: Upgrader, stopped: Callable[[str], None]) -> None:
    stopped(f"replaced-by-{await up.wait_replaced()}")
