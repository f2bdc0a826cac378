"""Connecting and accepting that outlast the peer's first answer, for the handoff and the relay.

``connect_retrying`` waits for a listener that is still starting (the retry
policy is ``fdchannel.retry``'s, shared with the blocking layer);
``accept_admitted`` skips the peers a listener's credential policy refuses.
The caller's deadline bounds both.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from ..channel import Channel
from ..errors import ConnectError, PeerCredentialsError
from ..retry import delays, worth_retrying
from . import connect
from ._base import Listener, Stream

__all__ = ["accept_admitted", "connect_retrying"]


async def connect_retrying(channel: Channel, attempts: list[str] | None = None) -> Stream:
    """Connect, retrying while the peer's socket is missing or refuses.

    QEMU does not retry; a new process that is still starting is normal
    for us, so we back off briefly until the caller's deadline cancels us.
    Each failed attempt's reason is appended to ``attempts`` if given.
    """
    pauses = delays()
    while True:
        try:
            return await connect(channel)
        except ConnectError as exc:
            worth_retrying(exc, attempts)
        await anyio.sleep(next(pauses))


async def accept_admitted(
    listener: Listener, on_refused: Callable[[PeerCredentialsError], None]
) -> Stream:
    """The next peer the listener's credential policy admits.

    A refused peer was closed unread by the listener; ``on_refused`` hears
    of it, and we wait for the next one.
    """
    while True:
        try:
            return await listener.accept()
        except PeerCredentialsError as exc:
            on_refused(exc)
