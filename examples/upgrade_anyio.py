"""A plain anyio HTTP/1.1 keep-alive server upgraded without dropping a request.

    RUN=$(mktemp -d)       # pidfile and control socket: a directory of their own
    python examples/upgrade_anyio.py --backend trio --pidfile $RUN/http.pid --control $RUN/http.ctl
    fdchannel upgrade $RUN/http.ctl   # or: fdchannel upgrade $RUN/http.pid (SIGHUP)

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

Each generation writes a JSON ``ready`` event once serving and an
``exit`` event when it leaves (bench/upgrades.py reads them); that, the
stop conditions and the options are upgrade_common.py's, shared with the
uvicorn and aiohttp examples.
"""

from __future__ import annotations

import argparse
import os
import sys

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream
from upgrade_common import Generation, parse_options, run_on_backend, url_of

import fdchannel

#: Longest request head (request line and headers) taken.
MAX_HEAD = 16 * 1024
#: Largest request body read (and ignored).
MAX_BODY = 1 << 20


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


async def run(options: argparse.Namespace) -> None:
    generation = Generation(options, server="anyio")
    async with generation.running() as (up, tasks):
        server = HttpServer(up.generation, tasks)
        listener = await up.listen("http", options.listen)
        await generation.ready()
        # Accept only once ready() returned (the commit): a new generation that dies
        # before it must not take connections with it; the old one accepts until then.
        tasks.start_soon(server.accept_all, listener)
        generation.serving(url_of(listener))
        await generation.stopped()  # replaced, or SIGTERM/SIGINT
        await listener.aclose()  # stop accepting: the next generation (if any) does
        await server.drain(options.drain_timeout)
    generation.exited(
        requests=server.requests,
        closed_after_request=server.closed_after_request,
        closed_idle=server.closed_idle,
    )


def main() -> None:
    run_on_backend(run, parse_options(__doc__, backends=["asyncio", "uvloop", "trio"]))


if __name__ == "__main__":
    main()
