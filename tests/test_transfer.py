"""send_state and receive_state over a stream: making room for what comes, and a peer that goes.

The codecs themselves are tested in tests/codecs; here, what the drivers
add: the receiver raises its soft RLIMIT_NOFILE for a state's descriptors
(or refuses naming the limit), and a peer that hangs up or resets is a
typed error, never anyio's own.
"""

from __future__ import annotations

import os
import resource
import socket

import anyio
import pytest

import fdchannel
from fdchannel import FdPassingError, FdState, fds, transfer
from fdchannel.errors import ConnectionLostError
from fdchannel.fds import ensure_fd_room, fd_table_size
from fdchannel.transports._socket import UnixSocketStream

from .conftest import close_fds as close

pytestmark = pytest.mark.anyio


def devnulls(n: int) -> list[int]:
    return [os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC) for _ in range(n)]


#: How the open descriptors are counted: the kernel's count of /proc/self/fd,
#: or (kernels before 6.2, which report 0) the table-size bound and a listing.
COUNTS = [pytest.param(True, id="kernel-count"), pytest.param(False, id="before-6.2")]


@pytest.mark.parametrize("kernel_counts", COUNTS)
def test_room_is_made_by_raising_the_soft_limit(
    kernel_counts: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not kernel_counts:
        monkeypatch.setattr(fds, "open_fd_count", lambda: None)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    opened = len(os.listdir("/proc/self/fd"))
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (opened + 8, hard))
        ensure_fd_room(500)
        raised = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert opened + 500 <= raised <= fd_table_size() + 500 + 64
        ensure_fd_room(10)  # room already there: the limit stays
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == raised
        with pytest.raises(FdPassingError, match=f"the hard limit is {hard}"):
            ensure_fd_room(hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("kernel_counts", COUNTS)
def test_room_up_to_the_hard_limit_is_found_exactly(
    kernel_counts: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What fits under the hard limit is accepted even where the table's size says
    it might not (a table grown by an earlier state never shrinks)."""
    if not kernel_counts:
        monkeypatch.setattr(fds, "open_fd_count", lambda: None)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard limit to come close to")
    # Grow the table past 1,024 slots, then give the descriptors back.
    close(devnulls(max(0, 1100 - len(os.listdir("/proc/self/fd")))))
    count = hard - len(os.listdir("/proc/self/fd")) - 64 - 8
    assert fd_table_size() + count + 64 > hard, "the table bound alone would refuse"
    try:
        ensure_fd_room(count)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] <= hard
        with pytest.raises(FdPassingError, match="needs RLIMIT_NOFILE"):
            ensure_fd_room(count + 16)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("ending", ["close", "shutdown"])
async def test_exchange_with_a_vanished_peer_is_typed(ending: str) -> None:
    ours, theirs = socket.socketpair()
    stream = UnixSocketStream(ours, None)
    try:
        if ending == "close":
            theirs.close()
        else:
            theirs.shutdown(socket.SHUT_RDWR)
        with pytest.raises(ConnectionLostError):
            await fdchannel.send_state(stream, FdState(), "native")
        with pytest.raises(fdchannel.FdChannelError):
            await fdchannel.receive_state(stream)
    finally:
        await stream.aclose()
        theirs.close()


async def test_receive_state_when_the_peer_resets_mid_state() -> None:
    ours, theirs = socket.socketpair()
    stream = UnixSocketStream(ours, None)
    try:
        with anyio.fail_after(5):
            theirs.sendall(b"QCPR\0\0\0\1\1")
            theirs.close()
            with pytest.raises(fdchannel.ProtocolError):
                await fdchannel.receive_state(stream)
    finally:
        await stream.aclose()


@pytest.mark.parametrize("codec", ["native", "qemu"])
async def test_receive_state_tells_which_codec_arrived(
    pair: tuple[UnixSocketStream, UnixSocketStream], codec: transfer.Codec
) -> None:
    sender, receiver = pair
    memfd = os.memfd_create("ram0", os.MFD_CLOEXEC)
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    fdchannel.send_state,
                    sender,
                    FdState([fdchannel.NamedFd("ram0", 0, memfd)]),
                    codec,
                )
                with await fdchannel.receive_state(receiver) as state:
                    assert state.codec == codec
                    assert FdState().codec is None
    finally:
        os.close(memfd)
