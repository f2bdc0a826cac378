"""SCM_RIGHTS pitfalls (SPEC §5): each test fails on a naive implementation."""

from __future__ import annotations

import array
import os
import socket
import subprocess
import sys
import textwrap

import anyio
import pytest

from fdchannel import FdPassingError, TruncatedFdsError, fds as fdpass
from fdchannel.fds import (
    SCM_MAX_FD,
    FdRoom,
    drain_fds,
    fd_table_size,
    open_fd_count,
    recvmsg_fd_array,
    sendmsg_fds,
    split_for_sending,
)
from fdchannel.transports._socket import UnixSocketStream

from .conftest import close_fds as close

pytestmark = pytest.mark.anyio
TIMEOUT = 20
NOBODY = 65534
SO_PASSPIDFD = getattr(socket, "SO_PASSPIDFD", 76)


def devnulls(n: int) -> list[int]:
    return [os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC) for _ in range(n)]


def same_files(a: list[int], b: list[int]) -> bool:
    return [os.fstat(x).st_ino for x in a] == [os.fstat(x).st_ino for x in b]


async def receive_n(stream: UnixSocketStream, count: int) -> tuple[bytes, list[int]]:
    data, fds = b"", list[int]()
    while len(fds) < count:
        chunk, got = await stream.receive_fds(65536, SCM_MAX_FD)
        data += chunk
        fds += got
    return data, fds


@pytest.mark.parametrize(
    ("count", "data", "messages"),
    [(1, b"x", 1), (253, b"x", 1), (254, b"xy", 2), (600, b"abc", 3), (1000, b"abcd", 4)],
)
def test_split_at_scm_max_fd(count: int, data: bytes, messages: int) -> None:
    parts = list(split_for_sending(data, list(range(count))))
    assert len(parts) == messages
    assert all(chunk and len(fds) <= SCM_MAX_FD for chunk, fds in parts)
    assert b"".join(chunk for chunk, _ in parts) == data
    assert [fd for _, fds in parts for fd in fds] == list(range(count))


def test_split_needs_a_byte_per_message() -> None:
    with pytest.raises(ValueError, match="at least one byte"):
        list(split_for_sending(b"x", list(range(300))))


@pytest.mark.parametrize("count", [1, 253, 254, 1000])
async def test_any_number_of_descriptors(
    pair: tuple[UnixSocketStream, UnixSocketStream], count: int
) -> None:
    a, b = pair
    sent = devnulls(count)
    try:
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(a.send_fds, b"x" * 4, sent)
                data, got = await receive_n(b, count)
        assert data.startswith(b"x")
        assert len(got) == count and same_files(got, sent)
        assert not any(os.get_inheritable(fd) for fd in got), "received fds must be CLOEXEC"
        close(got)
    finally:
        close(sent)


@pytest.mark.parametrize(
    ("count", "maxfds", "message"),
    [(253, 3, "MSG_CTRUNC"), (10, 3, "at most 3 were expected")],
)
async def test_more_than_maxfds_raises_and_closes(
    pair: tuple[UnixSocketStream, UnixSocketStream], count: int, maxfds: int, message: str
) -> None:
    # CPython's recv_fds would return 3 of them and say nothing.  Small
    # overflows fit the room kept for credentials; large ones are cut by the kernel.
    a, b = pair
    sent = devnulls(count)
    try:
        await a.send_fds(b"x", sent)
        with anyio.fail_after(TIMEOUT), pytest.raises(TruncatedFdsError, match=message):
            await b.receive_fds(1, maxfds=maxfds)
    finally:
        close(sent)


RLIMIT_CHILD = """
import os, resource, socket, sys, anyio
from fdchannel import TruncatedFdsError
from fdchannel.transports._socket import UnixSocketStream

sock = socket.socket(fileno=int(sys.argv[1]))
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[2]), int(sys.argv[2])))
async def main():
    stream = UnixSocketStream(sock, None)
    before = len(os.listdir("/proc/self/fd"))
    try:
        await stream.receive_fds(1, 253)
        print("no error")
    except TruncatedFdsError as exc:
        print("truncated", len(os.listdir("/proc/self/fd")) - before, exc)
    await stream.aclose()
anyio.run(main)
"""


async def test_receiver_rlimit_truncation_in_child() -> None:
    parent, child = socket.socketpair()
    sent = devnulls(100)
    try:
        parent.sendmsg(
            [b"x"],
            [
                (
                    socket.SOL_SOCKET,
                    socket.SCM_RIGHTS,
                    b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in sent),
                )
            ],
        )
        with anyio.fail_after(TIMEOUT):
            result = await anyio.run_process(
                [sys.executable, "-c", RLIMIT_CHILD, str(child.fileno()), "40"],
                pass_fds=[child.fileno()],
            )
        out = result.stdout.decode()
        # The child hit its limit, got an error, and holds no extra descriptor.
        assert out.startswith("truncated 0 "), out
        assert "RLIMIT_NOFILE" in out
    finally:
        close(sent)
        parent.close()
        child.close()


async def test_credentials_message_costs_nothing(
    pair: tuple[UnixSocketStream, UnixSocketStream],
) -> None:
    # With SO_PASSCRED the kernel puts SCM_CREDENTIALS first; a buffer sized for
    # exactly 253 descriptors then truncates the array.
    a, b = pair
    b.socket.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sent = devnulls(SCM_MAX_FD)
    try:
        await a.send_fds(b"x", sent)
        with anyio.fail_after(TIMEOUT):
            data, got = await b.receive_fds(1, SCM_MAX_FD)
        assert data == b"x" and len(got) == SCM_MAX_FD
        close(got)
    finally:
        close(sent)


async def test_a_drain_sees_eof_behind_a_credentials_message(
    pair: tuple[UnixSocketStream, UnixSocketStream],
) -> None:
    """With SO_PASSCRED even the EOF read carries SCM_CREDENTIALS (all zero): it is
    still the end, not a message to read on from."""
    a, b = pair
    b.socket.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sent = devnulls(3)
    try:
        for fd in sent:
            await a.send_fds(b"x", [fd])
        await a.send_eof()
        with anyio.fail_after(TIMEOUT):
            data, got = await b.receive_fds_many(65536, SCM_MAX_FD)
        close(got)
        assert data == b"xxx" and len(got) == 3 and b.at_eof
        with anyio.fail_after(TIMEOUT), pytest.raises(anyio.EndOfStream):
            await b.receive_fds_many(65536, SCM_MAX_FD)
    finally:
        close(sent)


async def test_pidfd_message_is_closed(pair: tuple[UnixSocketStream, UnixSocketStream]) -> None:
    a, b = pair
    try:
        b.socket.setsockopt(socket.SOL_SOCKET, SO_PASSPIDFD, 1)
    except OSError:
        pytest.skip("SO_PASSPIDFD needs Linux 6.5")
    sent = devnulls(2)
    try:
        await a.send_fds(b"x", sent)
        with anyio.fail_after(TIMEOUT):
            _, got = await b.receive_fds(1, SCM_MAX_FD)
        assert len(got) == 2 and same_files(got, sent)
        close(got)
    finally:
        close(sent)


async def test_plain_receive_closes_and_reports(
    pair: tuple[UnixSocketStream, UnixSocketStream],
) -> None:
    a, b = pair
    sent = devnulls(5)
    try:
        await a.send_fds(b"hello", sent)
        with anyio.fail_after(TIMEOUT):
            assert await b.receive() == b"hello"
        assert b.discarded_fds == 5
    finally:
        close(sent)


async def test_partial_send_does_not_reattach(
    pair: tuple[UnixSocketStream, UnixSocketStream],
) -> None:
    # 8 MiB cannot fit the socket buffer: sendmsg is short and the rest must
    # travel without the descriptors, or the receiver gets them twice.
    a, b = pair
    a.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    payload = os.urandom(8 << 20)
    sent = devnulls(3)
    try:
        with anyio.fail_after(TIMEOUT):
            received = bytearray()
            fds: list[int] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(a.send_fds, payload, sent)
                while len(received) < len(payload):
                    chunk, got = await b.receive_fds(1 << 20, SCM_MAX_FD)
                    received += chunk
                    fds += got
        assert bytes(received) == payload
        assert len(fds) == 3 and same_files(fds, sent)
        close(fds)
    finally:
        close(sent)


def test_einval_names_scm_max_fd() -> None:
    left, right = socket.socketpair()
    sent = devnulls(SCM_MAX_FD + 1)
    try:
        with pytest.raises(FdPassingError, match="SCM_MAX_FD"):
            sendmsg_fds(left, memoryview(b"x"), sent)
    finally:
        close(sent)
        left.close()
        right.close()


def test_ebadf_names_the_problem() -> None:
    left, right = socket.socketpair()
    fd = os.open("/dev/null", os.O_RDONLY)
    os.close(fd)
    try:
        with pytest.raises(FdPassingError, match="EBADF"):
            sendmsg_fds(left, memoryview(b"x"), [fd])
    finally:
        left.close()
        right.close()


@pytest.mark.parametrize("fds", [[2**40], ["3"], [3, None]], ids=["too-big", "str", "none"])
def test_what_is_not_a_descriptor_number_is_refused(fds: list[int]) -> None:
    left, right = socket.socketpair()
    try:
        with pytest.raises(ValueError, match="fit a C int"):
            sendmsg_fds(left, memoryview(b"x"), fds)
    finally:
        left.close()
        right.close()


INFLIGHT_CHILD = textwrap.dedent("""
    import os, resource, socket
    from fdchannel import FdPassingError
    from fdchannel.fds import sendmsg_fds
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
    # Drop root (and with it CAP_SYS_RESOURCE, which lifts the limit) after
    # start-up: the interpreter itself may not be reachable for ``nobody``.
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
    left, right = socket.socketpair()   # nobody reads ``right``
    fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(253)]
    sent = 0
    try:
        for _ in range(50):
            sendmsg_fds(left, memoryview(b"x"), fds)
            sent += 1
        print("no error")
    except FdPassingError as exc:
        print("refused after", sent, exc)
""")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the sender unprivileged")
async def test_in_flight_limit_is_named() -> None:
    with anyio.fail_after(TIMEOUT):
        result = await anyio.run_process(
            [sys.executable, "-c", INFLIGHT_CHILD], stderr=subprocess.STDOUT
        )
    out = result.stdout.decode()
    assert out.startswith("refused after "), out
    assert "ETOOMANYREFS" in out and "in flight" in out


async def test_receive_many_keeps_order_and_sees_eof(
    pair: tuple[UnixSocketStream, UnixSocketStream],
) -> None:
    a, b = pair
    batches = [devnulls(3) for _ in range(5)]
    try:
        for i, batch in enumerate(batches):
            await a.send(b"plain%d" % i)
            await a.send_fds(b"!", batch)
        await a.send_eof()
        with anyio.fail_after(TIMEOUT):
            data, fds = await b.receive_fds_many(1 << 20, SCM_MAX_FD)
            assert data == b"".join(b"plain%d!" % i for i in range(5))
            assert same_files(fds, [fd for batch in batches for fd in batch])
            close(fds)
            with pytest.raises(anyio.EndOfStream):
                await b.receive_fds_many(1 << 20)
    finally:
        for batch in batches:
            close(batch)


async def test_receive_many_closes_what_it_gathered_on_error(
    pair: tuple[UnixSocketStream, UnixSocketStream],
) -> None:
    a, b = pair
    first, second = devnulls(2), devnulls(200)
    try:
        await a.send_fds(b"1", first)
        await a.send_fds(b"2", second)  # more than the receiver allows
        with anyio.fail_after(TIMEOUT), pytest.raises(TruncatedFdsError):
            await b.receive_fds_many(1 << 20, maxfds=2)
    finally:
        close(first)
        close(second)


def test_fd_table_size_bounds_what_is_open() -> None:
    extra = [os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC) for _ in range(300)]
    try:
        opened = [int(name) for name in os.listdir("/proc/self/fd")]
        size = fd_table_size()
        assert size > max(opened) and size >= len(opened)
        assert size & (size - 1) == 0, "the kernel sizes the table in powers of two"
    finally:
        close(extra)


def test_open_fd_count_is_exact() -> None:
    if open_fd_count() is None:
        pytest.skip("this kernel (before 6.2) does not count /proc/self/fd in its size")
    extra = devnulls(300)
    try:
        # The listing holds one more: the directory it reads.
        assert open_fd_count() == len(os.listdir("/proc/self/fd")) - 1
    finally:
        close(extra)


def test_room_read_ahead_asks_the_kernel_only_when_it_does_not_plainly_fit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Read before the count is known; then a count that fits (with the headroom and
    what may have opened since) costs no system call, and any other is
    ensure_fd_room's, read afresh."""
    asked: list[int] = []
    monkeypatch.setattr(fdpass, "ensure_fd_room", asked.append)
    room = FdRoom()
    assert room.free > 0
    room.free = 1000
    fits = 1000 - fdpass._HEADROOM - fdpass._SLACK
    room.ensure(fits)
    assert asked == []
    room.ensure(fits + 1)
    assert asked == [fits + 1]


def test_room_read_ahead_fails_as_ensure_fd_room_does() -> None:
    room = FdRoom()
    with pytest.raises(FdPassingError, match="needs RLIMIT_NOFILE"):
        room.ensure(1 << 40)


@pytest.mark.parametrize("maxfds", [SCM_MAX_FD, 100], ids=["room", "too-few"])
def test_descriptors_received_into_an_array_stay_c_ints(maxfds: int) -> None:
    """recvmsg_fd_array and a drain into its array: the same descriptors, in order, as
    lists would hold; a truncation closes the message's and raises, as with lists."""
    ours, theirs = socket.socketpair()
    sent = devnulls(600)
    try:
        for start in range(0, 600, SCM_MAX_FD):
            sendmsg_fds(ours, b"x", sent[start : start + SCM_MAX_FD])
        ours.shutdown(socket.SHUT_WR)
        theirs.setblocking(False)
        if maxfds < SCM_MAX_FD:
            with pytest.raises(TruncatedFdsError):
                recvmsg_fd_array(theirs, 1, maxfds)
            return
        data, fds = recvmsg_fd_array(theirs, 1, maxfds)
        chunks = [data]
        assert drain_fds(theirs, chunks, fds, 1 << 16, maxfds, 8)
        assert isinstance(fds, array.array) and b"".join(chunks) == b"xxx"
        assert same_files(list(fds), sent)
        close(list(fds))
    finally:
        close(sent)
        ours.close()
        theirs.close()


def memfds(n: int) -> list[int]:
    return [os.memfd_create(f"m{i}", os.MFD_CLOEXEC) for i in range(n)]


# Messages for send_fds_many: (bytes, how many descriptors)
MESSAGES = [
    (b"a", 3),
    (b"plain", 0),
    (b"b" * (8 << 20), 2),  # more than the socket buffer: partial writes
    (b"cdef", 600),  # more than one message's worth: split at 253
    (b"", 0),
    (b"z", 253),
]


async def test_send_fds_many_keeps_order(pair: tuple[UnixSocketStream, UnixSocketStream]) -> None:
    a, b = pair
    sent = [memfds(n) for _, n in MESSAGES]
    flat = [fd for group in sent for fd in group]
    try:
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:

                async def send() -> None:
                    await a.send_fds_many(
                        (data, group) for (data, _), group in zip(MESSAGES, sent, strict=True)
                    )
                    await a.send_eof()

                tg.start_soon(send)
                data, got = b"", list[int]()
                while True:
                    try:
                        chunk, fds = await b.receive_fds_many(1 << 20)
                    except anyio.EndOfStream:
                        break
                    data += chunk
                    got += fds
        assert data == b"".join(data for data, _ in MESSAGES)
        assert same_files(got, flat), "every descriptor arrives once, in order"
        close(got)
    finally:
        close(flat)
