"""Live upgrade: a running server hands its sockets and memory to a new process.

``python examples/live_upgrade.py`` (what ``make demo`` runs) plays three parts:

* the **old** server: a listening TCP socket, one connection per client, and
  a memfd of ``--memory`` bytes filled with a known pattern;
* the **new** server, started while the old one serves;
* **clients**, connected to the old server, talking before, during and after.

The old server hands its descriptors over the cpr channel while it goes on
serving, as QEMU's cpr-transfer does (the guest runs until the main
channel); it only stops accepting, so that the state carries every
connection.  The new one rebuilds from the descriptors, accepts at once,
readies a task per connection it was handed, and acknowledges by closing
the cpr channel.  Then the old server connects the main channel, stops
serving, sends the rest (per-connection counters) over it, and exits; the
new one reads main and serves on the same sockets — no client sees an
error or reconnects — and checks the memory pattern it never copied.

The pause runs from the old server's stop to the new one serving, the
accept gap from the old server's last accept to the new one's first (the
connections made meanwhile wait in the listening socket's backlog); both
are read on the one monotonic clock the processes share.

Exit status 0 only if every check passed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import mmap
import os
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
from anyio.abc import SocketAttribute
from anyio.streams.buffered import BufferedByteReceiveStream

import fdchannel
from fdchannel.transports import FdAttribute

REQUEST = b"+"  # one byte: a request never splits across the handoff
RESPONSE = struct.Struct(">QI")  # the connection's counter, the serving pid
CHUNK = 1 << 20
TIMEOUT = 60
SELF = os.path.abspath(__file__)


def size(text: str) -> int:
    """A size such as 1G, 256M or 4096 (binary multiples)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def pattern_chunk(index: int) -> bytes:
    """The known content of megabyte ``index``: its number, then a fixed pseudo-random fill."""
    return index.to_bytes(8, "big") + _FILL[8:]


_FILL = hashlib.shake_256(b"fdchannel live upgrade").digest(CHUNK)


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stdout for the demo driver."""
    print(json.dumps({"event": event, **fields}), flush=True)


# --------------------------------------------------------------------------
# The servers.


@dataclass
class Connection:
    """One client connection as a server sees it."""

    stream: fdchannel.Stream
    counter: int = 0


@dataclass
class Server:
    """Serves the one-byte protocol from ``run`` until ``stop``."""

    listener: fdchannel.Listener
    #: The id the next connection accepted gets.
    next_id: int = 0
    connections: dict[int, Connection] = field(default_factory=dict)
    #: Every task of the server runs under it: ``close`` cancels them all.
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    #: The accepting task's own, so that accepting can stop first.
    accepting: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    #: When the accepting task started, and set once it has returned.
    accepting_since: float = 0.0
    accepting_done: anyio.Event = field(default_factory=anyio.Event)
    #: Set by ``resume``: connections ``add``ed with ``paused`` wait for it.
    resumed: anyio.Event = field(default_factory=anyio.Event)
    #: Set by ``stop``: a request that comes after it stays unread.
    stopped: bool = False
    #: The server's tasks, while ``run`` runs.
    tasks: anyio.abc.TaskGroup | None = None
    #: Responses being written, and what ``stop`` waits on for them.
    writing: int = 0
    written: anyio.Event | None = None

    async def serve_connection(self, conn: Connection, after: anyio.Event | None) -> None:
        if after is not None:
            await after.wait()
        while True:
            # Wait, look, then read.  (Cancelling would not do: a task whose
            # wait has ended already reads on before the cancel reaches it.)
            await anyio.wait_readable(conn.stream.fileno())
            if self.stopped:
                return  # the request stays in the socket, for the new process
            try:
                request = await conn.stream.receive(1)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return
            assert request == REQUEST
            conn.counter += 1
            self.writing += 1
            try:
                with anyio.CancelScope(shield=True):  # a request read is answered
                    await conn.stream.send(RESPONSE.pack(conn.counter, os.getpid()))
            finally:
                self.writing -= 1
                if not self.writing and self.written is not None:
                    self.written.set()

    async def accept_new(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        try:
            with self.accepting:
                self.accepting_since = time.monotonic()
                task_status.started()
                while True:
                    self.add(self.next_id, await self.listener.accept())
                    self.next_id += 1
        finally:
            self.accepting_done.set()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """``await task_group.start(server.run)``: returns once the server accepts,
        and it serves until ``close``."""
        with self.scope:
            async with anyio.create_task_group() as self.tasks:
                await self.tasks.start(self.accept_new)
                task_status.started()

    def add(self, ident: int, stream: fdchannel.Stream, *, paused: bool = False) -> Connection:
        """Serve ``stream`` as connection ``ident``; ``paused``: from ``resume`` on."""
        assert self.tasks is not None, "add() while run() runs"
        self.connections[ident] = conn = Connection(stream)
        self.tasks.start_soon(self.serve_connection, conn, self.resumed if paused else None)
        return conn

    def resume(self) -> None:
        """Serve the connections ``add``ed ``paused`` too."""
        self.resumed.set()

    async def stop_accepting(self) -> None:
        """Accept no more: connections made from now on wait in the listening
        socket's backlog.  Returns once the accepting task has ended (one that
        a connection had woken already accepts that one first)."""
        self.accepting.cancel()
        await self.accepting_done.wait()

    async def stop(self) -> None:
        """Serve no more: a task woken by a request leaves it unread, in the socket.
        Returns once no response is being written any more."""
        self.stopped = True
        if self.writing:
            self.written = anyio.Event()
            await self.written.wait()

    def close(self) -> None:
        """End every task (after ``stop``: they read nothing more)."""
        self.scope.cancel()


async def read_command() -> str:
    """The next command from the driver ("upgrade", "quit")."""
    line: str = await anyio.to_thread.run_sync(sys.stdin.readline)
    return line.strip()


async def old_server(options: argparse.Namespace) -> None:
    memfd = os.memfd_create("ram0", os.MFD_CLOEXEC)
    os.ftruncate(memfd, options.memory)
    for index in range(options.memory // CHUNK):
        os.pwrite(memfd, pattern_chunk(index), index * CHUNK)
    listener = await fdchannel.listen(fdchannel.TcpAddress("127.0.0.1", "0"))
    server = Server(listener)
    emit("ready", port=listener.extra(SocketAttribute.local_port), pid=os.getpid())
    try:
        async with (
            fdchannel.Outgoing([options.main, options.cpr], codec=options.codec) as out,
            anyio.create_task_group() as tg,
        ):
            await tg.start(server.run)
            await read_command()  # "upgrade"
            # The descriptors go on cpr while we serve on, as QEMU's guest runs
            # on until the main channel.  Accepting stops first: the state must
            # carry every connection, and the new process accepts from now on.
            stopped_accepting_at = time.monotonic()
            await server.stop_accepting()
            entries = [fdchannel.NamedFd("ram0", 0, memfd)]
            entries.append(fdchannel.NamedFd("listener", 0, listener.extra(FdAttribute.fileno)))
            entries += [
                fdchannel.NamedFd("conn", i, c.stream.fileno())
                for i, c in server.connections.items()
            ]
            ack = await out.send_cpr(fdchannel.FdState(entries), timeout=TIMEOUT)
            # The new process is ready and listens on main: connect, then stop
            # serving and hand over the rest (the counters, final now).
            await out.connect_main(timeout=TIMEOUT)
            stopped_at = time.monotonic()
            await server.stop()
            counters = {str(i): c.counter for i, c in server.connections.items()}
            main_data = json.dumps({"counters": counters, "memory": options.memory}).encode()
            await out.send_main(main_data, timeout=TIMEOUT)
            server.close()
    except* fdchannel.HandoffError as failed:
        # The rollback: we still own everything; a real server would resume
        # (accepting, and serving if it had stopped) here.
        emit("handoff-failed", error="; ".join(map(str, failed.exceptions)))
        raise SystemExit(1) from None
    emit(
        "handed-over",
        stopped_at=stopped_at,
        stopped_accepting_at=stopped_accepting_at,
        descriptors=len(entries),
        main_bytes=len(main_data),
        ack_seconds=ack.seconds,
    )
    for conn in server.connections.values():
        await conn.stream.aclose()
    await listener.aclose()
    os.close(memfd)


def check_memory(fd: int, length: int) -> bool:
    with mmap.mmap(fd, length, prot=mmap.PROT_READ) as memory:
        return all(
            memory[i * CHUNK : (i + 1) * CHUNK] == pattern_chunk(i) for i in range(length // CHUNK)
        )


async def new_server(options: argparse.Namespace) -> None:
    async with (
        fdchannel.Incoming([options.main, options.cpr]) as inc,
        anyio.create_task_group() as tg,
    ):
        await inc.listen_cpr()
        emit("listening", pid=os.getpid())
        with await inc.receive_cpr(timeout=TIMEOUT) as state:
            # Rebuild: each descriptor becomes a stream again, over a copy (the
            # state closes its own).  The listener first: the old process has
            # stopped accepting, and the connections made from now on are ours.
            connections = [e for e in state.fds if e.name == "conn"]
            listener = fdchannel.Listener.from_fd(os.dup(state.get("listener")))
            server = Server(listener, next_id=1 + max((e.id for e in connections), default=-1))
            await tg.start(server.run)
            # The old process serves these until main: ready, they wait.
            for e in connections:
                server.add(e.id, fdchannel.Stream.from_fd(os.dup(e.fd)), paused=True)
            memfd = os.dup(state.get("ram0"))
        await inc.listen_main()  # listening on main, then the close: the ack
        rest = json.loads(await inc.receive_main(timeout=TIMEOUT))
        for ident, counter in rest["counters"].items():
            server.connections[int(ident)].counter = counter
        server.resume()
        emit(
            "serving",
            started_at=time.monotonic(),
            accepting_since=server.accepting_since,
            pid=os.getpid(),
        )
        ok = await anyio.to_thread.run_sync(check_memory, memfd, rest["memory"])
        emit("memory", ok=ok, bytes=rest["memory"])
        await read_command()  # "quit"
        await server.stop()
        server.close()
    for conn in server.connections.values():
        await conn.stream.aclose()
    await listener.aclose()
    os.close(memfd)


# --------------------------------------------------------------------------
# The driver: starts both servers, plays the clients, reports.


@dataclass
class Client:
    """One client connection and what it saw."""

    stream: anyio.abc.SocketStream
    counter: int = 0
    pids: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    slowest: float = 0.0

    async def request(self) -> None:
        began = time.monotonic()
        try:
            await self.stream.send(REQUEST)
            reply = b""
            while len(reply) < RESPONSE.size:
                reply += await self.stream.receive(RESPONSE.size - len(reply))
        except Exception as exc:
            self.errors.append(repr(exc))
            return
        counter, pid = RESPONSE.unpack(reply)
        if counter != self.counter + 1:
            self.errors.append(f"counter jumped from {self.counter} to {counter}")
        self.counter = counter
        self.pids.append(pid)
        self.slowest = max(self.slowest, time.monotonic() - began)


class Child:
    """A server process driven through stdin and JSON lines on stdout."""

    def __init__(self, process: anyio.abc.Process) -> None:
        assert process.stdout is not None and process.stdin is not None
        self.process = process
        self.lines = BufferedByteReceiveStream(process.stdout)

    async def expect(self, event: str) -> dict[str, Any]:
        while True:
            line = await self.lines.receive_until(b"\n", 1 << 16)
            message: dict[str, Any] = json.loads(line)
            if message["event"] == event:
                return message
            if message["event"] == "handoff-failed":
                raise RuntimeError(f"handoff failed: {message['error']}")

    async def tell(self, command: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(command.encode() + b"\n")


async def drive(options: argparse.Namespace) -> int:
    me = [
        sys.executable,
        SELF,
        "--memory",
        str(options.memory),
        "--cpr",
        options.cpr,
        "--main",
        options.main,
        "--codec",
        options.codec,
    ]
    with anyio.fail_after(TIMEOUT * 2):
        async with (
            await anyio.open_process([*me, "--role", "old"], stderr=None) as old_process,
            await anyio.open_process([*me, "--role", "new"], stderr=None) as new_process,
        ):
            old, new = Child(old_process), Child(new_process)
            try:
                return await play(options, old, new)
            finally:
                for child in (old, new):
                    if child.process.returncode is None:
                        child.process.kill()
                    with anyio.CancelScope(shield=True):
                        await child.process.wait()


async def play(options: argparse.Namespace, old: Child, new: Child) -> int:
    ready = await old.expect("ready")
    print(
        f"old server pid {ready['pid']}: port {ready['port']}, {options.clients} clients, "
        f"{options.memory / (1 << 30):.2f} GiB of memfd memory"
    )
    clients = [
        Client(await anyio.connect_tcp("127.0.0.1", ready["port"])) for _ in range(options.clients)
    ]
    async with anyio.create_task_group() as tg:
        for client in clients:
            tg.start_soon(client.request)
    await new.expect("listening")

    # Upgrade while every client has a request in flight (--steady: while
    # every client keeps requesting, until the new process serves).
    served = anyio.Event()

    async def through_the_upgrade(client: Client) -> None:
        await client.request()
        while options.steady and not served.is_set():
            await client.request()

    async with anyio.create_task_group() as tg:
        for client in clients:
            tg.start_soon(through_the_upgrade, client)
        await old.tell("upgrade")
        handed = await old.expect("handed-over")
        serving = await new.expect("serving")
        served.set()
    async with anyio.create_task_group() as tg:
        for client in clients:
            tg.start_soon(client.request)
    newcomer = Client(await anyio.connect_tcp("127.0.0.1", ready["port"]))
    await newcomer.request()
    memory = await new.expect("memory")
    await new.tell("quit")
    old_status, new_status = await old.process.wait(), await new.process.wait()
    for client in [*clients, newcomer]:
        await client.stream.aclose()

    errors = [e for c in [*clients, newcomer] for e in c.errors]
    # A request in flight at the upgrade is answered by whichever process
    # read it; the one after must come from the new process, same connection.
    moved = all(c.pids[0] == ready["pid"] and c.pids[-1] == serving["pid"] for c in clients)
    in_flight = [pid for c in clients if len(c.pids) >= 3 for pid in c.pids[1:-1]]
    in_flight_new = in_flight.count(serving["pid"])
    pause = serving["started_at"] - handed["stopped_at"]
    gap = serving["accepting_since"] - handed["stopped_accepting_at"]
    print(f"pause (old stops serving -> new serving): {pause * 1000:.1f} ms")
    print(
        f"accept gap (old stops accepting -> new accepting): {gap * 1000:.1f} ms "
        "(connections made meanwhile wait in the listening socket's backlog)"
    )
    print(
        f"descriptors moved: {handed['descriptors']} (1 listener, {options.clients} "
        f"connections, 1 memfd); ack after {handed['ack_seconds'] * 1000:.1f} ms"
    )
    print(f"bytes on the main channel: {handed['main_bytes']}")
    print(
        f"requests in flight at the upgrade: {len(in_flight) - in_flight_new} answered "
        f"by the old process, {in_flight_new} by the new one"
    )
    print(
        f"slowest client request across the upgrade: "
        f"{max(c.slowest for c in clients) * 1000:.1f} ms"
    )
    print(
        f"memory pattern in the new process: {'intact' if memory['ok'] else 'CORRUPT'} "
        f"({memory['bytes']} bytes, none copied)"
    )
    print(
        f"client errors: {len(errors)}; reconnects: 0; every client served by the new "
        f"process on its old connection: {'yes' if moved else 'NO'}"
    )
    for error in errors[:5]:
        print(f"  error: {error}")
    ok = not errors and moved and memory["ok"] and old_status == 0 and new_status == 0
    print("live upgrade: OK" if ok else "live upgrade: FAILED")
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--memory",
        type=size,
        default=size("1G"),
        help="memfd memory to hand over (default 1G; whole megabytes)",
    )
    parser.add_argument("--clients", type=int, default=100, help="connected clients (100)")
    parser.add_argument("--cpr", help="cpr channel (default: a unix socket in a temp dir)")
    parser.add_argument("--main", help="main channel (default: a unix socket in a temp dir)")
    parser.add_argument("--codec", choices=["native", "qemu"], default="native")
    parser.add_argument(
        "--steady",
        action="store_true",
        help="clients keep requesting through the upgrade (default: one request each)",
    )
    parser.add_argument(
        "--role", choices=["demo", "old", "new"], default="demo", help=argparse.SUPPRESS
    )
    options = parser.parse_args()
    options.memory -= options.memory % CHUNK
    if options.role == "old":
        anyio.run(old_server, options)
    elif options.role == "new":
        anyio.run(new_server, options)
    else:
        with tempfile.TemporaryDirectory(prefix="fdc-demo-") as tmp:
            options.cpr = (
                options.cpr or f"cpr,addr.transport=socket,addr.type=unix,addr.path={tmp}/cpr.sock"
            )
            options.main = options.main or f"unix:{tmp}/main.sock"
            sys.exit(anyio.run(drive, options))


if __name__ == "__main__":
    main()
