"""fdchannel.blocking: the protocol without an event loop, on the wire with the async API.

The async side runs on asyncio, uvloop and trio; the blocking side runs in
another process (tests/blocking_peer.py), in this thread, or in a worker
thread of a running event loop.  Every memfd's contents are checked on
the side that received it; every failure is a typed error within its
timeout, and the sender still owns its descriptors afterwards.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

import fdchannel
from fdchannel import (
    AddressError,
    Capability,
    CapabilityError,
    ConnectionLostError,
    FdChannelError,
    HandoffError,
    HandoffTimeout,
    PeerCredentialsError,
    TransportError,
    blocking,
)
from fdchannel.address import TcpAddress, UnixAddress
from fdchannel.codecs import native
from fdchannel.fds import SCM_MAX_FD
from fdchannel.protocol import main_framing as main_channel
from fdchannel.protocol.machine import State
from fdchannel.state import FdState
from fdchannel.transfer import Codec
from fdchannel.transports import fd as fd_transport

from .blocking_peer import MAIN_DATA, REJECTION, channels, check_state, state_of
from .children import ROOT, reading_lines
from .intruder import NOBODY, SCRIPT, needs_root

#: Seconds a step gets where it must time out; LONG bounds what must succeed.
SHORT = 0.3
LONG = 30.0
#: More than one message of descriptors (253), few enough for QEMU's one per message.
COUNT = 300
TEN_THOUSAND = 10_000


def paths(sockdir: Path) -> tuple[str, str]:
    return str(sockdir / "cpr"), str(sockdir / "main")


# --- peers ---------------------------------------------------------------------------------


def peer_command(role: str, sockdir: Path, codec: str, count: int, verdict: str) -> list[str]:
    cpr, main = paths(sockdir)
    return [
        sys.executable,
        "-m",
        "tests.blocking_peer",
        role,
        cpr,
        main,
        codec,
        str(count),
        verdict,
    ]


class Lines:
    """A child's stdout, a line at a time, each wait bounded (poll, no sleeps)."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        self._process = process
        self._fd = process.stdout.fileno()
        self._buffer = b""

    def next(self, timeout: float = LONG) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            poller = select.poll()
            poller.register(self._fd, select.POLLIN)
            left = max(0.0, deadline - time.monotonic())
            assert poller.poll(left * 1000), f"the peer said nothing for {timeout} s"
            chunk = os.read(self._fd, 4096)
            assert chunk, f"the peer exited with {self._process.wait(LONG)} and no line"
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()


@contextmanager
def blocking_peer(
    role: str, sockdir: Path, codec: str = "native", count: int = COUNT, verdict: str = "accept"
) -> Iterator[tuple[subprocess.Popen[bytes], Lines]]:
    """tests/blocking_peer.py from this (event-loop free) test; always reaped."""
    command = peer_command(role, sockdir, codec, count, verdict)
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE) as process:
        try:
            yield process, Lines(process)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(LONG)


@asynccontextmanager
async def async_peer(
    role: str, sockdir: Path, codec: str, verdict: str
) -> AsyncIterator[tuple[Process, BufferedByteReceiveStream]]:
    """tests/blocking_peer.py from an async test; always killed and reaped."""
    command = peer_command(role, sockdir, codec, COUNT, verdict)
    async with reading_lines(command) as child:
        yield child


async def line(lines: BufferedByteReceiveStream) -> str:
    return (await lines.receive_until(b"\n", 65536)).decode()


@contextmanager
def in_thread(fn: Callable[[], Any]) -> Iterator[Future[Any]]:
    """Run ``fn`` in a worker thread (no event loop there); joined on leaving."""
    with ThreadPoolExecutor(1) as pool:
        yield pool.submit(fn)


# --- wire compatibility with the async API, two processes ----------------------------------

#: (codec, what the incoming side does with the state)
INTEROP = [
    pytest.param("native", "accept", id="native"),
    pytest.param("qemu", "accept", id="qemu"),
    pytest.param("native", "reject", id="native-rejected"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("codec", "verdict"), INTEROP)
async def test_blocking_outgoing_to_async_incoming(
    sockdir: Path, codec: Codec, verdict: str
) -> None:
    async with fdchannel.Incoming(channels(*paths(sockdir))) as inc:
        await inc.listen_cpr()
        async with async_peer("outgoing", sockdir, codec, verdict) as (process, out):
            with anyio.fail_after(LONG):
                # One window of 253: the async receiver acknowledges it (native).
                assert await line(out) == f"window {SCM_MAX_FD}"
                with await inc.receive_cpr(timeout=LONG) as state:
                    assert inc.codec == codec
                    check_state(state, COUNT, codec)  # the peer's memfds, read here
                    if verdict == "reject":
                        await inc.reject(REJECTION)
                    else:
                        await inc.listen_main()
                if verdict == "reject":
                    said = await line(out)
                    assert said.startswith("rejected: ") and REJECTION in said
                else:
                    assert await inc.receive_main(timeout=LONG) == MAIN_DATA
                    assert await line(out) == f"ack {codec} {COUNT}"
                    assert await line(out) == "done"
                assert await process.wait() == 0


@pytest.mark.anyio
@pytest.mark.parametrize(("codec", "verdict"), INTEROP)
async def test_async_outgoing_to_blocking_incoming(
    sockdir: Path, codec: Codec, verdict: str
) -> None:
    async with async_peer("incoming", sockdir, codec, verdict) as (process, out):
        with anyio.fail_after(LONG), state_of(COUNT, codec) as state:
            assert await line(out) == "listening"
            async with fdchannel.Outgoing(channels(*paths(sockdir)), codec=codec) as og:
                if verdict == "reject":
                    with pytest.raises(HandoffError, match=REJECTION):
                        await og.send_cpr(state, timeout=LONG)
                    check_state(state, COUNT, codec)  # the rollback: still ours, intact
                else:
                    ack = await og.send_cpr(state, timeout=LONG)
                    assert (ack.codec, ack.descriptors) == (codec, COUNT)
                    await og.send_main(MAIN_DATA, timeout=LONG)
            # The peer checked every memfd's contents before it said so.
            assert await line(out) == f"received {codec} {COUNT}"
            assert await line(out) == ("rejected" if verdict == "reject" else "done")
            assert await process.wait() == 0


@pytest.mark.anyio
async def test_a_blocking_receiver_without_room_refuses_naming_the_limit(sockdir: Path) -> None:
    async with async_peer("incoming", sockdir, "native", "low-limit") as (process, out):
        with anyio.fail_after(LONG), state_of(COUNT, "native") as state:
            assert await line(out) == "listening"
            async with fdchannel.Outgoing(channels(*paths(sockdir))) as og:
                with pytest.raises(HandoffError, match="RLIMIT_NOFILE"):
                    await og.send_cpr(state, timeout=LONG)
            said = await line(out)
            assert said.startswith("refused: ") and "RLIMIT_NOFILE" in said
            assert await process.wait() == 0
            check_state(state, COUNT, "native")


# --- a worker thread of a program whose main thread runs an event loop ----------------------

DIRECTIONS = ["blocking-outgoing", "blocking-incoming"]


@pytest.mark.anyio
@pytest.mark.parametrize("codec", ["native", "qemu"])
@pytest.mark.parametrize("direction", DIRECTIONS)
async def test_blocking_side_in_a_worker_thread_of_a_running_loop(
    sockdir: Path, direction: str, codec: Codec
) -> None:
    chans = channels(*paths(sockdir))
    listening = threading.Event()

    def old_process(state: FdState) -> None:
        with blocking.Outgoing(chans, codec=codec) as out:
            assert out.send_cpr(state, timeout=LONG).descriptors == COUNT
            out.send_main(MAIN_DATA, timeout=LONG)

    def new_process() -> None:
        with blocking.Incoming(chans) as inc:
            inc.listen_cpr()
            listening.set()
            with inc.receive_cpr(timeout=LONG) as received:
                check_state(received, COUNT, codec)
                inc.listen_main()
            assert inc.receive_main(timeout=LONG) == MAIN_DATA

    with anyio.fail_after(LONG), state_of(COUNT, codec) as state:
        async with anyio.create_task_group() as tg:
            if direction == "blocking-outgoing":
                tg.start_soon(anyio.to_thread.run_sync, old_process, state)
                async with fdchannel.Incoming(chans) as inc:
                    with await inc.receive_cpr(timeout=LONG) as received:
                        check_state(received, COUNT, codec)
                        await inc.listen_main()
                    assert await inc.receive_main(timeout=LONG) == MAIN_DATA
            else:
                tg.start_soon(anyio.to_thread.run_sync, new_process)
                # Outgoing retries until the thread listens; the event says it does.
                async with fdchannel.Outgoing(chans, codec=codec) as og:
                    assert (await og.send_cpr(state, timeout=LONG)).descriptors == COUNT
                    assert listening.is_set()
                    await og.send_main(MAIN_DATA, timeout=LONG)


# --- 10,000 descriptors, blocking to blocking: the acknowledged windows ---------------------


def test_ten_thousand_descriptors_handoff(sockdir: Path) -> None:
    with blocking.Incoming(channels(*paths(sockdir))) as inc:
        inc.listen_cpr()
        with blocking_peer("outgoing", sockdir, count=TEN_THOUSAND) as (process, lines):
            window = int(lines.next().split()[1])
            assert window < TEN_THOUSAND  # so the receiver acknowledges at least once
            with inc.receive_cpr(timeout=LONG) as state:
                check_state(state, TEN_THOUSAND, "native")
                inc.listen_main()
            assert inc.receive_main(timeout=LONG) == MAIN_DATA
            assert lines.next() == f"ack native {TEN_THOUSAND}"
            assert lines.next() == "done"
            assert process.wait(LONG) == 0


def test_ten_thousand_descriptors_send_state(sockdir: Path) -> None:
    cpr, _ = paths(sockdir)
    with (
        blocking.listen(UnixAddress(cpr)) as listener,
        blocking_peer("send-state", sockdir, count=TEN_THOUSAND) as (process, lines),
    ):
        with (
            listener.accept(timeout=LONG) as stream,
            blocking.receive_state(stream, timeout=LONG) as state,
        ):
            check_state(state, TEN_THOUSAND, "native")
        # 759 per window: thirteen acknowledgements went back.
        assert lines.next() == f"sent {TEN_THOUSAND} window 759"
        assert lines.next() == "done"  # it saw our close
        assert process.wait(LONG) == 0


# --- hostile and broken peers: typed errors, bounded -----------------------------------------


def valid_native_stream() -> bytes:
    steps = native.encode(FdState([], b"metadata"), window=0)
    return b"".join(s.data for s in steps if isinstance(s, native.Send))


# (what a raw sender sends, whether it then closes or stalls, the error)
BROKEN_SENDERS = [
    pytest.param(b"", True, HandoffError, id="connects-and-closes"),
    pytest.param(valid_native_stream()[:16], True, HandoffError, id="closes-after-the-header"),
    pytest.param(valid_native_stream()[:-3], True, HandoffError, id="closes-before-the-end"),
    pytest.param(b"GET / HTTP/1.1\r\n\r\n", True, HandoffError, id="speaks-another-protocol"),
    pytest.param(b"", False, HandoffTimeout, id="connects-and-says-nothing"),
    pytest.param(valid_native_stream()[:16], False, HandoffTimeout, id="stalls-after-the-header"),
]


@pytest.mark.parametrize(("sent", "closes", "error"), BROKEN_SENDERS)
def test_incoming_with_a_broken_sender(
    sockdir: Path, sent: bytes, closes: bool, error: type[HandoffError]
) -> None:
    cpr, main = paths(sockdir)
    with blocking.Incoming(channels(cpr, main)) as inc:
        inc.listen_cpr()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:
            peer.connect(cpr)
            peer.sendall(sent)
            if closes:
                peer.close()
            began = time.monotonic()
            with pytest.raises(error) as raised:
                inc.receive_cpr(timeout=SHORT)
            assert type(raised.value) is error
            assert time.monotonic() - began < SHORT + 1
            assert inc.state is State.FAILED


def test_descriptors_of_a_sender_that_dies_mid_state_are_closed(sockdir: Path) -> None:
    """Two of three messages of descriptors arrive, then the sender is gone: what
    arrived is closed (the leak check proves it) and the error is typed."""
    cpr, main = paths(sockdir)
    with state_of(600, "native") as state, blocking.Incoming(channels(cpr, main)) as inc:
        inc.listen_cpr()
        steps = [step for step in native.encode(state) if isinstance(step, native.Send)]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:
            peer.connect(cpr)
            for data, fds in steps[:2]:
                socket.send_fds(peer, [data], fds)
        with pytest.raises(HandoffError, match="ended") as raised:
            inc.receive_cpr(timeout=LONG)
        assert type(raised.value) is HandoffError


def _closes_mid_state(conn: socket.socket, release: threading.Event) -> None:
    conn.recv(8)


def _closes_without_status(conn: socket.socket, release: threading.Event) -> None:
    while conn.recv(1 << 16):
        pass


def _rejects(conn: socket.socket, release: threading.Event) -> None:
    while conn.recv(1 << 16):
        pass
    conn.sendall(native.status_frame(False, REJECTION))


def _never_acknowledges(conn: socket.socket, release: threading.Event) -> None:
    while conn.recv(1 << 16):
        pass
    release.wait(LONG)


# (what a raw receiver does after accepting, the error, its message)
BROKEN_RECEIVERS = [
    pytest.param(
        _closes_mid_state, HandoffError, "hung up|without a status", id="closes-mid-state"
    ),
    pytest.param(_closes_without_status, HandoffError, "without a status", id="no-status"),
    pytest.param(_rejects, HandoffError, REJECTION, id="rejects-with-a-reason"),
    pytest.param(_never_acknowledges, HandoffTimeout, "did not finish", id="never-acknowledges"),
]


@pytest.mark.parametrize(("behave", "error", "message"), BROKEN_RECEIVERS)
def test_outgoing_with_a_broken_receiver(
    sockdir: Path,
    behave: Callable[[socket.socket, threading.Event], None],
    error: type[HandoffError],
    message: str,
) -> None:
    cpr, main = paths(sockdir)
    release = threading.Event()

    def receiver(server: socket.socket) -> None:
        conn, _ = server.accept()
        with conn:
            behave(conn, release)

    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server,
        state_of(COUNT, "native") as state,
    ):
        server.bind(cpr)
        server.listen()
        server.settimeout(LONG)
        with in_thread(lambda: receiver(server)) as done:
            try:
                with blocking.Outgoing(channels(cpr, main)) as out:
                    with pytest.raises(error, match=message) as raised:
                        out.send_cpr(state, timeout=SHORT * 3)
                    assert type(raised.value) is error
                    assert out.state is State.FAILED
            finally:
                release.set()
            done.result(LONG)
        check_state(state, COUNT, "native")  # the rollback: every descriptor still ours


def test_rejected_state_blocking_to_blocking(sockdir: Path) -> None:
    chans = channels(*paths(sockdir))

    def new_process() -> None:
        with blocking.Incoming(chans) as inc, inc.receive_cpr(timeout=LONG) as received:
            check_state(received, COUNT, "native")
            inc.reject(REJECTION)
            assert inc.state is State.REJECTED

    with state_of(COUNT, "native") as state, in_thread(new_process) as done:
        with blocking.Outgoing(chans) as out, pytest.raises(HandoffError, match=REJECTION):
            out.send_cpr(state, timeout=LONG)
        done.result(LONG)
        check_state(state, COUNT, "native")


def test_a_main_stream_cut_short_is_an_error(sockdir: Path) -> None:
    chans = channels(*paths(sockdir))

    def old_process() -> None:
        with state_of(1, "native") as state, blocking.Outgoing(chans) as out:
            out.send_cpr(state, timeout=LONG)
            stream = out.connect_main(timeout=LONG)
            stream.send(main_channel.header(100) + bytes(10), timeout=LONG)
            stream.send_eof()  # and leaving abandons the handoff: 90 bytes never come

    with in_thread(old_process) as done, blocking.Incoming(chans) as inc:
        with inc.receive_cpr(timeout=LONG):
            inc.listen_main()
        with pytest.raises(HandoffError, match="ended after 10 of 100 bytes"):
            inc.receive_main(timeout=LONG)
        done.result(LONG)
        assert inc.state is State.FAILED


def test_a_failed_start_can_be_retried(sockdir: Path) -> None:
    chans = channels(*paths(sockdir))
    with state_of(1, "native") as state, blocking.Outgoing(chans) as out:
        began = time.monotonic()
        with pytest.raises(HandoffTimeout, match="never accepted"):
            out.send_cpr(state, timeout=SHORT)  # nobody listens: retried until the deadline
        assert SHORT <= time.monotonic() - began < SHORT + 1

        def new_process() -> None:
            with blocking.Incoming(chans) as inc:
                with inc.receive_cpr(timeout=LONG) as received:
                    check_state(received, 1, "native")
                    inc.listen_main()
                assert inc.receive_main(timeout=LONG) == b""

        with in_thread(new_process) as done:
            assert out.send_cpr(state, timeout=LONG).descriptors == 1
            out.send_main(timeout=LONG)
            done.result(LONG)
        assert out.state is State.DONE


def _abstract_cpr(stack: ExitStack, name: str) -> str:
    return f"cpr,addr.transport=socket,addr.type=unix,addr.path={name},addr.abstract=on"


def _fd_cpr(stack: ExitStack, name: str) -> str:
    """A listening socket handed over as a registered fd: name (socket activation's way)."""
    sock = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    sock.bind(b"\0" + name.encode())
    sock.listen()
    fd_transport.register_fd("handed", sock.fileno())
    stack.callback(fd_transport.unregister_fd, "handed")
    return "cpr,addr.transport=socket,addr.type=fd,addr.str=handed"


@needs_root
@pytest.mark.parametrize("make_cpr", [_abstract_cpr, _fd_cpr], ids=["unix-abstract", "fd-name"])
def test_a_peer_of_another_uid_is_refused_unread(
    sockdir: Path, make_cpr: Callable[[ExitStack, str], str], caplog: pytest.LogCaptureFixture
) -> None:
    name = f"fdc-blocking-{sockdir.name}"
    with ExitStack() as stack:
        cpr = make_cpr(stack, name)
        with blocking.Incoming([f"unix:{sockdir / 'main'}", cpr]) as inc:
            inc.listen_cpr()
            command = [sys.executable, "-c", SCRIPT, name]
            with subprocess.Popen(command, stdout=subprocess.PIPE) as child:
                said = Lines(child)
                assert said.next() == "connected"  # queued: accept will find it
                with pytest.raises(HandoffTimeout):
                    inc.receive_cpr(timeout=SHORT)  # the intruder is refused, nobody else came
                assert said.next() == "closed"  # closed with its bytes unread
                assert child.wait(LONG) == 0
        assert f"uid {NOBODY}" in caplog.text


@needs_root
def test_listener_accept_refuses_another_uid(sockdir: Path) -> None:
    name = f"fdc-blocking-{sockdir.name}"
    command = [sys.executable, "-c", SCRIPT, name]
    with (
        blocking.listen(UnixAddress(name, abstract=True)) as listener,
        subprocess.Popen(command, stdout=subprocess.PIPE) as child,
    ):
        said = Lines(child)
        assert said.next() == "connected"
        with pytest.raises(PeerCredentialsError, match=f"uid {NOBODY}"):
            listener.accept(timeout=LONG)
        assert said.next() == "closed"
        assert child.wait(LONG) == 0


# --- every wait takes a timeout ----------------------------------------------------------------


def _silent_pair(stack: ExitStack) -> tuple[blocking.Stream, socket.socket]:
    mine, theirs = socket.socketpair()
    stack.callback(theirs.close)
    return stack.enter_context(blocking.Stream(mine, None)), theirs


def _receive(stack: ExitStack, sockdir: Path) -> None:
    _silent_pair(stack)[0].receive(timeout=SHORT)


def _receive_fds(stack: ExitStack, sockdir: Path) -> None:
    _silent_pair(stack)[0].receive_fds(timeout=SHORT)


def _peek(stack: ExitStack, sockdir: Path) -> None:
    _silent_pair(stack)[0].peek(16, timeout=SHORT)


def _wait_peer_closed(stack: ExitStack, sockdir: Path) -> None:
    _silent_pair(stack)[0].wait_peer_closed(timeout=SHORT)


def _send_to_a_peer_that_never_reads(stack: ExitStack, sockdir: Path) -> None:
    _silent_pair(stack)[0].send(bytes(64 << 20), timeout=SHORT)


def _accept(stack: ExitStack, sockdir: Path) -> None:
    stack.enter_context(blocking.listen(UnixAddress(str(sockdir / "x")))).accept(timeout=SHORT)


def _receive_a_stalled_state(stack: ExitStack, sockdir: Path) -> None:
    stream, peer = _silent_pair(stack)
    peer.sendall(valid_native_stream()[:20])
    blocking.receive_state(stream, timeout=SHORT)


STREAM_WAITS = {
    "receive": _receive,
    "receive_fds": _receive_fds,
    "peek": _peek,
    "wait_peer_closed": _wait_peer_closed,
    "send": _send_to_a_peer_that_never_reads,
    "accept": _accept,
    "receive_state": _receive_a_stalled_state,
}


@pytest.mark.parametrize("wait", STREAM_WAITS.values(), ids=STREAM_WAITS.keys())
def test_every_wait_times_out_typed(sockdir: Path, wait: Callable[[ExitStack, Path], None]) -> None:
    with ExitStack() as stack:
        began = time.monotonic()
        with pytest.raises(blocking.TransportTimeout) as raised:
            wait(stack, sockdir)
        assert SHORT <= time.monotonic() - began < SHORT + 1
        assert isinstance(raised.value, TimeoutError)
        assert isinstance(raised.value, TransportError)


def test_incoming_times_out_without_a_peer(sockdir: Path) -> None:
    with blocking.Incoming(channels(*paths(sockdir))) as inc:
        with pytest.raises(HandoffTimeout, match="receiving the state"):
            inc.receive_cpr(timeout=SHORT)
        assert inc.state is State.FAILED


# --- streams -----------------------------------------------------------------------------------


@contextmanager
def stream_pair() -> Iterator[tuple[blocking.Stream, blocking.Stream]]:
    left, right = socket.socketpair()
    with blocking.Stream(left, None) as a, blocking.Stream(right, None) as b:
        yield a, b


def test_stream_moves_bytes_descriptors_and_half_closes() -> None:
    with state_of(600, "qemu") as state, stream_pair() as (a, b):
        fds = [entry.fd for entry in state.fds]
        a.send(b"hello", timeout=LONG)
        assert b.receive(5, timeout=LONG) == b"hello"
        a.send_fds(b"abc", fds, timeout=LONG)  # three messages of at most 253
        received: list[int] = []
        data = b""
        while len(data) < 3:
            more, arrived = b.receive_fds_many(timeout=LONG)
            data, received = data + more, received + arrived
        try:
            assert data == b"abc"
            inodes = [os.fstat(fd).st_ino for fd in received]
            assert inodes == [os.fstat(fd).st_ino for fd in fds]
            assert all(os.get_inheritable(fd) is False for fd in received)
        finally:
            for fd in received:
                os.close(fd)
        a.send_eof()
        assert b.receive(timeout=LONG) == b""  # EOF
        assert b.at_eof
        b.send(b"still open the other way", timeout=LONG)
        assert a.receive(timeout=LONG) == b"still open the other way"
        assert a.fileno() >= 0 and a.peer_credentials.pid == os.getpid()


def test_descriptors_on_a_plain_receive_are_closed() -> None:
    memfd = os.memfd_create("stray", os.MFD_CLOEXEC)
    try:
        with stream_pair() as (a, b):
            a.send_fds(b"x", [memfd], timeout=LONG)
            assert b.receive(timeout=LONG) == b"x"
            assert b.discarded_fds == 1
    finally:
        os.close(memfd)


def test_wait_peer_closed_keeps_what_came_first() -> None:
    with stream_pair() as (a, b):
        a.send(b"late words", timeout=LONG)
        a.close()
        b.wait_peer_closed(timeout=LONG)
        assert b.receive(timeout=LONG) == b"late words"
        assert b.receive(timeout=LONG) == b""


def test_closed_and_broken_streams_are_typed_errors() -> None:
    with stream_pair() as (a, b):
        b.close()
        with pytest.raises(ConnectionLostError):
            a.send(bytes(16 << 20), timeout=LONG)
        a.close()
        a.close()  # idempotent
        for call in (lambda: a.send(b"x"), a.fileno, lambda: a.receive(timeout=0)):
            with pytest.raises(TransportError, match="closed"):
                call()


# --- transports --------------------------------------------------------------------------------


def test_unix_listener_mode_and_socket_file(sockdir: Path) -> None:
    path = sockdir / "s"
    old = os.umask(0o022)
    try:
        with blocking.listen(f"unix:{path}") as listener:
            assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
            assert listener.fileno() >= 0
        assert not path.exists()  # removed with the listener
        with blocking.listen(f"unix:{path}", mode=0o660):
            assert stat.S_IMODE(os.lstat(path).st_mode) == 0o660
    finally:
        os.umask(old)


def test_unix_stale_socket_replaced_live_one_refused(sockdir: Path) -> None:
    path = sockdir / "s"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(path))
        live.listen()
        with pytest.raises(TransportError, match="another process is listening"):
            blocking.listen(f"unix:{path}")
    assert path.exists()  # the socket is closed, its file stale
    with (
        blocking.listen(f"unix:{path}") as listener,
        blocking.connect(f"unix:{path}") as stream,
        listener.accept(timeout=LONG) as accepted,
    ):
        stream.send(b"ping", timeout=LONG)
        assert accepted.receive(timeout=LONG) == b"ping"


def test_abstract_unix_and_fd_numbers(sockdir: Path) -> None:
    name = f"fdc-blocking-abstract-{sockdir.name}"
    target = UnixAddress(name, abstract=True)
    with (
        blocking.listen(target) as listener,
        blocking.connect(target) as stream,
        listener.accept(timeout=LONG) as accepted,
    ):
        # fd:N opens a duplicate: the number stays ours, open after the stream closes.
        with blocking.connect(f"fd:{stream.fileno()}") as via_fd:
            assert Capability.FD_PASSING in via_fd.capabilities
            via_fd.send(b"by number", timeout=LONG)
        assert accepted.receive(timeout=LONG) == b"by number"
        os.fstat(stream.fileno())


def test_fd_listener_by_registered_name_and_tcp_main() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        fd_transport.register_fd("http", server.fileno())
        try:
            with blocking.listen("fd:http") as listener:
                port = server.getsockname()[1]
                with (
                    blocking.connect(TcpAddress("127.0.0.1", str(port))) as client,
                    listener.accept(timeout=LONG) as accepted,
                ):
                    client.send(b"over tcp", timeout=LONG)
                    client.send_eof()
                    assert accepted.receive(timeout=LONG) == b"over tcp"
                    assert accepted.receive(timeout=LONG) == b""
                    with pytest.raises(CapabilityError):
                        client.send_fds(b"x", [server.fileno()])
        finally:
            fd_transport.unregister_fd("http")


def test_tcp_listener_on_a_port_the_kernel_chose() -> None:
    with blocking.listen("tcp:127.0.0.1:0") as listener:
        assert isinstance(listener.address, TcpAddress) and listener.address.port != "0"
        with blocking.connect(listener.address, timeout=LONG) as client:
            listener.accept(timeout=LONG).close()
            assert client.receive(timeout=LONG) == b""


def _pipe_fd(stack: ExitStack) -> str:
    read, write = os.pipe()
    stack.callback(os.close, read)
    stack.callback(os.close, write)
    return f"fd:{read}"


# (target, the error, its message); each fails before anything opens or leaks
REFUSED: list[tuple[Callable[[ExitStack], object], type[FdChannelError], str]] = [
    (lambda _: "file:/tmp/x", CapabilityError, "not available in fdchannel.blocking yet"),
    (lambda _: "exec:true", CapabilityError, "not available in fdchannel.blocking yet"),
    (lambda _: "vsock:2:1234", CapabilityError, "not available in fdchannel.blocking yet"),
    (_pipe_fd, CapabilityError, "not available in fdchannel.blocking yet"),
    (lambda _: "rdma:host:1", TransportError, "not supported"),
    (
        lambda _: "cpr,addr.transport=socket,addr.type=inet,addr.host=h,addr.port=1",
        CapabilityError,
        "must pass descriptors",
    ),
    (lambda _: "fd:nosuchname", TransportError, "no descriptor has that name"),
]


@pytest.mark.parametrize(("make", "error", "message"), REFUSED)
@pytest.mark.parametrize("verb", ["connect", "listen"])
def test_what_blocking_does_not_open(
    verb: str, make: Callable[[ExitStack], Any], error: type[FdChannelError], message: str
) -> None:
    with ExitStack() as stack, pytest.raises(error, match=message):
        getattr(blocking, verb)(make(stack))


def test_an_unknown_listen_option_is_an_address_error(sockdir: Path) -> None:
    with pytest.raises(AddressError, match="no option 'colour'"):
        blocking.listen(f"unix:{sockdir / 's'}", colour="blue")
    with pytest.raises(AddressError, match="no option 'x'"):
        blocking.Incoming(channels(*paths(sockdir)), main_options={"mode": 0o600, "x": 1})
    with pytest.raises(fdchannel.ConnectError) as raised:
        blocking.connect(f"unix:{sockdir / 'missing'}")
    assert isinstance(raised.value.__cause__, OSError)
    assert raised.value.__cause__.errno == errno.ENOENT
