"""Both sides of a handoff in this process, up to the acknowledgement."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import anyio

import fdchannel
from fdchannel import FdState
from fdchannel.channel import Channel


@asynccontextmanager
async def handed_over(
    incoming: Sequence[Channel | str], outgoing: Sequence[Channel | str], state: FdState
) -> AsyncIterator[tuple[fdchannel.Incoming, fdchannel.Outgoing]]:
    """An Incoming that received ``state`` from an Outgoing, acknowledged it and listens on main."""
    async with fdchannel.Incoming(incoming) as inc, fdchannel.Outgoing(outgoing) as out:
        await inc.listen_cpr()
        async with anyio.create_task_group() as tg:
            tg.start_soon(out.send_cpr, state)
            with await inc.receive_cpr(timeout=5):
                await inc.listen_main()
        yield inc, out
