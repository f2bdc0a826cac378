"""WebSocket sessions kept across upgrades: examples/upgrade_websocket.py's generations, on
each event loop, under real clients (aiohttp's) that keep sending; none may see a close
frame or an error, and every message is answered exactly once, in order.

The clients run on asyncio (aiohttp's only loop) in the test's thread; the loop under
test is the server's (``backend``).
"""

from __future__ import annotations

import functools
import json
import socket
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.to_thread
import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Event, Ping, Pong, Request, TextMessage

from bench.upgrades import EXAMPLES, Generations
from fdchannel.errors import UpgradeFailed
from fdchannel.upgrade import request_upgrade

from .harness import TIMEOUT

SCRIPT = EXAMPLES / "upgrade_websocket.py"
BACKENDS = ["asyncio", "uvloop", "trio"]
CLIENTS = 20
#: Messages each client sends back to back before reading their answers: at every
#: pause some are in flight, in the socket or read into the stream's buffer.
BURST = 4
#: How long a client waits for an answer: a lost message fails the client, and
#: its error the test, before the test's own wait (TIMEOUT) gives up.
ANSWER_TIMEOUT = 10.0


class Progress:
    """Wakes the test whenever a client got answers (or failed)."""

    def __init__(self) -> None:
        self.changed = anyio.Condition()

    async def notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def until(self, done: Callable[[], bool]) -> None:
        with anyio.fail_after(TIMEOUT):
            async with self.changed:
                await self.changed.wait_for(done)


class Chatter:
    """One client: a WebSocket session sending bursts of messages, checking each answer."""

    def __init__(self, url: str, index: int) -> None:
        self.name = f"client-{index}"
        self.url = url + self.name
        #: The generation that answered each message, in order.
        self.generations: list[int] = []
        self.errors: list[str] = []
        self.stop = False
        self.close_code: int | None = None  # the server's answer to our close frame

    async def run(self, session: aiohttp.ClientSession, progress: Progress) -> None:
        try:
            async with session.ws_connect(self.url) as ws:
                while not self.stop:
                    first = len(self.generations) + 1
                    texts = [f"{self.name} says {n}" for n in range(first, first + BURST)]
                    for text in texts:
                        await ws.send_str(text)
                    for text in texts:
                        with anyio.fail_after(ANSWER_TIMEOUT):
                            message = await ws.receive()
                        self.check(message, text)
                    await progress.notify()
                await ws.close()
                self.close_code = ws.close_code
        except Exception as exc:
            self.errors.append(f"{self.name}, message {len(self.generations) + 1}: {exc!r}")
            await progress.notify()

    def check(self, message: aiohttp.WSMessage, text: str) -> None:
        if message.type is not aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"{message.type.name} {message.data!r} {message.extra!r}")
        answer = json.loads(message.data)
        expected = {"name": self.name, "seq": len(self.generations) + 1, "echo": text}
        if expected.items() - answer.items():
            raise AssertionError(f"{answer} answers {expected}")
        self.generations.append(answer["generation"])

    def answered_by(self, generation: int, since: int) -> bool:
        """Whether ``generation`` answered one of the messages after the first ``since``."""
        return generation in self.generations[since:]


async def upgrade(server: Generations) -> dict[str, Any]:
    ask = functools.partial(request_upgrade, server.control, timeout=TIMEOUT)
    return await anyio.to_thread.run_sync(ask)


async def chat_through(
    server: Generations, url: str, upgrades: int, fails_first: bool
) -> list[Chatter]:
    """CLIENTS sessions chatting through ``upgrades`` upgrades (after a failed one if
    ``fails_first``); each generation must answer every session."""
    chatters = [Chatter(url, i) for i in range(CLIENTS)]
    progress = Progress()

    async def all_answered_by(generation: int) -> None:
        marks = [len(c.generations) for c in chatters]

        def done() -> bool:
            failed = any(c.errors for c in chatters)
            return failed or all(
                c.answered_by(generation, m) for c, m in zip(chatters, marks, strict=True)
            )

        await progress.until(done)
        assert not [e for c in chatters for e in c.errors]

    async with aiohttp.ClientSession() as session, anyio.create_task_group() as clients:
        for chatter in chatters:
            clients.start_soon(chatter.run, session, progress)
        await all_answered_by(0)
        if fails_first:
            with pytest.raises(UpgradeFailed):
                await upgrade(server)
            await all_answered_by(0)  # the old generation took its sessions back
        for generation in range(1, upgrades + 1):
            result = await upgrade(server)
            assert result["generation"] == generation
            ready = await anyio.to_thread.run_sync(server.ready, generation)
            assert ready["handed"] == CLIENTS
            await all_answered_by(generation)
        assert [e for e in server.events if e["event"] == "closed"] == []
        for chatter in chatters:
            chatter.stop = True  # each ends its burst, then closes (a close frame from it)
    return chatters


def started(sockdir: Path, backend: str, *options: str) -> tuple[Generations, str]:
    """Generation 0 on ``backend``, and the URL it serves."""
    args = ("--backend", backend, "--listen", "tcp:127.0.0.1:0", *options)
    server = Generations(SCRIPT, sockdir, *args)
    try:
        return server, server.ready(0)["url"]
    except BaseException:
        server.close()
        raise


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("upgrades", "die_at"),
    [(20, None), (2, "handover-received")],
    ids=["20-upgrades", "failed-handover-resumes"],
)
def test_websocket_sessions_survive_upgrades(
    sockdir: Path, backend: str, upgrades: int, die_at: str | None
) -> None:
    """CLIENTS sessions, each with messages in flight, through ``upgrades`` upgrades
    (and first a handover that fails: the old generation resumes its sessions)."""
    die = ("--die-at", die_at, "--die-once", str(sockdir / "died")) if die_at else ()
    server, url = started(sockdir, backend, *die)
    with server:
        chatters = anyio.run(chat_through, server, url, upgrades, die_at is not None)
        assert [e for c in chatters for e in c.errors] == []
        for chatter in chatters:
            # In order, each message once (checked as they came), and every generation
            # answered each session in turn: the sessions moved.
            assert chatter.generations == sorted(chatter.generations)
            assert set(chatter.generations) == set(range(upgrades + 1))
            assert chatter.close_code == 1000  # still speaking WebSocket after the moves
        pids = server.pids()
        assert len(pids) == upgrades + 1
        assert server.wait_exited(pids[:-1]) == []  # each handed over, then left


class RawClient:
    """A WebSocket client on a plain socket (wsproto's client side): it chooses how
    its bytes are cut."""

    def __init__(self, url: str, name: str) -> None:
        host, port = url.removeprefix("ws://").rstrip("/").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.request = self.ws.send(Request(host=host, target=f"/{name}"))
        self.pending: deque[Event] = deque()

    def next(self) -> Event:
        """The server's next event."""
        while not self.pending:
            data = self.sock.recv(65536)
            assert data, "the server closed the connection"
            self.ws.receive_data(data)
            self.pending += self.ws.events()
        return self.pending.popleft()

    def answer(self) -> tuple[int, str, int, str]:
        """The next answer's generation, name, seq and echo."""
        message = self.next()
        assert isinstance(message, TextMessage), message
        answer = json.loads(message.data)
        return answer["generation"], answer["name"], answer["seq"], answer["echo"]

    def send(self, *events: Event) -> None:
        """``events`` in one write."""
        self.sock.sendall(b"".join(self.ws.send(event) for event in events))


def part(text: str) -> TextMessage:
    """A text message's frame, not its last."""
    return TextMessage(text, message_finished=False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_handshake_and_a_fragmented_message_straddle_an_upgrade(
    sockdir: Path, backend: str
) -> None:
    """A session handed over in the middle of its HTTP handshake finishes it with the new
    generation; the pause waits for a fragmented message begun (a ping between its
    frames) and the old generation answers it; the message counter is carried over."""
    server, url = started(sockdir, backend)
    with server, ThreadPoolExecutor(1) as thread:
        late, chatty = RawClient(url, "late"), RawClient(url, "chatty")
        with late.sock, chatty.sock:
            half = len(late.request) // 2
            late.sock.sendall(late.request[:half])
            chatty.sock.sendall(chatty.request)
            assert isinstance(chatty.next(), AcceptConnection)
            chatty.send(part("frag"), Ping(), part("men"), TextMessage("ted"))
            assert isinstance(chatty.next(), Pong)
            assert chatty.answer() == (0, "chatty", 1, "fragmented")
            chatty.send(part("wai"))
            upgraded = thread.submit(request_upgrade, server.control, timeout=TIMEOUT)
            # Connections are accepted in order: "late" is generation 0's too.
            assert server.wait_for("pausing", 0)["sessions"] == 2
            chatty.send(Ping(), TextMessage("ted"))
            assert isinstance(chatty.next(), Pong)
            assert chatty.answer() == (0, "chatty", 2, "waited")
            assert upgraded.result(TIMEOUT)["generation"] == 1
            assert server.ready(1)["handed"] == 2
            late.sock.sendall(late.request[half:])
            assert isinstance(late.next(), AcceptConnection)
            late.send(TextMessage("hello"))
            assert late.answer() == (1, "late", 1, "hello")
            chatty.send(part("a"), Ping(), TextMessage("gain"))
            assert isinstance(chatty.next(), Pong)
            assert chatty.answer() == (1, "chatty", 3, "again")
