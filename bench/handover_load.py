"""Pipelined connections across upgrades: the handover must lose, repeat and reorder nothing.

examples/upgrade_lines.py runs on one event loop, and ``connections``
clients (plain non-blocking sockets, one thread in a process of their
own) each keep WINDOW requests in flight, ``ID payload\\n`` with 0 to
MAX_PAYLOAD bytes of payload, written in pieces of random size that cut
requests anywhere: so the server's reads end mid-request and take several
requests at once, and a pause finds bytes in its streams' buffers.  The
server is upgraded ``upgrades`` times; after each, every connection must
be answered by the new generation before the next.  Each answer must
name the oldest request in flight on its connection (``ID pid
generation``): a request lost, repeated or garbled by a handover breaks
that at once, as does an answer from an older generation than the last,
or a connection closed or reset (clients never reconnect).  At the end
the clients stop sending, and every request in flight must be answered.

With ``fail_first``, the first upgrade's new generation is killed once it
has received the connections and before it acknowledges them: the old
generation's ``resume`` must serve them on, their buffered bytes first.

tests/upgrade/test_handover_load.py runs 200 connections and 15 upgrades
on each event loop; ``python -m bench.handover_load`` (and ``make stress``,
through bench/stress.py) 1,000 connections and 50 upgrades, and prints
the figures.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import random
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from fdchannel.errors import UpgradeFailed
from fdchannel.upgrade import request_upgrade

from ._loops import LOOPS, Loop
from .upgrades import EXAMPLES, Generations

__all__ = ["SCRIPT", "LineClients", "Outcome", "drive", "main"]

SCRIPT = EXAMPLES / "upgrade_lines.py"
#: Where ``python -m bench`` runs (the clients' process imports this module).
ROOT = EXAMPLES.parent
#: Requests each connection keeps in flight.
WINDOW = 4
#: The largest payload of a request (bytes).
MAX_PAYLOAD = 3000
#: The largest piece written at once: most pieces end inside a request.
MAX_PIECE = 4096
PAYLOAD = bytes(range(ord("a"), ord("z") + 1)) * (MAX_PAYLOAD // 26 + 1)
#: Errors kept (the first ones tell what happened; the count is kept whole).
KEPT_ERRORS = 20
TIMEOUT = 60.0


@dataclass(eq=False)
class Connection:
    """One client connection: what it sent, what is in flight, who answered it."""

    index: int
    sock: socket.socket
    #: Requests queued so far, and answered.
    sent: int = 0
    answered: int = 0
    #: (sequence number, time queued) of each request not answered yet, oldest first.
    in_flight: collections.deque[tuple[int, float]] = field(default_factory=collections.deque)
    #: Bytes queued but not written yet, and bytes received but not parsed yet.
    out: bytearray = field(default_factory=bytearray)
    received: bytearray = field(default_factory=bytearray)
    #: The generation of the last answer (-1: none yet), and of every answer.
    generation: int = -1
    generations: set[int] = field(default_factory=set)
    broken: bool = False
    writing: bool = False


class LineClients:
    """``count`` pipelining connections to ``address``, served by one thread."""

    def __init__(self, address: tuple[str, int], count: int, *, seed: int = 0) -> None:
        self.address = address
        self.count = count
        self.rng = random.Random(seed)
        self.connections: list[Connection] = []
        self.errors: list[str] = []
        self.error_count = 0
        self.slowest = 0.0
        #: How many connections were answered last by each generation (-1: none yet).
        self.at: collections.Counter[int] = collections.Counter({-1: count})
        self.changed = threading.Condition()
        self.sending = True
        self.drained = False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="line-clients", daemon=True)

    # ------------------------------------------------------------------
    # What the test or the benchmark asks.

    @contextlib.contextmanager
    def running(self) -> Iterator[LineClients]:
        """Connect every client and request until the block ends (or ``drain()``)."""
        self.thread.start()
        try:
            yield self
        finally:
            self.stop.set()
            self.thread.join(TIMEOUT)

    def wait_answered_by(self, generation: int, timeout: float = TIMEOUT) -> str | None:
        """Wait until every connection's last answer came from ``generation`` or a later
        one; None, or why not."""

        def behind() -> int:
            return sum(n for g, n in self.at.items() if g < generation)

        with self.changed:
            self.changed.wait_for(lambda: self.errors or not behind(), timeout)
            if self.errors:
                return f"client errors: {self.errors[0]}"
            if behind():
                return (
                    f"{behind()} of {self.count} connections not answered by generation "
                    f"{generation} within {timeout:g} s"
                )
        return None

    def drain(self, timeout: float = TIMEOUT) -> str | None:
        """Stop sending new requests and wait for every answer; None, or why not."""
        self.sending = False
        with self.changed:
            if not self.changed.wait_for(lambda: self.drained or self.errors, timeout):
                left = sum(len(c.in_flight) for c in self.connections)
                return f"{left} requests still unanswered after {timeout:g} s"
        return None

    def figures(self) -> dict[str, Any]:
        """What they did (once stopped): requests sent and answered, the slowest
        answer (s), errors, and the generations that answered each connection."""
        return {
            "sent": sum(c.sent for c in self.connections),
            "answered": sum(c.answered for c in self.connections),
            "slowest": self.slowest,
            "errors": self.errors,
            "error_count": self.error_count,
            "generations": [sorted(c.generations) for c in self.connections],
        }

    # ------------------------------------------------------------------
    # The client thread.

    def _fail(self, connection: Connection, why: str) -> None:
        connection.broken = True
        with self.changed:
            self.error_count += 1
            if len(self.errors) < KEPT_ERRORS:
                self.errors.append(f"connection {connection.index}: {why}")
            self.changed.notify_all()

    def _queue(self, connection: Connection, now: float) -> None:
        """Top the connection's window up with new requests."""
        while self.sending and len(connection.in_flight) < WINDOW:
            seq = connection.sent
            connection.sent += 1
            payload = PAYLOAD[: self.rng.randrange(MAX_PAYLOAD + 1)]
            connection.out += b"%d.%d %s\n" % (connection.index, seq, payload)
            connection.in_flight.append((seq, now))

    def _write(self, connection: Connection) -> None:
        """One piece of random length (a request cut anywhere), as much as the socket takes."""
        piece = memoryview(connection.out)[: self.rng.randint(1, MAX_PIECE)]
        try:
            written = connection.sock.send(piece)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            self._fail(connection, f"send: {exc!r}")
            return
        finally:
            piece.release()
        del connection.out[:written]

    def _read(self, connection: Connection, now: float) -> None:
        try:
            data = connection.sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(connection, f"recv: {exc!r}")
            return
        if not data:
            self._fail(connection, "the server closed the connection")
            return
        connection.received += data
        while not connection.broken and (end := connection.received.find(b"\n")) >= 0:
            answer = bytes(connection.received[:end])
            del connection.received[: end + 1]
            self._check(connection, answer, now)

    def _check(self, connection: Connection, answer: bytes, now: float) -> None:
        """An answer must name the oldest request in flight, from no older generation."""
        if not connection.in_flight:
            self._fail(connection, f"an answer to no request: {answer!r}")
            return
        seq, queued = connection.in_flight.popleft()
        fields = answer.split(b" ")
        expected = b"%d.%d" % (connection.index, seq)
        if len(fields) != 3 or fields[0] != expected or not fields[2].isdigit():
            self._fail(connection, f"expected an answer to {expected!r}, got {answer!r}")
            return
        generation = int(fields[2])
        if generation < connection.generation:
            self._fail(
                connection, f"answered by generation {generation} after {connection.generation}"
            )
            return
        connection.answered += 1
        self.slowest = max(self.slowest, now - queued)
        if generation != connection.generation:
            with self.changed:
                self.at[connection.generation] -= 1
                self.at[generation] += 1
                self.changed.notify_all()
            connection.generation = generation
            connection.generations.add(generation)

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        try:
            for index in range(self.count):
                sock = socket.create_connection(self.address, timeout=TIMEOUT)
                sock.setblocking(False)
                connection = Connection(index, sock)
                self.connections.append(connection)
                selector.register(sock, selectors.EVENT_READ, connection)
            now = time.monotonic()
            for connection in self.connections:
                self._queue(connection, now)
                self._want_write(selector, connection)
            while not self.stop.is_set():
                self._serve(selector)
        except OSError as exc:
            with self.changed:
                self.errors.append(f"setup: {exc!r}")
                self.changed.notify_all()
        finally:
            selector.close()
            for connection in self.connections:
                connection.sock.close()

    def _serve(self, selector: selectors.BaseSelector) -> None:
        events = selector.select(0.1)
        now = time.monotonic()
        for key, mask in events:
            connection: Connection = key.data
            if mask & selectors.EVENT_READ and not connection.broken:
                self._read(connection, now)
                self._queue(connection, now)
            if connection.out and not connection.broken:
                self._write(connection)
            if connection.broken:
                selector.unregister(connection.sock)
            else:
                self._want_write(selector, connection)
        if self.sending or self.drained:
            return
        if all(not c.in_flight and not c.out for c in self.connections):
            with self.changed:
                self.drained = True
                self.changed.notify_all()

    @staticmethod
    def _want_write(selector: selectors.BaseSelector, connection: Connection) -> None:
        """Watch for room to write only while there is something to write."""
        writing = bool(connection.out)
        if writing != connection.writing:
            connection.writing = writing
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0)
            selector.modify(connection.sock, events, connection)


class ClientProcess:
    """LineClients in a process of their own, asked over its stdin and stdout.

    Its sockets stay out of this process (whose select()-based waits on the
    generations take descriptors below 1024 only), and its thread takes no
    GIL from whoever drives the upgrades.
    """

    def __init__(self, address: tuple[str, int], count: int, seed: int) -> None:
        host, port = address
        command = [sys.executable, "-m", "bench.handover_load", "clients", host, str(port)]
        self.process = subprocess.Popen(
            [*command, str(count), str(seed)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.selector = selectors.DefaultSelector()
        assert self.process.stdout is not None
        self.selector.register(self.process.stdout, selectors.EVENT_READ)

    def _ask(self, timeout: float, *command: object) -> dict[str, Any]:
        """Send a command, and wait (bounded) for its answer."""
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            self.process.stdin.write(" ".join(map(str, command)) + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            return {"why": f"the clients' process exited ({self.process.poll()})"}
        if not self.selector.select(timeout + 10):  # its own wait is bounded by timeout
            return {"why": f"the clients' process did not answer {command[0]!r}"}
        line = self.process.stdout.readline()
        if not line:
            return {"why": f"the clients' process exited ({self.process.wait(TIMEOUT)})"}
        answer: dict[str, Any] = json.loads(line)
        return answer

    def wait_answered_by(self, generation: int, timeout: float = TIMEOUT) -> str | None:
        """As LineClients'."""
        why: str | None = self._ask(timeout, "answered-by", generation, timeout)["why"]
        return why

    def drain(self, timeout: float = TIMEOUT) -> str | None:
        """As LineClients'."""
        why: str | None = self._ask(timeout, "drain", timeout)["why"]
        return why

    def stop(self) -> dict[str, Any]:
        """Stop the clients, close their connections: LineClients.figures, or {"why": ...}."""
        return self._ask(TIMEOUT, "stop")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            assert self.process.stdin is not None
            self.process.stdin.close()  # the end of the commands: it stops
        try:
            self.process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.selector.close()
        assert self.process.stdout is not None
        self.process.stdout.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_commands(host: str, port: int, count: int, seed: int) -> int:
    """The clients' process: run LineClients, answering ClientProcess's commands."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    clients = LineClients((host, port), count, seed=seed)
    with clients.running():
        for line in sys.stdin:
            command, *args = line.split()
            if command == "answered-by":
                answer = {"why": clients.wait_answered_by(int(args[0]), float(args[1]))}
            elif command == "drain":
                answer = {"why": clients.drain(float(args[0]))}
            else:
                break
            print(json.dumps(answer), flush=True)
    print(json.dumps(clients.figures()), flush=True)
    return 0


@dataclass
class Outcome:
    """What one run did; ``errors`` empty if every check held."""

    loop: str
    connections: int
    #: Whether the first upgrade was made to fail (``drive``'s ``fail_first``).
    fail_first: bool = False
    upgrades: int = 0
    sent: int = 0
    answered: int = 0
    #: Per upgrade: the connections handed over, and the bytes they carried
    #: read but not answered yet (the new generation's ``serving`` event).
    handed: list[int] = field(default_factory=list)
    buffered: list[int] = field(default_factory=list)
    #: The old generation's ``resume`` (fail_first): the bytes it served again from
    #: the detached connections' buffers (None: it did not resume).
    resumed_buffered: int | None = None
    #: Connections not answered by every generation (each one moved with every upgrade).
    not_moved: int = 0
    slowest: float = 0.0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def drive(
    directory: Path,
    loop: Loop,
    connections: int,
    upgrades: int,
    *,
    fail_first: bool = False,
    seed: int = 0,
) -> Outcome:
    """Serve ``connections`` pipelining clients through ``upgrades`` upgrades on ``loop``."""
    outcome = Outcome(loop, connections, fail_first)
    args = ["--backend", loop]
    died = directory / "died"
    if fail_first:
        args += ["--die-at", "handover-received", "--die-once", str(died)]
    began = time.monotonic()
    with Generations(SCRIPT, directory, *args) as servers:
        port = servers.ready(0, TIMEOUT)["port"]
        with ClientProcess(("127.0.0.1", port), connections, seed) as clients:
            why = clients.wait_answered_by(0)
            if why is None and fail_first:
                why = _failed_upgrade(servers, clients, died)
            for generation in range(1, upgrades + 1):
                if why is not None:
                    break
                why = _upgrade(servers, clients, generation, outcome)
            why = why or clients.drain()
            figures = clients.stop()
        outcome.seconds = time.monotonic() - began
    for problem in (why, figures.get("why")):
        if problem is not None:
            outcome.errors.append(problem)
    if "sent" not in figures:
        return outcome
    outcome.errors += figures["errors"]
    if figures["error_count"] > len(figures["errors"]):
        left = figures["error_count"] - len(figures["errors"])
        outcome.errors.append(f"... {left} more client errors")
    outcome.sent, outcome.answered = figures["sent"], figures["answered"]
    outcome.slowest = figures["slowest"]
    every = list(range(outcome.upgrades + 1))
    outcome.not_moved = sum(seen != every for seen in figures["generations"])
    resumed = [e for e in servers.events if e["event"] == "resumed"]
    if resumed:
        outcome.resumed_buffered = resumed[0]["buffered"]
    return outcome


def _upgrade(
    servers: Generations, clients: ClientProcess, generation: int, outcome: Outcome
) -> str | None:
    try:
        result = request_upgrade(servers.control, timeout=TIMEOUT)
    except UpgradeFailed as exc:
        return f"upgrade to generation {generation} failed: {exc}"
    if result.get("generation") != generation:
        return f"upgrade {generation} started generation {result.get('generation')}"
    serving = servers.wait_for("serving", generation, TIMEOUT)
    outcome.upgrades += 1
    outcome.handed.append(serving["handed"])
    outcome.buffered.append(serving["buffered"])
    return clients.wait_answered_by(generation)


def _failed_upgrade(servers: Generations, clients: ClientProcess, died: Path) -> str | None:
    """An upgrade whose new generation dies holding the connections: the old one resumes."""
    try:
        request_upgrade(servers.control, timeout=TIMEOUT)
    except UpgradeFailed as exc:
        if not died.exists():
            return f"the upgrade meant to fail at handover-received failed before: {exc}"
    else:
        return "the upgrade meant to fail (--die-at handover-received) succeeded"
    servers.wait_for("resumed", 0, TIMEOUT)
    return clients.wait_answered_by(0)


HEADER = (
    f"{'loop':8} {'conns':>5} {'upgrades':>8} {'requests':>9} {'errors':>6} "
    f"{'buffered (bytes, upgrades)':>26} {'slowest':>10} {'seconds':>7}"
)


def report(outcome: Outcome) -> str:
    """The figures of one run, a line under HEADER."""
    caught = sum(1 for b in outcome.buffered if b)
    buffered = f"{sum(outcome.buffered):,d} B in {caught}"
    return (
        f"{outcome.loop:8} {outcome.connections:5d} {outcome.upgrades:8d} "
        f"{outcome.answered:9d} {len(outcome.errors):6d} {buffered:>26} "
        f"{outcome.slowest * 1000:7.1f} ms {outcome.seconds:7.1f}"
    )


def problems(outcome: Outcome, upgrades: int) -> list[str]:
    """What went wrong: errors, and checks of the whole run."""
    found = list(outcome.errors)
    if outcome.upgrades != upgrades:
        found.append(f"{outcome.upgrades} upgrades of {upgrades}")
    if outcome.answered != outcome.sent:
        found.append(f"{outcome.sent - outcome.answered} of {outcome.sent} requests unanswered")
    if outcome.fail_first and outcome.resumed_buffered is None:
        found.append("the upgrade made to fail did not resume")
    if outcome.not_moved:
        found.append(f"{outcome.not_moved} connections missed a generation")
    if not sum(outcome.buffered):
        found.append("no handover carried buffered bytes: the load exercised nothing")
    return found


def run_loops(loops: Sequence[Loop], connections: int, upgrades: int) -> bool:
    """Run the load on each of ``loops`` and print its figures; whether any failed."""
    print(HEADER, flush=True)
    failed = False
    for loop in loops:
        with tempfile.TemporaryDirectory(prefix="fdc-load-") as tmp:
            outcome = drive(Path(tmp), loop, connections, upgrades, fail_first=True)
        print(report(outcome), flush=True)
        for problem in problems(outcome, upgrades):
            print(f"    {problem}")
            failed = True
    return failed


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["clients"]:  # ClientProcess: HOST PORT COUNT SEED
        host, port, count, seed = argv[1:]
        return serve_commands(host, int(port), int(count), int(seed))
    parser = argparse.ArgumentParser(prog="python -m bench.handover_load", description=__doc__)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--upgrades", type=int, default=50)
    parser.add_argument("--loop", choices=LOOPS, action="append", help="default: every loop")
    options = parser.parse_args(argv)
    return 1 if run_loops(options.loop or LOOPS, options.connections, options.upgrades) else 0


if __name__ == "__main__":
    sys.exit(main())
