"""The server adapters (fdchannel.upgrade.servers): plain applications, upgradable in a few lines.

Each server runs a plain application written for it (tests/upgrade/apps/),
made upgradable by the few lines at the end of its module.  Under load
(keep-alive connections and new ones, from threads with plain sockets) a
few upgrades fail no request; the drain closes keep-alive connections
between requests, and after the drain timeout closes the idle ones and
cuts what is in flight; the serve step runs again on the same server; a
server version lacking what an adapter relies on is named.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from fdchannel.errors import UpgradeFailed
from fdchannel.upgrade import Upgrader, request_upgrade
from fdchannel.upgrade.servers import Drained, Serving, UnsupportedServer, common

from .apps import aiohttp_app, hypercorn_app, uvicorn_app
from .clients import ClientThreads

APPS = Path(__file__).resolve().parent / "apps"
ROOT = APPS.parent.parent.parent
TIMEOUT = 20.0
SERVERS = ["uvicorn", "hypercorn", "aiohttp"]
LOADED = [(server, loop) for server in SERVERS for loop in ("asyncio", "uvloop")]
LOADED.append(("hypercorn", "trio"))
UPGRADES = 3


def adapter(server: str) -> ModuleType:
    """``fdchannel.upgrade.servers.SERVER``."""
    module: ModuleType = __import__(f"fdchannel.upgrade.servers.{server}", fromlist=["run"])
    return module


# ----------------------------------------------------------------------
# HTTP/1.1, the client side: enough to see every way a request can fail.


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def closes(self) -> bool:
        return self.headers.get("connection", "").lower() == "close"


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


def request_bytes(path: str = "/") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode()


class BlockingConnection:
    """One keep-alive connection over a plain socket, for the threads of ``Load``."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.buffer = b""
        try:
            self.sock.connect(path)
        except BaseException:
            self.sock.close()
            raise

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection, no response")
        self.buffer += chunk

    def request(self, path: str = "/") -> Response:
        self.sock.sendall(request_bytes(path))
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status, headers = parse_head(head)
        length = int(headers["content-length"])
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Response(status, headers, body)

    def close(self) -> None:
        self.sock.close()


@dataclass
class Load(ClientThreads):
    """Keep-alive connections requesting without pause, each from a thread, and a
    thread that opens a new connection for each request; every failure is recorded.

    A connection answered with ``Connection: close`` is closed and opened
    again: that is the drain working, not a failure.
    """

    path: str
    connections: int = 3
    errors: list[str] = field(default_factory=list)
    answered: int = 0
    closes: int = 0
    pids: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        super().__init__([self._keep_alive] * self.connections + [self._new_each_time])

    def _answered(self, response: Response) -> None:
        with self.progress:
            if response.status != 200:
                self.errors.append(f"status {response.status}")
            self.answered += 1
            self.closes += response.closes
            self.pids.add(int(response.body.split()[-1]))
            self.progress.notify_all()

    def _keep_alive(self) -> None:
        connection: BlockingConnection | None = None
        while not self.stop.is_set():
            try:
                if connection is None:
                    connection = BlockingConnection(self.path)
                response = connection.request()
            except OSError as exc:
                self.errors.append(f"keep-alive: {exc!r}")
                response = None
            if response is not None:
                self._answered(response)
            if response is None or response.closes:
                if connection is not None:
                    connection.close()
                connection = None
            self.stop.wait(0.002)  # pacing, not synchronisation
        if connection is not None:
            connection.close()

    def _new_each_time(self) -> None:
        while not self.stop.is_set():
            try:
                connection = BlockingConnection(self.path)
                try:
                    response = connection.request()
                finally:
                    connection.close()
            except OSError as exc:
                self.errors.append(f"new connection: {exc!r}")
            else:
                self._answered(response)
            self.stop.wait(0.005)  # pacing, not synchronisation

    def wait_answered(self, count: int) -> None:
        """Wait until ``count`` more requests have been answered."""
        target = self.answered + count
        self.wait_until(lambda: self.answered >= target, lambda: self.errors)


# ----------------------------------------------------------------------
# Generations of an application's module, as processes.


class Generations:
    """Generation 0 of ``apps/SERVER_app.py``, started here, and those after it.

    Readiness is heard as systemd would hear it (``READY=1`` on
    ``NOTIFY_SOCKET``); each generation prints how it drained, a JSON line.
    """

    def __init__(self, server: str, loop: str, directory: Path) -> None:
        self.listen = directory / "http.sock"
        self.control = directory / "control.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(directory / "notify.sock"))
        self.notify.settimeout(TIMEOUT)
        command = [
            sys.executable,
            str(APPS / f"{server}_app.py"),
            f"unix:{self.listen}",
            str(directory / "app.pid"),
            str(self.control),
            loop,
        ]
        env = {
            **os.environ,
            "NOTIFY_SOCKET": str(directory / "notify.sock"),
            "PYTHONPATH": str(ROOT),
        }
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, text=True
        )
        self.pidfds = {self.process.pid: os.pidfd_open(self.process.pid)}
        # Read all along: uvicorn's access log goes to stdout, and a full pipe would
        # block the generation writing to it.
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        self.lines.extend(self.process.stdout)

    def ready(self) -> None:
        """Wait for generation 0's READY=1."""
        while b"READY=1" not in self.notify.recv(4096).split(b"\n"):
            pass

    def upgrade(self) -> int:
        """One upgrade through the control socket; the new generation's pid."""
        pid: int = request_upgrade(self.control, timeout=TIMEOUT)["pid"]
        self.pidfds[pid] = os.pidfd_open(pid)
        return pid

    def wait_exited(self, pids: list[int]) -> list[int]:
        """Wait for ``pids`` to exit; those still running after TIMEOUT."""
        left = list(pids)
        while left:
            ready, _, _ = select.select([self.pidfds[pid] for pid in left], [], [], TIMEOUT)
            if not ready:
                break
            left = [pid for pid in left if self.pidfds[pid] not in ready]
        return left

    def terminate(self, pid: int) -> None:
        signal.pidfd_send_signal(self.pidfds[pid], signal.SIGTERM)

    def outcomes(self) -> list[dict[str, Any]]:
        """Every generation's JSON line, once all have exited and the pipe ended."""
        self.reader.join(TIMEOUT)
        assert not self.reader.is_alive(), "something still holds the generations' stdout"
        # Generations share the pipe: another's log line may follow a JSON object
        # before its newline (each object is one write, so never inside it).
        decode = json.JSONDecoder().raw_decode
        return [decode(line)[0] for line in self.lines if line.startswith("{")]

    def close(self) -> None:
        for pidfd in self.pidfds.values():
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            os.close(pidfd)
        self.process.wait(TIMEOUT)
        self.reader.join(TIMEOUT)
        assert self.process.stdout is not None
        self.process.stdout.close()
        self.notify.close()


@pytest.mark.parametrize(("server", "loop"), LOADED, ids=[f"{s}-{lo}" for s, lo in LOADED])
def test_upgrades_under_load_fail_no_request(sockdir: Path, server: str, loop: str) -> None:
    generations = Generations(server, loop, sockdir)
    try:
        generations.ready()
        pids = [generations.process.pid]
        with Load(str(generations.listen)).running() as load:
            load.wait_answered(50)
            for _ in range(UPGRADES):
                pids.append(generations.upgrade())
                load.wait_answered(50)
            # Each replaced generation drained under the load and exited by itself.
            assert generations.wait_exited(pids[:-1]) == []
            load.wait_answered(50)
        generations.terminate(pids[-1])
        assert generations.wait_exited(pids[-1:]) == []
        assert generations.process.wait(TIMEOUT) == 0
        outcomes = generations.outcomes()
    finally:
        generations.close()

    assert load.errors == []
    assert load.pids == set(pids), "every generation answered"
    # The keep-alive connections moved on through Connection: close, never a reset.
    assert load.closes >= UPGRADES * load.connections
    assert [o["generation"] for o in outcomes] == list(range(UPGRADES + 1))
    reasons = [f"replaced-by-{pid}" for pid in pids[1:]] + ["SIGTERM"]
    assert [o["reason"] for o in outcomes] == reasons
    assert all(o["closed_idle"] == o["cut"] == 0 for o in outcomes), outcomes
    assert sum(o["requests"] for o in outcomes) >= load.answered


def test_the_docs_show_these_files() -> None:
    # docs/servers.md shows each application file whole, to be copied: this one.
    docs = (ROOT / "docs" / "servers.md").read_text()
    for server in SERVERS:
        caption = f"`tests/upgrade/apps/{server}_app.py`, run by `tests/upgrade/test_adapters.py`:"
        shown = docs.split(caption, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
        assert shown == (APPS / f"{server}_app.py").read_text(), server


def test_upgradable_in_ten_lines() -> None:
    for server in SERVERS:
        text = (APPS / f"{server}_app.py").read_text()
        added = text[text.index('if __name__ == "__main__":') :].splitlines()
        code = [line for line in added if line.strip()]
        assert len(code) <= 10, f"{server}: {len(code)} lines"
        assert f"from fdchannel.upgrade.servers import {server} as upgradable" in text


# ----------------------------------------------------------------------
# One generation in this process: the drain, the serve step, the checks.


def application(server: str) -> Any:
    """A new instance of the server's plain application."""
    made: dict[str, Callable[[], Any]] = {
        "uvicorn": lambda: uvicorn_app.app,
        "hypercorn": lambda: hypercorn_app.app,
        "aiohttp": aiohttp_app.application,
    }
    return made[server]()


#: Each adapter's options for the server, in this process: uvicorn leaves logging as it is.
QUIET: dict[str, dict[str, Any]] = {
    "uvicorn": {"options": {"log_config": None}},
    "hypercorn": {},
    "aiohttp": {"options": {"access_log": None}},
}


class Connection:
    """One keep-alive connection, from the test's own loop."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.buffered = BufferedByteReceiveStream(stream)

    @classmethod
    async def open(cls, path: Path) -> Connection:
        return cls(await anyio.connect_unix(path))

    async def send(self, path: str = "/") -> None:
        await self.stream.send(request_bytes(path))

    async def response(self) -> Response:
        status, headers = parse_head(await self.buffered.receive_until(b"\r\n\r\n", 65536))
        body = await self.buffered.receive_exactly(int(headers["content-length"]))
        return Response(status, headers, body)

    async def request(self, path: str = "/") -> Response:
        await self.send(path)
        return await self.response()

    async def rest(self) -> bytes:
        """Everything until the server closes the connection."""
        received = self.buffered.buffer
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
            while True:
                received += await self.stream.receive()
        return received

    async def closed(self) -> bool:
        """Whether the server closed it (an end of stream, or a reset)."""
        try:
            return await self.stream.receive() == b""
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return True

    async def aclose(self) -> None:
        await self.stream.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("server", SERVERS)
async def test_drain_closes_between_requests_then_idle_and_cut(
    anyio_backend: tuple[str, dict[str, Any]], sockdir: Path, server: str
) -> None:
    path = sockdir / "http.sock"
    stop = anyio.Event()
    serving = anyio.Event()
    served: list[Serving] = []

    def accepting(now: Serving) -> None:
        served.append(now)
        serving.set()

    if anyio_backend[0] == "trio" and server != "hypercorn":
        with pytest.raises(RuntimeError, match=f"{server} runs on asyncio"):
            await adapter(server).serve(application(server), listen=f"unix:{path}")
        return
    outcome: list[Drained] = []

    async def serve() -> None:
        outcome.append(
            await adapter(server).serve(
                application(server),
                listen=f"unix:{path}",
                drain_timeout=1.0,
                stop=stop,
                stop_signals=(),
                on_serving=accepting,
                trigger=None,
                **QUIET[server],
            )
        )

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(serve)
            await serving.wait()
            idle, next_one, quick, slow = [await Connection.open(path) for _ in range(4)]
            try:
                for connection in (idle, next_one, quick, slow):  # each one accepted
                    response = await connection.request()
                    assert response.status == 200 and not response.closes
                await quick.send("/slow?ms=300")  # finishes within the drain timeout
                await slow.send("/slow?ms=20000")  # does not
                stop.set()
                response = await quick.response()
                assert response.status == 200 and response.closes  # draining by now
                assert await quick.closed()
                response = await next_one.request()  # its next request, while draining
                assert response.status == 200 and response.closes
                assert await next_one.closed()
                # After the timeout: the idle connection is closed, the slow request cut.
                assert await idle.closed()
                cut = await slow.rest()
                assert not cut.startswith(b"HTTP/1.1 200"), cut  # nothing, or an error
            finally:
                for connection in (idle, next_one, quick, slow):
                    await connection.aclose()
    assert served == [Serving(0, f"unix:{path}")]
    assert outcome == [Drained(0, "stopped", 7, closed_idle=1, cut=1)]


@pytest.mark.anyio
@pytest.mark.parametrize("server", SERVERS)
async def test_a_second_signal_ends_the_drain(
    anyio_backend: tuple[str, dict[str, Any]], sockdir: Path, server: str
) -> None:
    if anyio_backend[0] == "trio" and server != "hypercorn":
        pytest.skip(f"{server} runs on asyncio")
    path = sockdir / "http.sock"
    serving = anyio.Event()
    outcome: list[Drained] = []

    async def serve() -> None:
        outcome.append(
            await adapter(server).serve(
                application(server),
                listen=f"unix:{path}",
                drain_timeout=TIMEOUT * 2,  # longer than the test may take
                stop_signals=(signal.SIGUSR1,),
                on_serving=lambda _: serving.set(),
                trigger=None,
                **QUIET[server],
            )
        )

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(serve)
            await serving.wait()
            idle, asking = await Connection.open(path), await Connection.open(path)
            try:
                for connection in (idle, asking):
                    assert not (await connection.request()).closes
                os.kill(os.getpid(), signal.SIGUSR1)  # drain
                while not (await asking.request()).closes:  # once the signal is in
                    pass
                os.kill(os.getpid(), signal.SIGUSR1)  # now
                assert await idle.closed()
            finally:
                await idle.aclose()
                await asking.aclose()
    assert [(d.reason, d.closed_idle, d.cut) for d in outcome] == [("SIGUSR1", 1, 0)]


@pytest.mark.anyio
@pytest.mark.parametrize("server", SERVERS)
async def test_the_serve_step_runs_again(
    anyio_backend: tuple[str, dict[str, Any]], sockdir: Path, server: str
) -> None:
    # After a rollback the old generation accepts again: accept, stop accepting,
    # accept again, on the same server, with the queue kept in between.
    trio = anyio_backend[0] == "trio"
    if trio and server != "hypercorn":
        pytest.skip(f"{server} runs on asyncio")
    servers = {
        "uvicorn": "_Uvicorn",
        "hypercorn": "_OnTrio" if trio else "_OnAsyncio",
        "aiohttp": "_Aiohttp",
    }
    options = QUIET[server].get("options")
    made: common.Server = getattr(adapter(server), servers[server])(application(server), options)
    path = sockdir / "http.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listening:
        listening.bind(str(path))
        listening.listen()

        def duplicate() -> socket.socket:
            return socket.socket(fileno=os.dup(listening.fileno()))

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tasks:
                await made.start(tasks)
                await made.accept(duplicate())
                first = await Connection.open(path)
                assert (await first.request()).status == 200
                made.traffic.draining = True
                await made.stop_accepting()
                assert (await first.request()).closes
                assert await first.closed()
                await first.aclose()
                queued = await Connection.open(path)  # waits in the queue: nobody accepts
                await queued.send()
                made.traffic.draining = False
                await made.accept(duplicate())
                response = await queued.response()
                assert response.status == 200 and not response.closes
                await queued.aclose()
                await made.close()
                tasks.cancel_scope.cancel()
    assert made.traffic.requests == 3


#: (server, loop) for the rollback: the old generation runs on the test's loop.
ROLLED_BACK = [("uvicorn", "asyncio"), ("hypercorn", "trio"), ("aiohttp", "uvloop")]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("server", "loop"), ROLLED_BACK, ids=[f"{s}-{lo}" for s, lo in ROLLED_BACK]
)
async def test_a_generation_that_crashes_on_probation_is_rolled_back_under_load(
    anyio_backend: tuple[str, dict[str, Any]], sockdir: Path, server: str, loop: str
) -> None:
    """Generation 0 here, under load, with a probation; generation 1 (a process,
    made to crash 1 s after ready() by tests/upgrade/crashing.py) is rolled back,
    and generation 0 serves again: no request fails but on the connections the
    crashed one held."""
    name, options = anyio_backend
    if ("uvloop" if "loop_factory" in options else name) != loop:
        pytest.skip(f"{server} is tried on {loop}")
    path, control, held = sockdir / "http.sock", sockdir / "control.sock", sockdir / "held.json"
    crashing = [sys.executable, str(APPS.parent / "crashing.py"), "--after", "1"]
    crashing += ["--once", str(sockdir / "once"), "--held", str(held), "--"]
    app = [sys.executable, str(APPS / f"{server}_app.py"), f"unix:{path}"]
    command = [*crashing, *app, str(sockdir / "app.pid"), str(control), loop]
    stop = anyio.Event()
    serving = [anyio.Event(), anyio.Event()]
    served: list[Serving] = []

    def accepting(now: Serving) -> None:
        serving[len(served)].set()
        served.append(now)

    load = Load(str(path))
    outcome: list[Drained] = []

    async def serve() -> None:
        outcome.append(
            await adapter(server).serve(
                application(server),
                listen=f"unix:{path}",
                stop=stop,
                stop_signals=(),
                on_serving=accepting,
                trigger=None,
                command=command,
                control=control,
                pidfile=sockdir / "app.pid",
                probation=10,
                **QUIET[server],
            )
        )

    def stop_load() -> None:
        load.stop.set()
        for thread in load.threads:
            thread.join(TIMEOUT)

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(serve)
            await serving[0].wait()
            for thread in load.threads:  # the clients block: in threads, not in our loop
                thread.start()
            try:
                await anyio.to_thread.run_sync(load.wait_answered, 20)
                with pytest.raises(UpgradeFailed, match="rolled back: the new generation"):
                    await anyio.to_thread.run_sync(
                        partial(request_upgrade, control, timeout=TIMEOUT)
                    )
                await serving[1].wait()
                await anyio.to_thread.run_sync(load.wait_answered, 20)
            finally:
                await anyio.to_thread.run_sync(stop_load)
            again = await Connection.open(path)  # a new connection: accepted here
            try:
                assert (await again.request()).body == f"hello from pid {os.getpid()}\n".encode()
            finally:
                await again.aclose()
            stop.set()
    assert served == [Serving(0, f"unix:{path}")] * 2
    assert [d.reason for d in outcome] == ["stopped"]
    crashed = len(json.loads(held.read_text()))  # the connections the crashed one held
    assert len(load.errors) <= crashed, load.errors
    assert len(load.pids) == 2, "the crashed generation served before it crashed"


async def failing_start(scope: Any, receive: Any, send: Any) -> None:
    """An ASGI application whose start-up fails."""
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})


def failing(server: str) -> Any:
    """An application of the server's whose start-up fails."""
    if server != "aiohttp":
        return failing_start

    async def no_database(app: Any) -> None:
        raise ConnectionError("no database")

    app = aiohttp_app.application()
    app.on_startup.append(no_database)
    return app


@pytest.mark.anyio
@pytest.mark.parametrize("server", SERVERS)
async def test_a_failed_start_is_raised_and_nothing_accepts(
    anyio_backend: tuple[str, dict[str, Any]], sockdir: Path, server: str
) -> None:
    # In a new generation, the error leaving the Upgrader is the failure the old one hears.
    if anyio_backend[0] == "trio" and server != "hypercorn":
        pytest.skip(f"{server} runs on asyncio")
    served: list[Serving] = []
    with anyio.fail_after(TIMEOUT), pytest.raises(Exception, match=r"start-up failed|no database"):
        await adapter(server).serve(
            failing(server),
            listen=f"unix:{sockdir / 'http.sock'}",
            stop_signals=(),
            on_serving=served.append,
            trigger=None,
            **QUIET[server],
        )
    assert served == []
    assert not (sockdir / "http.sock").exists()  # the upgrader removed what it bound


@pytest.mark.anyio
@pytest.mark.parametrize("server", SERVERS)
async def test_serve_with_an_upgrader_of_ones_own(
    anyio_backend: tuple[str, dict[str, Any]], sockdir: Path, server: str
) -> None:
    if anyio_backend[0] == "trio" and server != "hypercorn":
        pytest.skip(f"{server} runs on asyncio")
    stop = anyio.Event()
    served: list[Serving] = []

    async def request_then_stop(now: Serving) -> None:
        served.append(now)
        connection = await Connection.open(sockdir / "http.sock")
        try:
            assert (await connection.request()).status == 200
        finally:
            await connection.aclose()
        stop.set()

    with anyio.fail_after(TIMEOUT):
        async with Upgrader(trigger=None) as up, anyio.create_task_group() as tasks:
            other = await up.listen("other", f"unix:{sockdir / 'other.sock'}")
            with pytest.raises(TypeError, match="Upgrader's options"):
                await adapter(server).serve(
                    application(server), listen="unix:x", upgrader=up, pidfile="x"
                )
            drained = await adapter(server).serve(
                application(server),
                listen=f"unix:{sockdir / 'http.sock'}",
                upgrader=up,
                stop=stop,
                stop_signals=(),
                on_serving=lambda now: tasks.start_soon(request_then_stop, now),
                **QUIET[server],
            )
            assert set(up.listening()) == {"other", "http"}
            await other.aclose()
    assert drained == Drained(0, "stopped", 1, closed_idle=0, cut=0)
    assert len(served) == 1


def _uvicorn_server() -> object:
    import uvicorn

    return uvicorn.Server


def _hypercorn_part() -> object:
    import hypercorn.asyncio.tcp_server

    return hypercorn.asyncio.tcp_server


def _aiohttp_server() -> object:
    from aiohttp import web

    return web.Server


MISSING: list[tuple[str, Callable[[], object], str, object]] = [
    ("uvicorn", _uvicorn_server, "capture_signals", None),
    ("uvicorn", _uvicorn_server, "main_loop", None),
    ("hypercorn", _hypercorn_part, "TCPServer", lambda app, config, reader, writer: None),
    ("aiohttp", _aiohttp_server, "connections", None),
]


@pytest.mark.parametrize(
    ("server", "where", "name", "replacement"), MISSING, ids=[f"{m[0]}-{m[2]}" for m in MISSING]
)
def test_a_server_lacking_what_the_adapter_uses_is_named(
    monkeypatch: pytest.MonkeyPatch,
    server: str,
    where: Callable[[], object],
    name: str,
    replacement: object,
) -> None:
    module = adapter(server)
    module.check()  # this version has it all
    if replacement is None:
        monkeypatch.delattr(where(), name)
    else:
        monkeypatch.setattr(where(), name, replacement)
    with pytest.raises(UnsupportedServer, match=f"{server}.*{name}.*tested with {server}"):
        module.check()


def test_the_package_imports_without_the_servers() -> None:
    code = """
import sys
for server in ("uvicorn", "hypercorn", "aiohttp"):
    sys.modules[server] = None  # as if not installed
import fdchannel.upgrade.servers as servers
print(servers.Drained.__name__)
for server in ("uvicorn", "hypercorn", "aiohttp"):
    try:
        __import__("fdchannel.upgrade.servers." + server)
    except ImportError as exc:
        print(exc)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, check=True
    ).stdout.splitlines()
    assert out[0] == "Drained"
    for line, server in zip(out[1:], SERVERS, strict=True):
        assert line.startswith(f"fdchannel.upgrade.servers.{server} needs {server}: pip install")
