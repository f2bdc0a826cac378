"""A WebSocket server whose clients keep their sessions across upgrades.

    RUN=$(mktemp -d)       # pidfile and control socket: a directory of their own
    python examples/upgrade_websocket.py --backend trio --pidfile $RUN/ws.pid --control $RUN/ws.ctl
    fdchannel upgrade $RUN/ws.ctl   # as often as you like: no client notices

A chat-like echo: a client connects to ``ws://HOST:PORT/NAME``, and each
text message it sends is answered with a JSON text message, ``{"pid": ...,
"generation": ..., "name": NAME, "seq": N, "echo": TEXT}``, N counting the
client's messages from 1.  The handshake and the frames are wsproto's, on
fdchannel's streams, with no extension (no permessage-deflate): once the
handshake is done, the only WebSocket state is the byte stream itself.

An upgrade hands every connection over, not only the listener: the
Upgrader's ``pause`` hook stops accepting and stops each connection at a
message boundary, then ``detach()``es it, which gives back its descriptor
and whatever was read from it but not consumed yet; ``pack_connections``
puts both in the state handed over.  The new generation wraps each
descriptor with ``Stream.from_fd(fd, buffered=...)`` (those bytes come out
first) and a fresh ``wsproto.connection.Connection``, and serves on: no
close frame, no reconnection, no message lost.  Two rules make that true:

* wsproto never holds a partial frame.  Each frame is read here, whole,
  with ``receive_exactly`` (its head, its extended length, its mask key and
  payload), and only then fed to wsproto, so every byte not yet processed
  is in the stream's own buffer, where ``detach()`` finds it.
* A connection is stopped only while it waits for the first bytes of the
  next message (that wait is cancel-safe: what was read stays buffered),
  never in the middle of a message or of its answer: a fragmented message
  is read to its last frame first (a fresh Connection would refuse a
  continuation frame).

What the server keeps per client beyond the bytes (here its name and its
message counter) must travel too: it goes in the state's metadata
(``pack_connections(metadata=...)``), in the order of the connections.
A connection still in its HTTP handshake travels as well, with no session.

Events go to stdout as JSON lines, as for the other upgrade examples
(upgrade_common.py): ``ready`` (with ``url`` and ``handed``, the sessions
taken over), ``pausing`` when ``pause`` begins, ``closed`` when a session
ends here, and ``exit``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
from dataclasses import asdict, dataclass

import anyio
import anyio.abc
from upgrade_common import die_here, emit, parse_options, run_on_backend, url_of
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError

from fdchannel import FdState, Listener, Stream, pack_connections, unpack_connections
from fdchannel.upgrade import Upgrader

#: Longest handshake request head taken.
MAX_HEAD = 16 * 1024
#: Largest frame payload taken.
MAX_FRAME = 1 << 20
#: How long a message begun may take to arrive and be answered: pause() waits for it,
#: so keep it below the Upgrader's handover_timeout (10 s), which bounds the pause.
BUSY = 5.0
#: What ends a connection without a close frame from it.
PEER_GONE = (anyio.IncompleteRead, anyio.BrokenResourceError, anyio.DelimiterNotFound, TimeoutError)


@dataclass
class Session:
    """What the server knows of a client beyond the bytes: it travels in the metadata."""

    name: str
    seq: int = 0  # messages answered so far


class Goodbye(Exception):
    """End the session with a close frame carrying ``code``."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class Client:
    """One connection: its stream, its session (None until the handshake is done)
    and wsproto's view of it."""

    def __init__(self, stream: Stream, session: Session | None) -> None:
        self.stream = stream
        self.session = session
        self.ws = Connection(ConnectionType.SERVER) if session is not None else None
        self.text: list[str] = []  # a fragmented message's text so far
        #: pause() cancels it; only the wait between two messages is not shielded from it.
        self.scope = anyio.CancelScope()


async def whole_frame(stream: Stream, head: bytes) -> bytes:
    """The frame whose first two bytes are ``head``: its extended length, mask key and
    payload read here, whole (RFC 6455 5.2)."""
    length = head[1] & 0x7F
    if length >= 126:  # the length follows: 16 bits for 126, 64 for 127
        extended = await stream.receive_exactly(2 if length == 126 else 8)
        head += extended
        length = int.from_bytes(extended, "big")
    if length > MAX_FRAME:
        raise Goodbye(CloseReason.MESSAGE_TOO_BIG)
    mask_key = 4 if head[1] & 0x80 else 0
    return head + await stream.receive_exactly(mask_key + length)


class Chat:
    """The accept loop and every session; ``pause`` hands them all over."""

    tasks: anyio.abc.TaskGroup  # where the sessions are served, once running
    generation = 0

    def __init__(self) -> None:
        self.clients: list[Client] = []
        self.running = 0  # _serve() tasks not finished
        self.quiet = anyio.Event()  # set when running falls to 0
        self.accepting = anyio.CancelScope()
        self.accept_done = anyio.Event()
        self.listener: Listener | None = None
        self.handed = FdState()  # what the last pause() handed over
        self.answered = 0

    def start(self, listener: Listener) -> None:
        self.listener = listener
        self.accepting = anyio.CancelScope()
        self.accept_done = anyio.Event()
        self.tasks.start_soon(self._accept, listener)

    async def _accept(self, listener: Listener) -> None:
        try:
            with self.accepting:
                while True:
                    self.add(await listener.accept(), None)
        finally:
            self.accept_done.set()

    def add(self, stream: Stream, session: Session | None) -> None:
        client = Client(stream, session)
        self.clients.append(client)
        self.running += 1
        self.tasks.start_soon(self._serve, client)

    def adopt(self, state: FdState) -> None:
        """Serve the connections of a handed state (copies: ``state`` stays its owner's):
        each one's buffered bytes come first, its session is in the metadata."""
        connections, metadata = unpack_connections(state)
        sessions = json.loads(metadata or b"[]")
        for conn, session in zip(connections, sessions, strict=True):
            stream = Stream.from_fd(os.dup(conn.fd), buffered=conn.buffered)
            self.add(stream, Session(session["name"], session["seq"]) if session else None)

    async def stop(self) -> None:
        """Stop accepting, and stop every session between two messages."""
        self.accepting.cancel()
        await self.accept_done.wait()
        self.quiet = anyio.Event()
        for client in self.clients:
            client.scope.cancel()
        if self.running:
            await self.quiet.wait()

    async def pause(self) -> FdState:
        """The Upgrader's pause hook: every connection, with its buffered bytes and session."""
        emit("pausing", generation=self.generation, sessions=len(self.clients))
        await self.stop()
        detached = [client.stream.detach() for client in self.clients]
        sessions = [asdict(c.session) if c.session is not None else None for c in self.clients]
        self.clients = []
        self.handed = pack_connections(detached, metadata=json.dumps(sessions).encode())
        return self.handed

    async def resume(self) -> None:
        """The handover failed: serve what pause() detached again, and accept again."""
        self.adopt(self.handed)
        self.handed.close()
        assert self.listener is not None
        self.start(self.listener)

    async def goodbye(self) -> None:
        """SIGTERM: stop, and close every session (1001: going away)."""
        await self.stop()
        for client in self.clients:
            with anyio.move_on_after(BUSY), contextlib.suppress(*PEER_GONE):
                if client.ws is not None:
                    await client.stream.send(
                        client.ws.send(CloseConnection(CloseReason.GOING_AWAY))
                    )
            await client.stream.aclose()
        self.clients = []

    async def _serve(self, client: Client) -> None:
        paused = False
        why: int | str = "error"
        try:
            with client.scope:
                why = await self._converse(client)
            paused = client.scope.cancelled_caught  # the connection stays, for detach()
        except PEER_GONE as exc:
            why = type(exc).__name__
        finally:
            if not paused:
                self.clients.remove(client)
            self.running -= 1
            if not self.running:
                self.quiet.set()
        if not paused:
            await client.stream.aclose()
            name = client.session.name if client.session is not None else None
            emit("closed", generation=self.generation, name=name, why=why)

    async def _converse(self, client: Client) -> int | str:
        """Serve ``client`` until its session ends (the close code, or "rejected"), or
        until pause() cancels a wait between two messages."""
        stream = client.stream
        if client.ws is None:
            head = await stream.receive_until(b"\r\n\r\n", MAX_HEAD)
            with anyio.fail_after(BUSY, shield=True):
                if not await self._handshake(client, head + b"\r\n\r\n"):
                    return "rejected"
        assert client.ws is not None
        try:
            while True:
                head = await stream.receive_exactly(2)  # the next frame begins
                with anyio.fail_after(BUSY, shield=True):  # its message, then the answer
                    await self._frame(client, head)
                    while client.text:  # a fragmented message: read it all now
                        await self._frame(client, await stream.receive_exactly(2))
        except Goodbye as bye:
            with anyio.fail_after(BUSY, shield=True):
                if client.ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
                    await stream.send(client.ws.send(CloseConnection(code=bye.code)))
            return bye.code

    async def _handshake(self, client: Client, head: bytes) -> bool:
        handshake = H11Handshake(ConnectionType.SERVER)
        try:
            handshake.receive_data(head)
            request = next(handshake.events(), None)
            if not isinstance(request, Request):
                raise RemoteProtocolError("no request", RejectConnection())
        except RemoteProtocolError as exc:
            await client.stream.send(handshake.send(exc.event_hint or RejectConnection()))
            return False
        await client.stream.send(handshake.send(AcceptConnection()))
        client.ws = handshake.connection
        client.session = Session(name=request.target.lstrip("/"))
        return True

    async def _frame(self, client: Client, head: bytes) -> None:
        """Feed wsproto the whole frame that begins with ``head`` and answer what it completes."""
        assert client.ws is not None and client.session is not None
        client.ws.receive_data(await whole_frame(client.stream, head))
        for event in client.ws.events():
            if isinstance(event, TextMessage):
                client.text.append(event.data)
                if event.message_finished:
                    await self._answer(client, "".join(client.text))
                    client.text = []
            elif isinstance(event, BytesMessage):
                raise Goodbye(CloseReason.UNSUPPORTED_DATA)  # a chat takes text
            elif isinstance(event, Ping):
                await client.stream.send(client.ws.send(event.response()))
            elif isinstance(event, CloseConnection):  # the client's, or a protocol error
                raise Goodbye(event.code)

    async def _answer(self, client: Client, text: str) -> None:
        assert client.ws is not None and client.session is not None
        session = client.session
        session.seq += 1
        answer = {
            "pid": os.getpid(),
            "generation": self.generation,
            **asdict(session),
            "echo": text,
        }
        await client.stream.send(client.ws.send(TextMessage(json.dumps(answer))))
        self.answered += 1


async def stopped(up: Upgrader) -> str:
    """Wait until this generation is replaced or gets SIGTERM or SIGINT: which one."""
    why: list[str] = []
    async with anyio.create_task_group() as waiting:

        async def replaced() -> None:
            why.append(f"replaced-by-{await up.wait_replaced()}")
            waiting.cancel_scope.cancel()

        waiting.start_soon(replaced)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                why.append(signal.Signals(signum).name)
                waiting.cancel_scope.cancel()
    return why[0]


async def run(options: argparse.Namespace) -> None:
    die_here(options, "start")
    chat = Chat()
    upgrader = Upgrader(
        pidfile=options.pidfile,
        control=options.control,
        pause=chat.pause,
        resume=chat.resume,
        drain_timeout=options.drain_timeout,
        progress=lambda step: die_here(options, step),
    )
    async with upgrader as up, anyio.create_task_group() as chat.tasks:
        chat.generation = up.generation
        listener = await up.listen("ws", options.listen)
        with await up.ready() as handed:  # a new generation: the sessions, after the commit
            chat.adopt(handed)
        chat.start(listener)  # only now: see Upgrader.ready
        url = url_of(listener).replace("http", "ws", 1)
        emit(
            "ready",
            generation=up.generation,
            backend=options.backend,
            url=url,
            handed=len(chat.clients),
        )
        why = await stopped(up)
        if why.startswith("replaced"):
            chat.handed.close()  # the new generation has its own copies
        else:
            await chat.goodbye()
        await listener.aclose()
        chat.tasks.cancel_scope.cancel()
    emit("exit", generation=up.generation, reason=why, answered=chat.answered)


def main() -> None:
    options = parse_options(__doc__ or "", ["asyncio", "uvloop", "trio"])
    run_on_backend(run, options)


if __name__ == "__main__":
    main()
