"""Parse channels as QEMU would, open a cpr channel, and pass a memfd across it.

Run with ``python examples/channels.py``.  This is the demo until the
live-upgrade example lands; it says so when it runs.
"""

from __future__ import annotations

import json
import os
import tempfile

import anyio

import fdchannel


async def main() -> None:
    print("note: the live-upgrade demo has not landed yet; this shows parsing and fd passing.\n")
    for text in [
        "tcp:[::1]:4446,keep-alive=on",
        "unix:/run/vm/main.sock",
        "file:/var/lib/vm/state,offset=4K",
        "cpr,addr.transport=socket,addr.type=unix,addr.path=/run/vm/cpr.sock",
    ]:
        channel = fdchannel.parse_channel(text)
        print(f"{text}\n  -> {channel.addr!r}\n  qapi {json.dumps(channel.to_qapi())}")

    with tempfile.TemporaryDirectory(prefix="fdc-") as tmp:
        path = os.path.join(tmp, "cpr.sock")
        cpr = fdchannel.parse_channel(f"cpr,addr.transport=socket,addr.type=unix,addr.path={path}")
        memfd = os.memfd_create("ram0", os.MFD_CLOEXEC)
        os.write(memfd, b"guest memory")
        try:
            async with await fdchannel.listen(cpr) as listener, anyio.create_task_group() as tg:

                async def old_process() -> None:
                    stream = await fdchannel.connect(cpr)
                    state = fdchannel.FdState([fdchannel.NamedFd("ram0", 0, memfd)], b"meta")
                    await fdchannel.send_state(stream, state, codec="native")
                    await stream.aclose()

                tg.start_soon(old_process)
                stream = await listener.accept()
                with await fdchannel.receive_state(stream) as state:
                    fd = state.get("ram0")
                    print(f"\nreceived ram0 as fd {fd}: {os.pread(fd, 12, 0)!r}")
                await stream.aclose()
        finally:
            os.close(memfd)


if __name__ == "__main__":
    anyio.run(main)
