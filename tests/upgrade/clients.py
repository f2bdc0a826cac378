"""Client threads for load tests: started together, stopped and joined together."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Self

TIMEOUT = 30.0


class ClientThreads:
    """One thread per worker, each looping until ``stop`` is set; ``progress`` guards
    what they count and wakes whoever waits for it."""

    def __init__(self, workers: Sequence[Callable[[], None]]) -> None:
        self.stop = threading.Event()
        self.progress = threading.Condition()
        self.threads = [threading.Thread(target=work, daemon=True) for work in workers]

    def wait_until(self, done: Callable[[], bool], why: Callable[[], object] = str) -> None:
        """Wait (bounded) until ``done()`` holds, with ``why()`` in the failure."""
        with self.progress:
            assert self.progress.wait_for(done, TIMEOUT), why()

    @contextlib.contextmanager
    def running(self) -> Iterator[Self]:
        for thread in self.threads:
            thread.start()
        try:
            yield self
        finally:
            self.stop.set()
            for thread in self.threads:
                thread.join(TIMEOUT)
