"""A listener that yields exactly one, already open, stream (file:, exec:, fd:)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio.lowlevel

from ..capabilities import Capability
from ..errors import CapabilityError
from ._base import Listener, Stream

if TYPE_CHECKING:
    from ..address import Address

__all__ = ["OneStreamListener"]


class OneStreamListener(Listener):
    """An incoming side that yields exactly one, already open, stream.

    Until it is accepted the listener owns the stream and closes it with
    itself; afterwards the stream is the caller's.
    """

    capabilities = Capability.NONE

    def __init__(self, stream: Stream, address: Address) -> None:
        super().__init__(address)
        self._stream: Stream | None = stream
        self._closed = False
        self.stream_capabilities = stream.capabilities

    async def accept(self) -> Stream:
        await anyio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise anyio.ClosedResourceError
        stream = self._stream
        if stream is None:
            raise CapabilityError(
                f"the incoming side of {self.address} yields exactly one stream and it was "
                "already accepted (this transport has no MULTI_ACCEPT)"
            )
        self._stream = None
        await anyio.lowlevel.cancel_shielded_checkpoint()
        return stream

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            stream, self._stream = self._stream, None
            if stream is not None:
                await stream.aclose()
                return
        await anyio.lowlevel.checkpoint()
