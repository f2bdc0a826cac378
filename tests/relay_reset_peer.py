"""Peers of a cpr handoff that reset the connection: they close, or die, with the
other side's bytes unread (for AF_UNIX that is what makes the kernel reset the peer).

``python -m tests.relay_reset_peer receiver|sender CODEC ADDRESS`` runs one as a
real process that SIGKILLs itself at that point.  The receiver listens on
ADDRESS (printing "listening" and the address it got), takes one peer and
dies with its state unread; the sender connects to ADDRESS, sends part of a
state and dies with the receiver's reply unread (a qemu receiver never
replies: that sender just dies in the middle).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator

import anyio

import fdchannel
from fdchannel.codecs.encoder import Encoder
from fdchannel.fds import SCM_MAX_FD
from fdchannel.transports import Stream, Target
from fdchannel.transports._socket import SocketStream, UnixSocketStream

#: One window of descriptors and one more: a native receiver ACKs the first.
ENTRIES = SCM_MAX_FD + 1


@contextlib.contextmanager
def memfd_state(entries: int = ENTRIES) -> Iterator[fdchannel.FdState]:
    """A state of ``entries`` entries over one memfd (closed afterwards)."""
    memfd = os.memfd_create("ram", os.MFD_CLOEXEC)
    try:
        os.write(memfd, b"ram!")
        yield fdchannel.FdState([fdchannel.NamedFd("ram", i, memfd) for i in range(entries)])
    finally:
        os.close(memfd)


@contextlib.asynccontextmanager
async def unread_state(listener: fdchannel.Listener) -> AsyncIterator[Stream]:
    """Accept one peer and return once its bytes wait, unread, in our receive queue."""
    stream = await listener.accept()
    async with stream:
        assert isinstance(stream, SocketStream)
        await anyio.wait_readable(stream.socket)  # bytes are queued; none is consumed
        yield stream


@contextlib.asynccontextmanager
async def unread_reply(target: Target, codec: str) -> AsyncIterator[Stream]:
    """Connect, send the first part of a state, and return once the receiver's reply
    (native: the ACK of the first window) waits unread; qemu: once it is sent."""
    stream = await fdchannel.connect(target)
    async with stream:
        with memfd_state() as state:
            encoder = Encoder(state, "native" if codec == "native" else "qemu", window=SCM_MAX_FD)
            messages = encoder.data_to_send()
            await stream.send_fds_many(messages if codec == "native" else messages[:1])
        if codec == "native":
            assert isinstance(stream, UnixSocketStream)
            await stream.peek(1)
        yield stream


async def _die_in(context: contextlib.AbstractAsyncContextManager[Stream]) -> None:
    async with context:
        print("resetting", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


async def _main(role: str, codec: str, address: str) -> None:
    if role == "receiver":
        async with await fdchannel.listen(address) as listener:
            print(f"listening {listener.address}", flush=True)
            await _die_in(unread_state(listener))
    else:
        await _die_in(unread_reply(address, codec))


if __name__ == "__main__":
    role, codec, address = sys.argv[1:4]
    anyio.run(_main, role, codec, address)
