"""A unix listener keeps serving well-behaved peers while hostile ones misbehave.

The server is what an application writes: accept in a loop, serve each
peer in its own task under a deadline.  Hostile peers connect first and
stall (silent, a valid header, descriptors and then nothing) or speak
another protocol; the well-behaved peers that follow each complete a state
round trip before any stalled one has even timed out.  Each hostile peer
ends in a typed failure bounded by the deadline, and the descriptors one
of them sent (from another process) are closed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

import fdchannel
from fdchannel import FdState, NamedFd, ProtocolError
from fdchannel.codecs import native
from fdchannel.transports._socket import UnixSocketStream

from ..handoff.test_hostile import valid_native_stream

pytestmark = pytest.mark.anyio
SHORT = 1.0  # the server's deadline per peer
GOOD_PEERS = 8

# Connects under an abstract name (its identity for the server), sends the
# first frame of a native state with its two descriptors (both the write end
# of a pipe whose read end it keeps), then stalls.  Its read end meets EOF
# once the server closed every copy of the write end: that is the proof.
DESCRIPTORS_THEN_STALL = """
import os, socket, sys
path, name, frame = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
r, w = os.pipe()
s = socket.socket(socket.AF_UNIX)
s.bind(b"\\0" + name.encode())
s.connect(path)
socket.send_fds(s, [frame], [w, w])
os.close(w)
print("sent", flush=True)
assert os.read(r, 1) == b""
print("closed", flush=True)
"""


def first_frame_with_two_descriptors() -> bytes:
    """A native state's first step: the header and an FDS frame announcing two descriptors."""
    memfd = os.memfd_create("frame", os.MFD_CLOEXEC)
    try:
        state = FdState([NamedFd("a", 0, memfd), NamedFd("b", 0, memfd)], b"meta")
        first = next(native.encode(state, window=0))
        assert isinstance(first, native.Send) and len(first.fds) == 2
        return first.data
    finally:
        os.close(memfd)


@dataclass(frozen=True)
class Outcome:
    """How the server's task for one peer ended, and when (monotonic)."""

    result: str | type[Exception]
    began: float
    ended: float


# (hostile peer, what it sends before stalling, how the server's task must end)
HOSTILE = {
    "silent": (b"", TimeoutError),
    "header-then-stalls": (valid_native_stream()[: native.HEADER_SIZE], TimeoutError),
    "another-protocol": (b"GET / HTTP/1.1\r\n\r\n", ProtocolError),
}
STALLED = {"silent", "header-then-stalls", "descriptors-then-stall"}


async def test_listener_serves_good_peers_while_hostile_ones_misbehave(sockdir: Path) -> None:
    path = str(sockdir / "serve.sock")
    tag = f"fdc-serving-{sockdir.name}"
    outcomes: dict[str, Outcome] = {}
    round_trips: dict[str, float] = {}
    hostile_done = anyio.Event()

    async def serve_one(stream: fdchannel.Stream) -> None:
        assert isinstance(stream, UnixSocketStream)
        # Hostile peers are named by their abstract address; good ones by their state.
        bound = stream.socket.getpeername()
        name = bound[1:].decode().removeprefix(f"{tag}-") if bound else ""
        began = time.monotonic()
        result: str | type[Exception]
        async with stream:
            try:
                with anyio.fail_after(SHORT):
                    with await fdchannel.receive_state(stream) as state:
                        name = state.metadata.decode()
                        await fdchannel.send_state(stream, state)
                        result = "served"
            except (TimeoutError, ProtocolError) as exc:
                result = type(exc)
        outcomes[name] = Outcome(result, began, time.monotonic())
        if outcomes.keys() >= HOSTILE.keys() | STALLED:
            hostile_done.set()

    accepting = anyio.CancelScope()

    async def serve(
        listener: fdchannel.Listener, *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        async with anyio.create_task_group() as served:
            with accepting:  # cancelled to stop accepting; the peers' tasks run on
                task_status.started()
                while True:
                    served.start_soon(serve_one, await listener.accept())

    async def good_peer(name: str) -> None:
        memfd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            began = time.monotonic()
            stream = await fdchannel.connect(f"unix:{path}")
            async with stream:
                state = FdState([NamedFd("mem", 0, memfd)], name.encode())
                await fdchannel.send_state(stream, state)
                with await fdchannel.receive_state(stream) as back:
                    assert back.metadata == name.encode()
                    assert os.fstat(back.get("mem")).st_ino == os.fstat(memfd).st_ino
            round_trips[name] = time.monotonic() - began
        finally:
            os.close(memfd)

    raw: list[socket.socket] = []
    try:
        with anyio.fail_after(15):
            async with (
                await fdchannel.listen(f"unix:{path}") as listener,
                anyio.create_task_group() as tg,
            ):
                await tg.start(serve, listener)
                # The hostile peers connect first, so they are accepted first;
                # the one in another process before the rest, whose deadlines
                # then do not run while it starts.
                frame = first_frame_with_two_descriptors().hex()
                command = [
                    sys.executable,
                    "-c",
                    DESCRIPTORS_THEN_STALL,
                    path,
                    f"{tag}-descriptors-then-stall",
                    frame,
                ]
                async with await anyio.open_process(
                    command, stdin=subprocess.DEVNULL, stderr=None
                ) as child:
                    assert child.stdout is not None
                    lines = BufferedByteReceiveStream(child.stdout)
                    assert await lines.receive_until(b"\n", 64) == b"sent"
                    for kind, (sent, _) in HOSTILE.items():
                        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                        raw.append(sock)
                        sock.bind(f"\0{tag}-{kind}".encode())
                        sock.connect(path)
                        sock.sendall(sent)

                    async with anyio.create_task_group() as peers:
                        for i in range(GOOD_PEERS):
                            peers.start_soon(good_peer, f"good-{i}")
                    # The server closed what it was sent: the child's pipe hit EOF.
                    assert await lines.receive_until(b"\n", 64) == b"closed"
                    assert await child.wait() == 0
                # Still serving after every hostile peer was dealt with.
                await hostile_done.wait()
                await good_peer("good-after")
                accepting.cancel()
    finally:
        for sock in raw:
            sock.close()

    good = {f"good-{i}" for i in range(GOOD_PEERS)} | {"good-after"}
    assert set(round_trips) == good
    hostile = {kind: error for kind, (_, error) in HOSTILE.items()}
    hostile["descriptors-then-stall"] = TimeoutError
    assert {name: o.result for name, o in outcomes.items()} == {
        **{name: "served" for name in good},
        **hostile,
    }
    # Served promptly: every good peer was done while the stalled ones still waited.
    first_stall_ended = min(outcomes[name].ended for name in STALLED)
    assert max(outcomes[f"good-{i}"].ended for i in range(GOOD_PEERS)) < first_stall_ended
    assert max(round_trips[f"good-{i}"] for i in range(GOOD_PEERS)) < SHORT
    # Each hostile peer's task ended within its deadline (+1 s).
    for name in hostile:
        assert outcomes[name].ended - outcomes[name].began < SHORT + 1
