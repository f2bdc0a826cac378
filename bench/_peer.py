"""The other side of a measurement, in a child process that is always reaped.

The child runs a module-level function with one end of a pipe; it answers
with small picklable messages, or with ``Failed`` carrying its traceback.
"""

from __future__ import annotations

import multiprocessing
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TypeVar

__all__ = ["Failed", "Peer", "PeerError", "start_peer"]

# spawn, not fork: the child starts from a fresh interpreter, so it shares no
# event-loop state, threads or descriptors with the parent that measures it.
_CONTEXT = multiprocessing.get_context("spawn")
#: How long a child that was asked to finish may take before it is terminated.
_EXIT_GRACE = 10.0

M = TypeVar("M")


class PeerError(RuntimeError):
    """The child reported a failure, died, or did not answer in time."""


@dataclass(frozen=True)
class Failed:
    """The child's last word when its function raised."""

    message: str


def _child_main(conn: Connection, target: Callable[..., None], args: tuple[object, ...]) -> None:
    try:
        target(conn, *args)
    except Exception:
        # The parent prints the traceback; a second copy from multiprocessing
        # would only interleave with its output.
        conn.send(Failed(traceback.format_exc().rstrip()))
        raise SystemExit(1) from None
    finally:
        conn.close()


class Peer:
    """The parent's handle on a running child."""

    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self._conn = conn

    def expect(self, kind: type[M], timeout: float) -> M:
        """Wait for the child's next message, which must be a ``kind``."""
        if not self._conn.poll(timeout):
            raise PeerError(f"the child sent nothing for {timeout:.0f} s")
        try:
            message = self._conn.recv()
        except EOFError:
            self.process.join(_EXIT_GRACE)
            raise PeerError(f"the child exited (status {self.process.exitcode})") from None
        if isinstance(message, Failed):
            raise PeerError(f"the child failed:\n{message.message}")
        if not isinstance(message, kind):
            raise PeerError(f"expected {kind.__name__} from the child, got {message!r}")
        return message

    def send(self, message: object) -> None:
        """Tell the child something; it reads it from its end of the pipe."""
        self._conn.send(message)

    def explain(self, exc: Exception, timeout: float = 2.0) -> Exception:
        """The child's own error if it reports one soon; a broken pipe is only its symptom."""
        try:
            if self._conn.poll(timeout):
                message = self._conn.recv()
                if isinstance(message, Failed):
                    return PeerError(f"the child failed:\n{message.message}")
        except EOFError:
            pass
        return exc


@contextmanager
def start_peer(target: Callable[..., None], *args: object) -> Iterator[Peer]:
    """Run ``target(conn, *args)`` in a child; on leaving, wait for it or terminate it."""
    parent_end, child_end = _CONTEXT.Pipe()
    process = _CONTEXT.Process(target=_child_main, args=(child_end, target, args), daemon=True)
    try:
        process.start()
        # Only the child may hold its end: then its death reads as EOF here.
        child_end.close()
        yield Peer(process, parent_end)
        process.join(_EXIT_GRACE)
    finally:
        child_end.close()
        parent_end.close()
        if process.pid is not None:
            if process.is_alive():
                process.terminate()
                process.join(_EXIT_GRACE)
            if process.is_alive():
                process.kill()
                process.join()
            process.close()
