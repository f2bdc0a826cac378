"""Upgrades that hand the open connections over too, not only the listener.

Protocol: each request is one byte; the answer is the serving pid and
generation (two be32).  Requests never split, so connections move between
generations at request boundaries: the Upgrader's ``pause`` hook stops
accepting and stops every connection between requests, detaches each
stream (``detach()``: its descriptor, and the bytes it read and did not
return: none here, as a request is read one byte at a time) and hands them
over (``pack_connections``); the new generation's ``ready()`` returns them
(``unpack_connections``) and it serves them on (``Stream.from_fd(fd,
buffered=...)``): no client reconnects, and a request in flight is answered
by whichever generation read it.  examples/upgrade_lines.py does the same
for requests of any length, read in pieces.

Events go to stdout as JSON lines (every generation inherits the same
stdout): ``{"event": "ready", "pid": ..., "generation": ..., "port": ...,
"fds": [...]}``, ``{"event": "closed", ...}`` when a client hangs up, and
``{"event": "exit", ...}``.  The tests of
``fdchannel.upgrade`` run this server (tests/upgrade/).

The pause, for ``python -m bench upgrade``: a generation that handed over
says ``{"event": "paused", "generation": N, "at": T, ...}`` once replaced,
T being ``time.monotonic()`` when its ``pause`` hook was entered; the next
says ``{"event": "serving", "generation": N + 1, "at": T, "handed": K,
...}`` once the task of each of the K connections handed to it waits for
a request.  CLOCK_MONOTONIC is one clock for every process on the host:
the pause is the difference.  The other times (``returned_at``: ``pause``
returned; ``handed_at``: the old generation saw the acknowledgement;
``acked_at``: the new one sent it; ``ready_at``: ``ready()`` returned;
``wrapped_at``: each connection became a Stream) show where it goes.

``--memory SIZE`` (``1G``, ``512M``, bytes): generation 0 fills a memfd of
SIZE bytes with a known pattern, and every handover carries it next to the
connections (a descriptor: nothing is copied).  Each later generation
reads it all back, in a thread once it serves (so not during the pause),
and says ``{"event": "memory", "generation": N, "memory_ok": true|false,
"size": SIZE, "seconds": ...}``.

``--probation SECONDS``: the old generation watches each new one that long
after the commit, having stopped accepting and closed (or handed over) its
connections; if the new one exits meanwhile, it listens again and accepts
(``{"event": "accepting-again", ...}``), with its memory, which it keeps
until the probation is over.  ``--drain-timeout SECONDS`` is the Upgrader's.

Fault injection for those tests: ``--die-at STEP --die-once FLAG`` makes a
new generation SIGKILL itself at STEP (one of the upgrader's NEW_STEPS, or
"start"), once: the first to do so creates FLAG, later generations live.
``--hold-ready FIFO`` holds a new generation before ``ready()``, and
``--hold-handover FIFO`` (with ``--switch``) an old one between taking its
snapshot and sending it, serving on, while FIFO exists and until the test
opens it for writing (each says ``{"event": "holding", ...}``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import socket
import struct
import time
from collections.abc import Iterator

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
from anyio.abc import SocketAttribute
from upgrade_common import die_here, emit, run_on_backend

# Names bound at start-up: fdchannel's first lazy attribute lookup costs
# milliseconds, which must not fall inside a pause.
from fdchannel import (
    Detached,
    FdState,
    Listener,
    NamedFd,
    Stream,
    pack_connections,
    unpack_connections,
)
from fdchannel.upgrade import Upgrader

ANSWER = struct.Struct(">II")
#: The memory is written a block at a time, and read back CHECK bytes at a
#: time: few handovers of the GIL between the checking thread and the loop.
BLOCK = 1 << 20
CHECK = 8 * BLOCK
#: Every block: its index (be64), then this pattern.
PATTERN = bytes(range(256)) * (BLOCK // 256)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def hold(fifo: str) -> None:
    """Wait for the test to open the FIFO for writing (a new generation that is slow to start)."""
    with open(fifo, "rb"):
        pass


def hold_handover(fifo: str, generation: int) -> None:
    """--hold-handover: hold while FIFO exists (the test removes it for later generations)."""
    if os.path.exists(fifo):
        emit("holding", generation=generation, step="handover")
        hold(fifo)


def parse_size(text: str) -> int:
    """``4096``, ``64K``, ``512M``, ``1G`` (binary multiples; ``iB``/``B`` allowed)."""
    digits = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = digits[-1:] if digits[-1:] in _UNITS else ""
    number = digits.removesuffix(unit) if unit else digits
    if not number.isdigit() or int(number) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 4096, 64K or 1G")
    return int(number) * _UNITS[unit]


def expected_chunks(size: int) -> Iterator[tuple[int, bytes | bytearray]]:
    """(offset, what is there) for each CHECK bytes of the memory: every block of
    BLOCK bytes holds its number (be64), then the pattern."""
    chunk = bytearray(PATTERN * (CHECK // BLOCK))
    for offset in range(0, size, CHECK):
        length = min(CHECK, size - offset)
        for start in range(0, length, BLOCK):
            chunk[start : start + 8] = struct.pack(">Q", (offset + start) // BLOCK)
        yield offset, chunk if length == CHECK else chunk[:length]


def fill_memory(size: int) -> int:
    """A memfd of ``size`` bytes holding the known pattern."""
    fd = os.memfd_create("fdchannel-upgrade-state", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        for offset, data in expected_chunks(size):
            if os.pwrite(fd, data, offset) != len(data):
                raise OSError(f"short write at {offset}")
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_memory(fd: int, size: int) -> bool:
    """Whether the memfd is ``size`` bytes long and holds the pattern everywhere."""
    if os.fstat(fd).st_size != size:
        return False
    return all(os.pread(fd, len(data), offset) == data for offset, data in expected_chunks(size))


class Connections:
    """The accept loop and every open client connection; ``pause`` stops both
    between requests for a handover, ``resume`` restarts them.

    A connection's task waits for its socket to turn readable and only then,
    unless paused, reads a request and answers it.  So ``pause`` waits only
    for the requests being answered: a task still waiting will never read.
    Waiting tasks are left alone (no cancelling a hundred tasks in a pause):
    they wait on the descriptor, not on the stream, so ``detach()`` takes the
    stream's descriptor from under them; the replaced generation ends them
    on its way out (``close``), and after a failed handover they serve on
    the streams ``resume`` wraps again.
    """

    def __init__(self, generation: int, task_group: anyio.abc.TaskGroup) -> None:
        self.generation = generation
        self.task_group = task_group
        self.streams: dict[int, Stream] = {}
        self.next_ident = 0
        self.paused = False
        #: The connections whose task runs, and how many of them answer a request now.
        self.running: set[int] = set()
        self.busy = 0
        self.quiet = anyio.Event()
        self.listener: Listener | None = None
        self.accepting: anyio.CancelScope | None = None
        self.accept_done = anyio.Event()
        #: The memfd handed on with the connections (--memory), if any.
        self.memory: int | None = None
        #: time.monotonic() when stop() (the pause hook, or the switch) was last entered.
        self.paused_at: float | None = None
        #: Connections whose task has not started yet, and the event set once none is left.
        self.starting: set[int] = set()
        self.started = anyio.Event()
        #: --switch: handed connections wait for the old generation's "go" (the gate);
        #: the old one keeps its end of the switch until it has paused.
        self.gate: anyio.Event | None = None
        self.switch: tuple[socket.socket, socket.socket] | None = None
        #: What pause() detached: served again by resume(), or closed once handed over.
        self.detached: dict[int, Detached] = {}
        #: --switch: the copies of the connections handed over (closed once sent).
        self.copies: list[int] = []
        self.switched_at: float | None = None

    def add_all(self, streams: list[Stream]) -> anyio.Event:
        """Serve ``streams``; the event is set once each one's task waits for a request."""
        self.started = anyio.Event()
        first = self.next_ident
        self.starting = set(range(first, first + len(streams)))
        if not streams:
            self.started.set()
        for stream in streams:
            self.add(stream)
        return self.started

    def add(self, stream: Stream) -> None:
        ident = self.next_ident
        self.next_ident += 1
        self.streams[ident] = stream
        self.running.add(ident)
        self.task_group.start_soon(self.serve, ident, name="serve")

    def start_accepting(self, listener: Listener) -> None:
        self.listener = listener
        self.accept_done = anyio.Event()
        self.task_group.start_soon(self.accept_all)

    async def accept_all(self) -> None:
        """Accept until paused or the listener is closed."""
        assert self.listener is not None
        try:
            with anyio.CancelScope() as self.accepting:
                while not self.paused:
                    try:
                        stream = await self.listener.accept()
                    except anyio.ClosedResourceError:
                        return
                    self.add(stream)
        finally:
            self.accept_done.set()

    async def serve(self, ident: int) -> None:
        answer = ANSWER.pack(os.getpid(), self.generation)
        if ident in self.starting:
            self.starting.discard(ident)
            if not self.starting:
                self.started.set()
        try:
            stream = self.streams.get(ident)
            if stream is None:
                return  # accepted just before a pause, and handed over before this task ran
            fd = stream.fileno()
            while not self.paused:
                try:
                    await anyio.wait_readable(fd)
                except anyio.ClosedResourceError:
                    return  # closed under us: close()
                if self.paused:
                    return  # the request stays in the socket, for the next generation
                if self.gate is not None and not self.gate.is_set():
                    await self.gate.wait()  # --switch: the old generation serves it until "go"
                found = self.streams.get(ident)  # wrapped again by resume() after a failed handover
                if found is None:
                    return  # handed over meanwhile
                stream = found
                self.busy += 1  # from here on pause() waits for the answer
                try:
                    with anyio.CancelScope(shield=True):
                        try:
                            await stream.receive(1)
                        except (anyio.EndOfStream, anyio.BrokenResourceError):
                            del self.streams[ident]  # first: aclose() lets other tasks run
                            await stream.aclose()
                            emit("closed", generation=self.generation, ident=ident)
                            return
                        await stream.send(answer)
                finally:
                    self.busy -= 1
                    if not self.busy:
                        self.quiet.set()
        finally:
            self.running.discard(ident)

    async def _stop_accepting(self) -> None:
        if self.accepting is not None:
            self.accepting.cancel()
        await self.accept_done.wait()

    async def stop(self) -> None:
        """Stop accepting and serving, between requests."""
        self.paused_at = time.monotonic()
        self.paused = True
        await self._stop_accepting()
        if self.busy:
            self.quiet = anyio.Event()
            await self.quiet.wait()

    def _state(self, connections: list[Detached], *more: NamedFd) -> FdState:
        """What goes to the next generation: ``connections``, the memory, ``more``."""
        memory = [NamedFd("memory", 0, self.memory)] if self.memory is not None else []
        return pack_connections(connections, [*memory, *more])

    async def pause(self) -> FdState:
        """Stop accepting and serving; what is returned goes to the next generation."""
        await self.stop()
        # No task is in a receive now (stop() waited for those answering).
        self.detached = {ident: stream.detach() for ident, stream in self.streams.items()}
        self.streams.clear()
        return self._state(list(self.detached.values()))

    async def snapshot(self) -> FdState:
        """--switch's pause hook: stop accepting only, and hand over copies of every
        connection (still served here) with one end of the switch."""
        await self._stop_accepting()
        self.switch = socket.socketpair()
        # Copies, not the streams' own descriptors: a connection served on
        # may close before the handover is sent, and its number be reused.
        # Nothing is buffered: a request is read one byte at a time.
        self.copies = []  # ours to close, whatever happens
        for s in self.streams.values():
            self.copies.append(os.dup(s.fileno()))
        copies = [Detached(fd, b"") for fd in self.copies]
        return self._state(copies, NamedFd("switch", 0, self.switch[1].fileno()))

    def _close_copies(self) -> None:
        for fd in self.copies:
            os.close(fd)
        self.copies = []

    async def switch_over(self) -> None:
        """--switch, once replaced: wait (serving on) until the new generation watches
        every connection ("set"), stop serving between requests, then say "go"."""
        assert self.switch is not None
        self._close_copies()  # the new generation has its own by now
        mine, theirs = self.switch
        with mine, theirs:
            theirs.close()
            with anyio.move_on_after(10):  # a new generation that never says "set" is gone
                await anyio.wait_readable(mine)
            await self.stop()  # what it hands over went in the snapshot
            with contextlib.suppress(OSError):
                mine.send(b"go")
        self.switched_at = time.monotonic()

    async def resume(self) -> None:
        """The handover failed: serve everything again (tasks still waiting just go on,
        on the streams wrapped again here)."""
        self._close_copies()
        if self.switch is not None:
            for end in self.switch:
                end.close()
            self.switch = None
        for ident, (fd, buffered) in self.detached.items():
            self.streams[ident] = Stream.from_fd(fd, buffered=buffered)
        self.detached = {}
        self.paused = False
        for ident in self.streams:
            if ident not in self.running:
                self.running.add(ident)
                self.task_group.start_soon(self.serve, ident, name="serve")
        if self.listener is not None:
            self.start_accepting(self.listener)

    async def close(self) -> None:
        """Close every connection (handed over already, or not: then the clients see it);
        tasks still waiting on one are left to the task group's cancellation."""
        self.paused = True
        self._close_copies()
        if self.accepting is not None:
            self.accepting.cancel()
        for stream in list(self.streams.values()):
            await stream.aclose()
        self.streams.clear()
        for fd, _ in self.detached.values():
            anyio.notify_closing(fd)  # wake the task still waiting on it
            os.close(fd)
        self.detached = {}

    def drop_memory(self) -> None:
        """Close the memory (kept through a probation: a rollback serves on with it)."""
        if self.memory is not None:
            os.close(self.memory)
            self.memory = None


def own_descriptors(connections: Connections) -> list[str]:
    """What this process's descriptors are, its clients' connections left out
    ("socket", "pipe", "anon_inode:[eventpoll]", a path): the same in every generation."""
    clients = {stream.fileno() for stream in connections.streams.values()}
    kinds = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:  # the descriptor listdir used
            continue
        if int(name) not in clients:
            kinds.append(target.split(":[")[0] if target[:1] != "/" else target)
    return sorted(kinds)


async def verify_memory(fd: int, size: int, generation: int) -> None:
    """Read the handed memory back in a thread (the event loop serves on) and say how it went."""
    started = time.monotonic()
    copy = os.dup(fd)  # the generation may close its own while this reads
    try:
        ok = await anyio.to_thread.run_sync(check_memory, copy, size)
    except OSError:
        ok = False
    finally:
        os.close(copy)
    emit(
        "memory",
        generation=generation,
        memory_ok=ok,
        size=size,
        seconds=round(time.monotonic() - started, 6),
    )


async def await_go(switch: Stream, gate: anyio.Event, when: list[float]) -> None:
    """--switch: say "set" (every handed connection is watched), and open the gate on
    the old generation's "go", or on its end closing: then it is gone."""
    async with switch:
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
            await switch.send(b"set")
            await switch.receive(2)
    gate.set()  # from here on this generation serves every handed connection
    when.append(time.monotonic())


async def run(options: argparse.Namespace) -> None:
    die_here(options, "start")
    connections: Connections | None = None

    async def pause() -> FdState | None:
        assert connections is not None
        if options.switch:
            state = await connections.snapshot()
            if options.hold_handover:  # tests: serve on between the snapshot and its sending
                fifo, generation = options.hold_handover, connections.generation
                await anyio.to_thread.run_sync(hold_handover, fifo, generation)
            return state
        return await connections.pause() if options.handover else None

    async def resume() -> None:
        assert connections is not None
        await connections.resume()

    steps: dict[str, float] = {}  # when the upgrader reached each step (OLD_STEPS, NEW_STEPS)

    def progress(step: str) -> None:
        steps[step] = time.monotonic()
        die_here(options, step)

    upgrader = Upgrader(
        pidfile=options.pidfile,
        control=options.control,
        pause=pause,
        resume=resume,
        progress=progress,
        ready_timeout=options.ready_timeout,
        probation=options.probation,
        drain_timeout=options.drain_timeout,
    )
    async with upgrader as up, anyio.create_task_group() as tg:
        connections = Connections(up.generation, tg)
        if options.memory and not up.inherited:
            connections.memory = fill_memory(options.memory)
        listener = await up.listen("main", options.listen)
        if options.fail_before_ready and up.inherited:
            raise RuntimeError("the health check failed")
        if options.hold_ready and up.inherited:
            emit("holding", generation=up.generation)
            await anyio.to_thread.run_sync(hold, options.hold_ready)
        # Whatever start-up allocated is there for good: a collection going
        # through it all would stall the event loop, maybe in a pause.
        gc.collect()
        gc.freeze()
        with await up.ready() as handed:
            ready_at = time.monotonic()
            streams = [
                Stream.from_fd(os.dup(fd), buffered=buffered)
                for fd, buffered in unpack_connections(handed).connections
            ]
            switch: Stream | None = None
            for entry in handed.fds:
                if entry.name == "memory":
                    connections.memory = os.dup(entry.fd)
                elif entry.name == "switch":
                    switch = Stream.from_fd(os.dup(entry.fd))
        wrapped_at = time.monotonic()
        switch_at: list[float] = []
        gate = connections.gate = anyio.Event() if switch is not None else None
        # Accept only now: a generation that dies before its commit must not
        # take connections with it (the old one accepts until the commit).
        connections.start_accepting(listener)
        started = connections.add_all(streams)
        if up.inherited:
            await started.wait()  # every handed connection has its task
            if switch is not None and gate is not None:
                await anyio.lowlevel.checkpoint()  # ... each waiting on its socket
                await await_go(switch, gate, switch_at)
            emit(
                "serving",
                generation=up.generation,
                at=time.monotonic(),
                handed=len(handed.fds),
                acked_at=steps.get("serving"),  # the handover acknowledged
                ready_at=ready_at,  # ready() returned it
                wrapped_at=wrapped_at,  # each connection a Stream
                switch_at=switch_at[0] if switch_at else None,  # --switch: "go" arrived
            )
            if options.memory:
                memory = connections.memory
                if memory is None:
                    emit("memory", generation=up.generation, memory_ok=False, size=0, seconds=0)
                else:
                    tg.start_soon(verify_memory, memory, options.memory, up.generation)
        elif connections.memory is not None:
            emit("memory", generation=0, memory_ok=True, size=options.memory, seconds=0)
        emit(
            "ready",
            generation=up.generation,
            port=listener.extra(SocketAttribute.local_port, None),
            fds=own_descriptors(connections),
        )
        while True:
            await up.wait_replaced()
            if connections.switch is not None:
                await connections.switch_over()
            if connections.paused_at is not None:
                emit(
                    "paused",
                    generation=up.generation,
                    at=connections.paused_at,
                    returned_at=steps.get("paused"),  # pause() returned
                    handed_at=steps.get("handed-over"),  # the new generation acknowledged
                    switched_at=connections.switched_at,  # --switch: "go" sent
                )
            await listener.aclose()  # stop accepting: the new generation does
            await connections.close()  # handed over already (or, without --handover, just closed)
            if await up.settled():  # the new generation stuck (at once without --probation)
                break
            # It exited during its probation: this generation is the main one again.
            listener = await up.listen("main", options.listen)
            connections.paused = False
            connections.start_accepting(listener)
            emit("accepting-again", generation=up.generation)
        connections.drop_memory()
        tg.cancel_scope.cancel()  # the tasks still waiting on a connection
    emit("exit", generation=upgrader.generation)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", default="tcp:127.0.0.1:0")
    parser.add_argument("--pidfile")
    parser.add_argument("--control")
    parser.add_argument("--handover", action="store_true")
    parser.add_argument(
        "--switch",
        action="store_true",
        help="hand the connections over early, still serving them, and switch once "
        "replaced: the pause is then only the switch",
    )
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "uvloop", "trio"])
    parser.add_argument("--die-at")
    parser.add_argument("--die-once")
    parser.add_argument("--fail-before-ready", action="store_true")
    parser.add_argument("--ready-timeout", type=float, default=30)
    parser.add_argument(
        "--probation",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="watch each new generation this long after the commit; accept again if it exits",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        metavar="SECONDS",
        help="once replaced (and the probation over), cut what is still open after SECONDS",
    )
    parser.add_argument("--hold-ready", metavar="FIFO")
    parser.add_argument(
        "--hold-handover",
        metavar="FIFO",
        help="--switch: while FIFO exists, wait for a writer between snapshot and handover",
    )
    parser.add_argument(
        "--memory",
        type=parse_size,
        metavar="SIZE",
        help="hand over a memfd of SIZE bytes (1G, 512M) with a known pattern, checked by each",
    )
    options = parser.parse_args()
    run_on_backend(run, options)


if __name__ == "__main__":
    main()
