"""Every AF_UNIX listener applies the credential policy, whatever made its socket.

A peer of another uid is closed before a byte of it is read, and the next
admitted peer is served: on ``unix:`` listeners, and on listening sockets
handed over as ``fd:N`` or ``fd:NAME`` (systemd creates those 0666 unless
told otherwise, so only the policy protects them).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import anyio
import pytest

import fdchannel
from fdchannel import FdState, NamedFd
from fdchannel.errors import PeerCredentialsError
from fdchannel.transports import fd as fd_transport
from fdchannel.transports.unix import CredentialPolicy

from ..intruder import NOBODY, intruder, lines, needs_root

pytestmark = [pytest.mark.anyio, needs_root]

TIMEOUT = 10


def _listening(stack: ExitStack, name: str) -> int:
    """A listening socket on an abstract name, as socket activation hands one over."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    stack.callback(sock.close)
    sock.bind(b"\0" + name.encode())
    sock.listen()
    return sock.fileno()


def _abstract(stack: ExitStack, name: str) -> str:
    return f"cpr,addr.transport=socket,addr.type=unix,addr.path={name},addr.abstract=on"


def _fd_number(stack: ExitStack, name: str) -> str:
    return f"cpr,addr.transport=socket,addr.type=fd,addr.str={_listening(stack, name)}"


def _fd_name(stack: ExitStack, name: str) -> str:
    fd_transport.register_fd("handed", _listening(stack, name))
    stack.callback(fd_transport.unregister_fd, "handed")
    return "cpr,addr.transport=socket,addr.type=fd,addr.str=handed"


#: How the cpr channel's listening socket was made.
SOURCES: dict[str, Callable[[ExitStack, str], str]] = {
    "unix-abstract": _abstract,
    "fd-number": _fd_number,
    "fd-name": _fd_name,
}


@contextmanager
def _channel(source: str, sockdir: Path) -> Iterator[tuple[str, str]]:
    name = f"fdc-policy-{sockdir.name}"
    with ExitStack() as stack:
        yield SOURCES[source](stack, name), name


@pytest.mark.parametrize("source", SOURCES)
async def test_listener_refuses_other_uid_unread(source: str, sockdir: Path) -> None:
    with _channel(source, sockdir) as (channel, name):
        async with await fdchannel.listen(channel) as listener:
            with anyio.fail_after(TIMEOUT):
                async with await intruder(name) as child:
                    with pytest.raises(PeerCredentialsError, match=f"uid {NOBODY}"):
                        await listener.accept()
                    assert await lines(child, 2) == [b"connected", b"closed"]
                    assert await child.wait() == 0


#: Policies that admit the intruder: none at all, or one naming its uid.
ADMITTING: dict[str, CredentialPolicy | None] = {
    "none": None,
    "uid-nobody": lambda creds: creds.uid == NOBODY,
}


@pytest.mark.parametrize("policy", ADMITTING)
@pytest.mark.parametrize("source", SOURCES)
async def test_a_policy_can_admit_other_uids(source: str, policy: str, sockdir: Path) -> None:
    with _channel(source, sockdir) as (channel, name):
        async with await fdchannel.listen(channel, policy=ADMITTING[policy]) as listener:
            with anyio.fail_after(TIMEOUT):
                async with await intruder(name) as child:
                    stream = await listener.accept()
                    assert await stream.receive(4) == b"FDCN"
                    await stream.aclose()
                    assert await child.wait() == 0


@pytest.mark.parametrize("source", SOURCES)
async def test_incoming_skips_the_intruder_and_serves_the_sender(
    source: str, sockdir: Path
) -> None:
    with _channel(source, sockdir) as (channel, name):
        chans = [f"unix:{sockdir / 'main'}", channel]
        sender = [f"unix:{sockdir / 'main'}", _abstract(ExitStack(), name)]
        memfd = os.memfd_create("ram0", os.MFD_CLOEXEC)
        try:
            with anyio.fail_after(TIMEOUT):
                async with fdchannel.Incoming(chans) as inc, fdchannel.Outgoing(sender) as out:
                    await inc.listen_cpr()
                    async with await intruder(name) as bad:
                        assert await lines(bad, 1) == [b"connected"]
                        async with anyio.create_task_group() as tg:
                            tg.start_soon(out.send_cpr, FdState([NamedFd("ram0", 0, memfd)]))
                            with await inc.receive_cpr(timeout=5) as state:
                                assert state.get("ram0") >= 0
                                await inc.listen_main()
                        assert await bad.wait() == 0
        finally:
            os.close(memfd)
