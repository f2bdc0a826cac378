"""A handoff peer run as a real process; it SIGKILLs itself at a chosen step.

``python -m tests.handoff.peer incoming|outgoing CPR_PATH MAIN_PATH DIE_AT CODEC``

It prints one line per step reached, so the test can follow it, and dies
with SIGKILL at DIE_AT (``never`` to finish normally).
"""

from __future__ import annotations

import os
import resource
import signal
import struct
import sys

import anyio

import fdchannel
from fdchannel.address import UnixAddress
from fdchannel.channel import Channel, ChannelType

MAIN_DATA = b"main" * (1 << 20)  # 4 MiB: more than one socket buffer


def channels(cpr: str, main: str) -> list[Channel]:
    return [
        Channel(ChannelType.MAIN, UnixAddress(main)),
        Channel(ChannelType.CPR, UnixAddress(cpr)),
    ]


def step(name: str, die_at: str) -> None:
    print(name, flush=True)
    if name == die_at:
        os.kill(os.getpid(), signal.SIGKILL)


async def incoming(cpr: str, main: str, die_at: str) -> None:
    async with fdchannel.Incoming(channels(cpr, main)) as inc:
        listener = await inc.listen_cpr()
        if die_at == "low-limit":
            # EMFILE waiting to happen: no room for a state's descriptors.
            low = len(os.listdir("/proc/self/fd")) + 5
            resource.setrlimit(resource.RLIMIT_NOFILE, (low, low))
        step("listening", die_at)
        if die_at == "mid-read":
            stream = await listener.accept()
            await stream.receive(8)  # a few bytes of the header, not the rest
            step("mid-read", die_at)
        with await inc.receive_cpr(timeout=20) as state:
            step("received", die_at)
            os.pread(state.get("ram0"), 4, 0)
            await inc.listen_main()
            step("acked", die_at)
            stream = await inc.accept_main(timeout=20)
            if die_at == "mid-main":
                await stream.receive(65536)
                step("mid-main", die_at)
            data = await inc.receive_main(timeout=20)
            assert data == MAIN_DATA
            step("done", die_at)


async def outgoing(cpr: str, main: str, die_at: str, codec: str) -> None:
    memfd = os.memfd_create("ram0")
    os.write(memfd, b"ram!")
    metadata = b"meta" if codec == "native" else b""  # QEMU's format has none
    state = fdchannel.FdState([fdchannel.NamedFd("ram0", 0, memfd)], metadata)
    step("ready", die_at)
    async with fdchannel.Outgoing(channels(cpr, main), codec=codec) as out:  # type: ignore[arg-type]
        if die_at == "mid-send":
            stream = await fdchannel.connect(UnixAddress(cpr))
            await stream.send(b"FDCN\x01\x00")  # half a header
            step("mid-send", die_at)
        await out.send_cpr(state, timeout=20)
        step("acked", die_at)
        stream = await out.connect_main(timeout=20)
        if die_at == "mid-main":
            # What complete() sends, cut short: the length, then part of the data.
            await stream.send(struct.pack(">Q", len(MAIN_DATA)) + MAIN_DATA[:65536])
            step("mid-main", die_at)
        await out.send_main(MAIN_DATA, timeout=20)
        step("done", die_at)


def main() -> None:
    role, cpr, main_path, die_at, codec = sys.argv[1:6]
    if role == "incoming":
        anyio.run(incoming, cpr, main_path, die_at)
    else:
        anyio.run(outgoing, cpr, main_path, die_at, codec)


if __name__ == "__main__":
    main()
