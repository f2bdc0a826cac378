"""The event loops every async measurement runs on: asyncio, asyncio+uvloop and trio."""

from __future__ import annotations

import importlib.util
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar, TypeVarTuple, Unpack

import anyio

__all__ = ["LOOPS", "Loop", "missing", "run"]

Loop = Literal["asyncio", "uvloop", "trio"]
LOOPS: tuple[Loop, ...] = ("asyncio", "uvloop", "trio")

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


def missing(loop: Loop) -> str | None:
    """Why ``loop`` cannot run in this environment, or None if it can."""
    module = {"uvloop": "uvloop", "trio": "trio"}.get(loop)
    if module is not None and importlib.util.find_spec(module) is None:
        return f"{module} is not installed"
    return None


def run(loop: Loop, fn: Callable[[Unpack[Ts]], Awaitable[T]], *args: *Ts) -> T:
    """Run ``fn(*args)`` to completion on a fresh event loop of kind ``loop``."""
    if loop == "trio":
        return anyio.run(fn, *args, backend="trio")
    if loop == "uvloop":
        # Imported here so that a machine without uvloop can still run the rest.
        import uvloop

        return anyio.run(
            fn, *args, backend="asyncio", backend_options={"loop_factory": uvloop.new_event_loop}
        )
    return anyio.run(fn, *args, backend="asyncio")
