"""A generation whose requests take as long as each client asks: for the drain,
probation and release tests.

    python slow_peer.py --pidfile P --control C --listen ADDR [--backend B]
                        [--drain-timeout S] [--probation S]
                        [--crash-after S --crash-once FLAG]

A client connects, sends ``MS\\n`` and gets ``PID GENERATION MS\\n`` after MS
milliseconds; then the connection closes.  ``!TEXT\\n`` writes TEXT on the
generation's stderr, then answers at once; ``?\\n`` is answered with a JSON
line saying where the generation runs from (its directory, file, prefix,
command line, $RELEASE and $HOME).  Once replaced, a generation stops
accepting and waits for its requests in flight without a limit of its own:
the Upgrader's ``drain_timeout`` is what ends it; with a probation it
accepts again if the new generation exits meanwhile (the loop docs/upgrade.md
shows).  ``--crash-after S`` makes a new generation exit with status 3, S
seconds after its ``ready()``, once (the first to create FLAG).

Events go to stdout as JSON lines (bench/upgrades.py reads them): ``ready``,
``request`` (one read, now in flight), ``answered``, ``accepting-again``
(after a rollback), ``exit``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import anyio
import anyio.abc

from fdchannel import Listener, Stream
from fdchannel.upgrade import Upgrader


def emit(event: str, **fields: object) -> None:
    """One JSON line in one write (the generations share the pipe)."""
    os.write(1, json.dumps({"event": event, "pid": os.getpid(), **fields}).encode() + b"\n")


async def answer(stream: Stream, generation: int) -> None:
    async with stream:
        data = b""
        while not data.endswith(b"\n") and len(data) < 64:
            try:
                data += await stream.receive(64)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return
        if data == b"?\n":
            await stream.send(json.dumps(whereabouts()).encode() + b"\n")
            return
        if data.startswith(b"!"):
            os.write(2, data[1:])
            await stream.send(f"{os.getpid()} {generation} 0\n".encode())
            return
        ms = int(data)
        emit("request", generation=generation, ms=ms)
        await anyio.sleep(ms / 1000)
        await stream.send(f"{os.getpid()} {generation} {ms}\n".encode())
        emit("answered", generation=generation, ms=ms)


def whereabouts() -> dict[str, object]:
    return {
        "pid": os.getpid(),
        "cwd": os.getcwd(),
        "file": os.path.realpath(__file__),
        "prefix": sys.prefix,
        "executable": sys.executable,
        "argv": sys.orig_argv,
        "release": os.environ.get("RELEASE"),
        "home": os.environ.get("HOME"),
        "pwd": os.environ.get("PWD"),
    }


async def accept_all(listener: Listener, tasks: anyio.abc.TaskGroup, generation: int) -> None:
    while True:
        try:
            stream = await listener.accept()
        except anyio.ClosedResourceError:
            return
        tasks.start_soon(answer, stream, generation)


async def crash(after: float) -> None:
    await anyio.sleep(after)
    os.write(2, f"crashing on purpose, {after} s after ready()\n".encode())
    os._exit(3)


def first_to(flag: str) -> bool:
    try:
        os.close(os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    return True


async def run(options: argparse.Namespace) -> None:
    upgrader = Upgrader(
        pidfile=options.pidfile,
        control=options.control,
        drain_timeout=options.drain_timeout,
        probation=options.probation,
    )
    async with upgrader as up:
        listener = await up.listen("main", options.listen)
        with await up.ready():
            pass
        emit("ready", generation=up.generation)
        async with anyio.create_task_group() as tasks:
            if options.crash_after is not None and up.inherited and first_to(options.crash_once):
                tasks.start_soon(crash, options.crash_after)
            while True:
                tasks.start_soon(accept_all, listener, tasks, up.generation)
                successor = await up.wait_replaced()
                await listener.aclose()  # stop accepting; the requests in flight go on
                if await up.settled():  # the new generation stuck
                    break
                emit("accepting-again", generation=up.generation)
                listener = await up.listen("main", options.listen)
        emit("exit", generation=up.generation, reason=f"replaced-by-{successor}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pidfile")
    parser.add_argument("--control")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "uvloop", "trio"])
    parser.add_argument("--drain-timeout", type=float)
    parser.add_argument("--probation", type=float, default=0.0)
    parser.add_argument("--crash-after", type=float)
    parser.add_argument("--crash-once")
    options = parser.parse_args()
    backend = "trio" if options.backend == "trio" else "asyncio"
    uvloop = {"use_uvloop": True} if options.backend == "uvloop" else {}
    anyio.run(run, options, backend=backend, backend_options=uvloop)
    sys.exit(0)


if __name__ == "__main__":
    main()
