"""Run a command's async part: one event loop, and signals that unwind it cleanly."""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar, TypeVarTuple, Unpack

import anyio

from ._output import CliError, single

__all__ = ["Interrupted", "run_async"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class Interrupted(CliError):
    """SIGINT or SIGTERM arrived; what was open has been closed."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.exit_status = 128 + signum


def run_async(func: Callable[[Unpack[Ts]], Awaitable[T]], *args: *Ts) -> T:
    """``func(*args)`` on asyncio; SIGINT/SIGTERM cancel it and raise Interrupted.

    Cancelling (rather than dying on the signal) lets listeners remove their
    socket files and close-as-ack connections close in order.
    """

    async def main() -> T:
        caught: list[int] = []
        results: list[T] = []
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        caught.append(signum)
                        tg.cancel_scope.cancel()
                        return

            async def body() -> None:
                results.append(await func(*args))
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
            tg.start_soon(body)
        if caught:
            raise Interrupted(caught[0])
        return results[0]

    try:
        return anyio.run(main)
    except BaseExceptionGroup as group:
        # Task groups wrap what failed; one failure is reported as itself.
        leaf = single(group)
        if leaf is group:
            raise
        raise leaf from leaf.__cause__
