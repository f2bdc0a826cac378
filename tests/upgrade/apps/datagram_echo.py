"""A datagram echo server, upgraded: each answer names the generation that received it.

    python tests/upgrade/apps/datagram_echo.py --pidfile P --control C \\
        --listen udp:127.0.0.1:0 --backend trio

Every generation listens with ``Upgrader.listen_datagram``, so all of them
share one socket (and its queue): a datagram is received by whichever
generation takes it first.  Each one is answered with its own bytes, a
space and the generation's number.  A generation writes JSON events on its
stdout, as the upgrade examples do (bench/upgrades.py reads them)::

    {"event": "ready", "pid": ..., "generation": ..., "address": [HOST, PORT] | PATH}
    {"event": "exit", "pid": ..., "generation": ..., "reason": ..., "received": N}

``--any-sender`` admits every sender of a unix datagram (no credential
policy): a socket systemd-socket-activate bound has no SO_PASSCRED, so what
was queued before the first generation set it carries no credentials.

It answers until it is replaced (then it stops receiving: the datagrams
still queued are the next generation's) or gets SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from typing import Any

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from fdchannel.credentials import same_user_or_root
from fdchannel.transports.datagram import DatagramListener
from fdchannel.upgrade import Upgrader


def emit(event: str, **fields: object) -> None:
    """One JSON line in a single write: generations share the pipe."""
    os.write(1, json.dumps({"event": event, "pid": os.getpid(), **fields}).encode() + b"\n")


class Echo:
    """One generation's answering, and why it stopped."""

    def __init__(self, listener: DatagramListener, generation: int) -> None:
        self.listener = listener
        self.generation = generation
        self.received = 0
        self.why: list[str] = []

    async def answer(self) -> None:
        while True:
            data, peer = await self.listener.receive()  # cancelled here, it loses nothing
            self.received += 1
            with anyio.CancelScope(shield=True):  # a datagram received is answered
                await self.listener.send(b"%s %d" % (data, self.generation), peer)

    async def until_replaced(self, up: Upgrader, tasks: anyio.abc.TaskGroup) -> None:
        self.why.append(f"replaced-by-{await up.wait_replaced()}")
        tasks.cancel_scope.cancel()

    async def until_signalled(
        self, tasks: anyio.abc.TaskGroup, *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                self.why.append(signal.Signals(signum).name)
                tasks.cancel_scope.cancel()
                return


async def run(options: argparse.Namespace) -> None:
    async with Upgrader(pidfile=options.pidfile, control=options.control) as up:
        policy = None if options.any_sender else same_user_or_root
        listener = await up.listen_datagram("echo", options.listen, policy=policy)
        echo = Echo(listener, up.generation)
        async with anyio.create_task_group() as tasks:
            await tasks.start(echo.until_signalled, tasks)
            with await up.ready():
                pass
            local = listener.extra(SocketAttribute.local_address)
            address: Any = local
            if isinstance(local, tuple):
                address = list(local[:2])
            elif isinstance(local, bytes):  # an abstract name
                address = "@" + local[1:].decode()
            emit("ready", generation=up.generation, address=address)
            tasks.start_soon(echo.answer)
            tasks.start_soon(echo.until_replaced, up, tasks)
        await listener.aclose()
    emit(
        "exit",
        generation=echo.generation,
        reason=echo.why[0] if echo.why else "?",
        received=echo.received,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="udp:, unixgram: or fd: address")
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "uvloop", "trio"])
    parser.add_argument(
        "--any-sender", action="store_true", help="no credential policy (unix datagrams)"
    )
    parser.add_argument("--pidfile")
    parser.add_argument("--control")
    options = parser.parse_args()
    backend, backend_options = options.backend, {}
    if backend == "uvloop":
        import uvloop

        backend, backend_options = "asyncio", {"loop_factory": uvloop.new_event_loop}
    anyio.run(run, options, backend=backend, backend_options=backend_options)


if __name__ == "__main__":
    main()
