"""Deciding whether a socket file is stale never connects to it.

A second ``listen()`` on a live path is refused, and the live listener,
even a one-shot one that takes its first peer as the real one, goes on to
serve its real peer.  Whatever is bound at the path (a listening stream or
seqpacket socket, a datagram socket) counts as live; only a file no socket
is bound to is replaced.  Every refusal is typed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest

import fdchannel
from fdchannel import FdState, NamedFd
from fdchannel.address import UnixAddress
from fdchannel.errors import ConnectError, TransportError
from fdchannel.transports.unix import Binding, binding, bound_to_name

from ..cli.helpers import Child, cli, run

pytestmark = pytest.mark.anyio
TIMEOUT = 10


async def test_second_listen_leaves_a_waiting_incoming_serving(sockdir: Path) -> None:
    cpr = f"cpr,addr.transport=socket,addr.type=unix,addr.path={sockdir / 'cpr'}"
    chans = [f"unix:{sockdir / 'main'}", cpr]
    memfd = os.memfd_create("ram0", os.MFD_CLOEXEC)
    try:
        with anyio.fail_after(TIMEOUT):
            async with fdchannel.Incoming(chans) as inc, fdchannel.Outgoing(chans) as out:
                await inc.listen_cpr()
                with pytest.raises(TransportError, match="another process is listening"):
                    await fdchannel.listen(UnixAddress(str(sockdir / "cpr")))
                async with anyio.create_task_group() as tg:
                    tg.start_soon(out.send_cpr, FdState([NamedFd("ram0", 0, memfd)]))
                    with await inc.receive_cpr(timeout=5) as state:
                        assert state.get("ram0") >= 0
                        await inc.listen_main()
    finally:
        os.close(memfd)


def test_second_listen_leaves_probe_listen_serving(sockdir: Path) -> None:
    uri = f"unix:{sockdir}/cpr.sock"
    with Child(cli("probe", "--listen", "--json", "--timeout", "20", uri)) as receiver:
        receiver.wait_for("listening on")
        second = run(cli("probe", "--listen", "--timeout", "1", uri))
        assert second.returncode == 1
        assert "another process is listening" in second.error_line()
        sent = run(cli("send", uri, f"dir={sockdir}"))
        done = receiver.finish()
    assert sent.returncode == 0, sent.stderr
    assert done.returncode == 0, done.stderr
    assert [d["name"] for d in done.json()["descriptors"]] == ["dir"]


def _bound(kind: int, listening: bool) -> Callable[[Path], socket.socket]:
    def make(path: Path) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, kind)
        sock.bind(str(path))
        if listening:
            sock.listen()
        return sock

    return make


#: What is at the path, whether it counts as live, and what connect says.
BOUND = [
    pytest.param(_bound(socket.SOCK_STREAM, True), Binding.LISTENING, None, id="stream"),
    pytest.param(_bound(socket.SOCK_SEQPACKET, True), Binding.BOUND, "Protocol", id="seqpacket"),
    pytest.param(_bound(socket.SOCK_DGRAM, False), Binding.BOUND, "Protocol", id="datagram"),
    pytest.param(_bound(socket.SOCK_STREAM, False), Binding.BOUND, "refused", id="bound-only"),
]


@contextmanager
def _at(make: Callable[[Path], socket.socket], path: Path) -> Iterator[socket.socket]:
    sock = make(path)
    try:
        yield sock
    finally:
        sock.close()


@pytest.mark.parametrize(("make", "expected", "connect_error"), BOUND)
async def test_any_bound_socket_is_live(
    make: Callable[[Path], socket.socket],
    expected: Binding,
    connect_error: str | None,
    sockdir: Path,
) -> None:
    path = sockdir / "s"
    with _at(make, path):
        assert binding(os.fsencode(path), os.lstat(path)) is expected
        from_names = bound_to_name(os.fsencode(path))
        assert from_names is not None and from_names.binding is expected
        with pytest.raises(TransportError, match="never replaced"):
            await fdchannel.listen(UnixAddress(str(path)))
        assert path.exists()
        if connect_error is not None:
            with pytest.raises(ConnectError, match=connect_error):
                await fdchannel.connect(UnixAddress(str(path)))
    # Closed: the file is stale now, and is replaced.
    assert binding(os.fsencode(path), os.lstat(path)) is Binding.NONE
    async with await fdchannel.listen(UnixAddress(str(path))):
        pass


AS_NOBODY = """
import anyio, os, sys
import fdchannel
import fdchannel.transports.unix
# Everything imported while we may still read the interpreter's files.
anyio.run(anyio.sleep, 0)
os.setgroups([])
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)
async def main():
    try:
        await fdchannel.listen(sys.argv[1])
    except fdchannel.FdChannelError as exc:
        print(type(exc).__name__, exc)
    else:
        print("listened")
anyio.run(main)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as another uid")
def test_another_users_stale_socket_is_a_typed_error(sockdir: Path) -> None:
    sockdir.chmod(0o1777)  # sticky, like /tmp: nobody may not remove root's file
    shared = sockdir
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(shared / "s"))
    stale.close()
    os.chmod(shared / "s", 0o600)
    done = subprocess.run(
        [sys.executable, "-c", AS_NOBODY, f"unix:{shared / 's'}"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("TransportError"), done.stdout
    assert "cannot be removed" in done.stdout


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_probe_finds_a_listener_without_connecting(sockdir: Path, abstract: bool) -> None:
    """A listener bound by a relative path (so /proc/net/unix shows another
    name) is found by its file's inode; its accept queue stays empty."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    here = os.getcwd()
    try:
        if abstract:
            name = f"fdc-probe-{sockdir.name}"
            listener.bind(b"\0" + name.encode())
            uri = f"cpr,addr.transport=socket,addr.type=unix,addr.path={name},addr.abstract=on"
        else:
            os.chdir(sockdir)
            listener.bind("s")  # relative: the kernel records "s"
            os.chdir(here)
            uri = f"unix:{sockdir / 's'}"
        listener.listen()
        listener.setblocking(False)
        done = run(cli("probe", "--json", uri))
        assert done.returncode == 0, done.stdout
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected to find out
    finally:
        os.chdir(here)
        listener.close()
