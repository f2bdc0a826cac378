"""A plain anyio HTTP/1.1 keep-alive server upgraded without dropping a request.

    python examples/upgrade_anyio.py --backend trio --pidfile /tmp/http.pid --control /tmp/http.ctl
    fdchannel upgrade /tmp/http.ctl       # or: kill -HUP $(cat /tmp/http.pid)

Every generation runs this same file (the Upgrader starts the next one with
this process's command line).  The listening socket comes from the previous
generation when there is one, so both generations accept on it for a
moment and no connection is refused.  Once replaced, the old generation
stops accepting and drains: each open connection's next request is
answered with ``Connection: close`` and the connection closed (clients
reconnect, to the new generation, without an error).  A keep-alive
connection that stays idle is closed only after ``--drain-timeout``
seconds: closing it earlier would race with a request the client may be
sending on it.  SIGTERM and SIGINT drain the same way, then exit.

The request parsing is minimal: the request line and the headers; a body
announced by Content-Length is read and ignored.

Each generation prints ``ready key=value ...`` once serving and ``exit
key=value ...`` when it leaves (bench/upgrades.py reads them).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import anyio
import anyio.abc
from anyio.abc import SocketAttribute
from anyio.streams.buffered import BufferedByteReceiveStream

import fdchannel
from fdchannel.upgrade import Upgrader

#: Longest request head (request line and headers) taken.
MAX_HEAD = 16 * 1024
#: Largest request body read (and ignored).
MAX_BODY = 1 << 20


def emit(event: str, **fields: object) -> None:
    """One ``event key=value ...`` line: a single write, so generations sharing a pipe never mix."""
    words = " ".join(f"{key}={value}" for key, value in fields.items())
    os.write(1, f"{event} pid={os.getpid()} {words}\n".encode())


class BadRequest(Exception):
    """The request cannot be served: answer ``status`` and close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Request:
    """A parsed request head: method, version and headers (names in lower case)."""

    def __init__(self, head: bytes) -> None:
        lines = head.lstrip(b"\r\n").split(b"\r\n")
        try:
            method, _target, version = lines[0].decode("latin-1").split(" ")
        except ValueError:
            raise BadRequest(400, "Bad Request") from None
        if version not in ("HTTP/1.0", "HTTP/1.1"):
            raise BadRequest(505, "HTTP Version Not Supported")
        self.method = method
        self.version = version
        self.headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.decode("latin-1").partition(":")
            if not colon or not name or name != name.strip():
                raise BadRequest(400, "Bad Request")
            key = name.lower()
            value = value.strip()
            self.headers[key] = f"{self.headers[key]}, {value}" if key in self.headers else value

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version == "HTTP/1.1":
            return "close" not in tokens
        return "keep-alive" in tokens

    def body_length(self) -> int:
        if "transfer-encoding" in self.headers:
            raise BadRequest(501, "Not Implemented")  # no chunked bodies here
        text = self.headers.get("content-length", "0")
        if not text.isdigit():
            raise BadRequest(400, "Bad Request")
        if int(text) > MAX_BODY:
            raise BadRequest(413, "Content Too Large")
        return int(text)


def response(status: int, reason: str, body: bytes, *, close: bool, head_only: bool) -> bytes:
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Connection: {'close' if close else 'keep-alive'}\r\n"
        "\r\n"
    )
    return head.encode() + (b"" if head_only else body)


class HttpServer:
    """The accept loop and every connection; ``drain`` closes them without losing a request."""

    def __init__(self, generation: int, tasks: anyio.abc.TaskGroup) -> None:
        self.generation = generation
        self.tasks = tasks
        self.body = f"hello from pid {os.getpid()}, generation {generation}\n".encode()
        #: Once set, each connection's next response says ``Connection: close``.
        self.draining = False
        self.open = 0
        self.drained = anyio.Event()
        #: Connections waiting for their next request, by id: what the drain timeout cancels.
        self.waiting: dict[int, anyio.CancelScope] = {}
        self.requests = 0
        self.closed_after_request = 0
        self.closed_idle = 0

    async def accept_all(self, listener: fdchannel.Listener) -> None:
        """Accept until the listener is closed."""
        while True:
            try:
                stream = await listener.accept()
            except anyio.ClosedResourceError:
                return
            except fdchannel.FdChannelError as exc:  # a refused peer, EMFILE...
                print(f"accept: {exc}", file=sys.stderr)
                await anyio.sleep(0.01)  # let descriptors free up rather than spin
                continue
            self.open += 1
            self.tasks.start_soon(self.serve, stream)

    async def serve(self, stream: fdchannel.Stream) -> None:
        try:
            async with stream:
                await self._serve(stream)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
            pass  # the client went away
        except (anyio.ClosedResourceError, fdchannel.FdChannelError):
            pass  # a reset, or closed under us
        finally:
            self.open -= 1
            if self.draining and not self.open:
                self.drained.set()

    async def _serve(self, stream: fdchannel.Stream) -> None:
        buffered = BufferedByteReceiveStream(stream)
        while True:
            with anyio.CancelScope() as waiting:
                self.waiting[id(waiting)] = waiting
                try:
                    head = await buffered.receive_until(b"\r\n\r\n", MAX_HEAD)
                except (anyio.EndOfStream, anyio.IncompleteRead):
                    return  # the client closed its connection
                except anyio.DelimiterNotFound:
                    head = b""  # too long: Request() refuses it
                finally:
                    del self.waiting[id(waiting)]
            if waiting.cancelled_caught:
                self.closed_idle += 1  # idle past the drain timeout
                return
            try:
                if not head:
                    raise BadRequest(431, "Request Header Fields Too Large")
                request = Request(head)
                length = request.body_length()
                if length:
                    await buffered.receive_exactly(length)
            except BadRequest as bad:
                message = f"{bad.reason}\n".encode()
                await stream.send(
                    response(bad.status, bad.reason, message, close=True, head_only=False)
                )
                return
            close = self.draining or not request.keep_alive
            await stream.send(
                response(200, "OK", self.body, close=close, head_only=request.method == "HEAD")
            )
            self.requests += 1
            if close:
                if self.draining:
                    self.closed_after_request += 1
                return

    async def drain(self, timeout: float) -> None:
        """Close every connection after its next response; the idle ones after ``timeout``."""
        self.draining = True
        if not self.open:
            return
        with anyio.move_on_after(timeout):
            await self.drained.wait()
        for scope in self.waiting.values():
            scope.cancel()
        with anyio.move_on_after(timeout):
            await self.drained.wait()


def url_of(listener: fdchannel.Listener) -> str:
    """``http://host:port/`` for a TCP listener, the socket's path for a unix one."""
    local = listener.extra(SocketAttribute.local_address)
    if isinstance(local, tuple):
        host = f"[{local[0]}]" if ":" in local[0] else local[0]
        return f"http://{host}:{local[1]}/"
    return f"unix:{local}"


async def wait_for_signal(
    stop: anyio.Event, why: list[str], *, task_status: anyio.abc.TaskStatus[None]
) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            why.append(signal.Signals(signum).name)
            stop.set()
            return


async def wait_replaced(up: Upgrader, stop: anyio.Event, why: list[str]) -> None:
    pid = await up.wait_replaced()
    why.append(f"replaced-by-{pid}")
    stop.set()


async def run(options: argparse.Namespace) -> None:
    stop = anyio.Event()
    why: list[str] = []
    upgrader = Upgrader(pidfile=options.pidfile, control=options.control)
    async with upgrader as up, anyio.create_task_group() as tasks:
        await tasks.start(wait_for_signal, stop, why)
        server = HttpServer(up.generation, tasks)
        listener = await up.listen("http", options.listen)
        tasks.start_soon(server.accept_all, listener)
        with await up.ready():  # nothing else is handed over: the listener came earlier
            pass
        emit(
            "ready",
            generation=up.generation,
            server="anyio",
            backend=options.backend,
            url=url_of(listener),
        )
        tasks.start_soon(wait_replaced, up, stop, why)
        await stop.wait()
        await listener.aclose()  # stop accepting: the next generation (if any) does
        await server.drain(options.drain_timeout)
        tasks.cancel_scope.cancel()
    emit(
        "exit",
        generation=upgrader.generation,
        reason=why[0] if why else "?",
        requests=server.requests,
        closed_after_request=server.closed_after_request,
        closed_idle=server.closed_idle,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="tcp:127.0.0.1:8080", help="an fdchannel address")
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "uvloop", "trio"])
    parser.add_argument("--pidfile", help="names the serving generation")
    parser.add_argument("--control", help="a unix socket taking upgrade requests")
    parser.add_argument(
        "--drain-timeout", type=float, default=10.0, help="close idle connections after (s)"
    )
    options = parser.parse_args()
    backend, backend_options = options.backend, {}
    if backend == "uvloop":
        import uvloop

        backend, backend_options = "asyncio", {"loop_factory": uvloop.new_event_loop}
    anyio.run(run, options, backend=backend, backend_options=backend_options)


if __name__ == "__main__":
    main()
