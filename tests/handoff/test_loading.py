"""Nothing is imported in the middle of a handoff: the service is paused by then.

``Outgoing`` and ``Incoming`` load their channels' transports when they are
made, and the fd transport behind ``Stream.from_fd`` comes with the
transports.  A fresh interpreter runs each handoff, so that what an earlier
test imported cannot hide an import.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

_HANDOFF = """
import json, os, socket, sys
import anyio
import fdchannel

main, cpr, backend = sys.argv[1:4]
options = {}
if backend == "uvloop":
    import uvloop
    backend, options = "asyncio", {"loop_factory": uvloop.new_event_loop}


def ours():
    return {name for name in sys.modules if name.startswith("fdchannel")}


async def handoff():
    out, inc = fdchannel.Outgoing([main, cpr]), fdchannel.Incoming([main, cpr])
    made = ours()
    left, right = socket.socketpair()
    with left, right:
        async with inc, out, anyio.create_task_group() as tg:
            await inc.listen_cpr()
            tg.start_soon(out.send_cpr, fdchannel.FdState([("conn", 0, left.fileno())]))
            with await inc.receive_cpr() as state:
                async with fdchannel.Stream.from_fd(os.dup(state.get("conn"))):
                    await inc.listen_main()
            tg.start_soon(out.send_main, b"rest")
            assert await inc.receive_main() == b"rest"
    return {"made": sorted(made), "during": sorted(ours() - made)}


print(json.dumps(anyio.run(handoff, backend=backend, backend_options=options)))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize(
    ("main", "loaded"),
    [
        ("unix:{dir}/main", ["unix", "fd"]),
        ("unix:@fdc-loading-{port}", ["unix", "fd"]),
        ("tcp:127.0.0.1:{port}", ["unix", "tcp", "fd"]),
    ],
    ids=["unix", "abstract", "tcp"],
)
def test_a_handoff_imports_nothing(
    anyio_backend: tuple[str, dict[str, Any]], sockdir: Path, main: str, loaded: list[str]
) -> None:
    name, options = anyio_backend
    backend = "uvloop" if options else name
    cpr = f"cpr,addr.transport=socket,addr.type=unix,addr.path={sockdir}/cpr"
    channel = main.format(dir=sockdir, port=_free_port())
    done = subprocess.run(
        [sys.executable, "-c", _HANDOFF, channel, cpr, backend],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    modules = json.loads(done.stdout)
    assert {f"fdchannel.transports.{t}" for t in loaded} <= set(modules["made"])
    assert modules["during"] == []
