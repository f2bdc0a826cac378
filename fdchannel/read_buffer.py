"""What a stream read from its descriptor and did not return yet: one buffer for both layers.

Bytes the peer sent and nobody read are in the kernel's socket buffer and
travel with the descriptor.  Bytes a stream read into its own memory do
not: a stream keeps them here (what ``wait_peer_closed`` read before the
hang-up, what ``receive_until`` and ``receive_exactly`` read past what they
returned, what a previous owner handed over), serves them before it reads
again, and ``detach`` hands them over with the descriptor.

The steps here never wait: the async stream waits on its event loop and
the blocking one with ``poll(2)``, and each calls these between waits.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

from .sockets import DEFAULT_RECEIVE, keep_until_closed

if TYPE_CHECKING:
    from .address import Address

__all__ = ["MAX_READ", "ReadBuffer", "check_exact_size", "check_line_arguments"]

#: The most ``receive_exactly`` reads at once (a larger wanted size reads in pieces).
MAX_READ = 4 * 1024 * 1024


class ReadBuffer(abc.ABC):
    """Bytes read and not returned yet, and whether the peer's EOF was read.

    A base class of both layers' streams rather than an object they hold:
    a receive with nothing buffered tests one attribute (``_pending``) and
    goes to the kernel, as it did before there was anything to share.
    """

    _pending: bytearray
    _eof_seen: bool

    def _start_reading(self) -> None:
        """Nothing read yet (the stream's constructor calls it)."""
        self._pending = bytearray()
        self._eof_seen = False

    @abc.abstractmethod
    def _no_delimiter(self, max_bytes: int) -> Exception:
        """The layer's error for a ``receive_until`` line longer than ``max_bytes``."""

    @abc.abstractmethod
    def _cut_short(self) -> Exception:
        """The layer's error for the end of the stream before the delimiter or the bytes."""

    @property
    def buffered(self) -> bytes:
        """What was read from the descriptor and not returned yet: the next receives
        return it first, and ``detach`` hands it over with the descriptor."""
        return bytes(self._pending)

    @property
    def at_eof(self) -> bool:
        """True once the peer's EOF was read and nothing is left: the next receive
        reports the end at once."""
        return self._eof_seen and not self._pending

    def _serve_first(self, buffered: bytes) -> None:
        """Bytes a previous owner of the descriptor read: returned before anything read here."""
        self._pending[:0] = buffered

    def _take(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` of the buffered bytes, consumed."""
        data = bytes(self._pending[:max_bytes])
        del self._pending[:max_bytes]
        return data

    def _peek(self, size: int) -> bytes:
        """Up to ``size`` of the buffered bytes, left there."""
        return bytes(self._pending[:size])

    def _keep(self, data: bytes) -> None:
        """One read's result, for the steps below: ``b""`` is the peer's EOF."""
        if data:
            self._pending += data
        else:
            self._eof_seen = True

    def _keep_until_closed(self, data: bytes, what: str, address: Address | None) -> None:
        """One read of a wait for the peer's close (kept up to MAX_PENDING bytes)."""
        self._eof_seen = keep_until_closed(self._pending, data, what, address)

    def _line(self, delimiter: bytes, max_bytes: int, start: int) -> bytes | int:
        """The buffered bytes up to ``delimiter``, both consumed, and the delimiter left
        out; or, when it is not there yet, where to look again after the next read
        (``start`` for this look: 0 at first).  Raises the layer's errors for a
        line longer than ``max_bytes`` however it arrived, and for the peer's EOF
        first (the bytes stay buffered in both cases)."""
        end = max_bytes + len(delimiter)
        index = self._pending.find(delimiter, start, end)
        if index >= 0:
            line = bytes(self._pending[:index])
            del self._pending[: index + len(delimiter)]
            return line
        if len(self._pending) >= end:
            raise self._no_delimiter(max_bytes)
        if self._eof_seen:
            raise self._cut_short()
        # A delimiter split across reads starts in the last len(delimiter) - 1 bytes.
        return max(len(self._pending) - len(delimiter) + 1, 0)

    def _exactly(self, nbytes: int) -> bytes | None:
        """``nbytes`` buffered bytes, consumed; None when fewer are there yet.
        Raises the layer's error at the peer's EOF (the bytes stay buffered)."""
        if len(self._pending) >= nbytes:
            return self._take(nbytes)
        if self._eof_seen:
            raise self._cut_short()
        return None

    def _read_size(self, nbytes: int) -> int:
        """How much a read for ``receive_exactly(nbytes)`` asks for: what is missing,
        at least a default receive's worth (what follows stays buffered)."""
        return min(max(nbytes - len(self._pending), DEFAULT_RECEIVE), MAX_READ)

    def _release_buffer(self) -> bytes:
        """Every buffered byte, for ``detach``: the stream keeps none."""
        data = bytes(self._pending)
        self._pending.clear()
        return data


def check_line_arguments(delimiter: bytes, max_bytes: int) -> None:
    """ValueError for what ``receive_until`` cannot look for."""
    if not delimiter:
        raise ValueError("the delimiter must not be empty")
    if max_bytes < 0:
        raise ValueError("max_bytes must not be negative")


def check_exact_size(nbytes: int) -> None:
    """ValueError for what ``receive_exactly`` cannot read."""
    if nbytes < 0:
        raise ValueError("nbytes must not be negative")
