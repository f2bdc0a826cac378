"""``fdchannel probe --listen``: who the peer is, and every descriptor kind described."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

import fdchannel

from .helpers import Child, cli, run

F_ADD_SEALS = 1033
F_SEAL_SHRINK, F_SEAL_GROW = 0x02, 0x04


@dataclass
class Kinds:
    """Real descriptors of every kind, and what the listener must say about each."""

    fds: list[tuple[str, int, int]] = field(default_factory=list)
    expect: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    lines: dict[tuple[str, int], str] = field(default_factory=dict)

    def add(self, label: str, ident: int, fd: int, line: str, /, **expect: Any) -> None:
        self.fds.append((label, ident, fd))
        self.expect[(label, ident)] = expect
        self.lines[(label, ident)] = line

    def items(self) -> list[str]:
        return [f"{name}:{id}={fd}" for name, id, fd in self.fds]

    def numbers(self) -> list[int]:
        return [fd for _, _, fd in self.fds]


@pytest.fixture
def kinds(tmp_path: Path, sockdir: Path) -> Iterator[Kinds]:
    kinds = Kinds()
    with contextlib.ExitStack() as stack:

        def keep(fd: int) -> int:
            stack.callback(os.close, fd)
            return fd

        memfd = keep(os.memfd_create("guest-ram", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING))
        os.ftruncate(memfd, 1 << 20)
        fcntl.fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW)
        kinds.add(
            "ram",
            0,
            memfd,
            "memfd name='guest-ram' size=1 MiB seals=shrink,grow",
            kind="memfd",
            name="guest-ram",
            size=1 << 20,
            seals=["shrink", "grow"],
        )

        server = stack.enter_context(socket.socket())
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        kinds.add(
            "sock",
            0,
            server.fileno(),
            f"socket AF_INET SOCK_STREAM listening local=127.0.0.1:{port}",
            kind="socket",
            family="AF_INET",
            type="SOCK_STREAM",
            listening=True,
            local=f"127.0.0.1:{port}",
            peer=None,
        )
        client = stack.enter_context(socket.create_connection(("127.0.0.1", port)))
        here = client.getsockname()[1]
        kinds.add(
            "sock",
            1,
            client.fileno(),
            f"socket AF_INET SOCK_STREAM local=127.0.0.1:{here} peer=127.0.0.1:{port}",
            kind="socket",
            listening=False,
            local=f"127.0.0.1:{here}",
            peer=f"127.0.0.1:{port}",
        )
        unix_server = stack.enter_context(socket.socket(socket.AF_UNIX))
        unix_server.bind(str(sockdir / "svc.sock"))
        unix_server.listen()
        unix_client = stack.enter_context(socket.socket(socket.AF_UNIX))
        unix_client.connect(str(sockdir / "svc.sock"))
        kinds.add(
            "sock",
            2,
            unix_client.fileno(),
            f"socket AF_UNIX SOCK_STREAM local=(unnamed) peer={sockdir}/svc.sock",
            kind="socket",
            family="AF_UNIX",
            listening=False,
            local=None,
            peer=f"{sockdir}/svc.sock",
        )

        r, w = os.pipe()
        keep(r)
        keep(w)
        os.write(w, b"abc")
        kinds.add(
            "pipe",
            0,
            r,
            "pipe read end capacity=64 KiB flags=read-only",
            kind="pipe",
            end="read",
            capacity=65536,
        )
        os.mkfifo(tmp_path / "fifo")
        fifo = keep(os.open(tmp_path / "fifo", os.O_RDWR | os.O_NONBLOCK))
        kinds.add(
            "fifo",
            0,
            fifo,
            f"fifo {tmp_path}/fifo both end capacity=64 KiB flags=read-write,nonblock",
            kind="fifo",
            path=f"{tmp_path}/fifo",
            end="both",
        )

        (tmp_path / "data.bin").write_bytes(bytes(10000))
        data = keep(os.open(tmp_path / "data.bin", os.O_RDWR | os.O_APPEND))
        os.lseek(data, 1234, os.SEEK_SET)
        kinds.add(
            "file",
            0,
            data,
            f"file {tmp_path}/data.bin size=9.77 KiB offset=1234 flags=read-write,append",
            kind="file",
            path=f"{tmp_path}/data.bin",
            size=10000,
            offset=1234,
            access="read-write",
            deleted=False,
        )
        event = keep(os.eventfd(5, os.EFD_CLOEXEC))
        kinds.add("event", 0, event, "eventfd count=5", kind="eventfd", count=5)
        null = keep(os.open("/dev/null", os.O_WRONLY))
        kinds.add(
            "null",
            0,
            null,
            "character device 1:3 /dev/null flags=write-only",
            kind="character device",
            device="1:3",
            path="/dev/null",
        )
        yield kinds  # fmt: skip


def _check_json(received: dict[str, Any], kinds: Kinds, codec: str) -> None:
    assert received["codec"] == codec
    assert [(d["name"], d["id"]) for d in received["descriptors"]] == list(kinds.expect)
    for described in received["descriptors"]:
        wanted = kinds.expect[(described["name"], described["id"])]
        found = described["description"]
        assert found["fd"] == described["fd"]
        assert {key: found.get(key) for key in wanted} == wanted, found


@pytest.mark.parametrize("codec", ["qemu", "native"])
def test_every_kind_from_send(codec: str, kinds: Kinds, sockdir: Path) -> None:
    uri = f"unix:{sockdir}/cpr.sock"
    with Child(cli("probe", "--listen", "--json", "--timeout", "20", uri)) as listener:
        listener.wait_for("listening on")
        sent = run(
            cli("send", "--codec", codec, "--json", uri, *kinds.items()), pass_fds=kinds.numbers()
        )
        heard = listener.finish()
    assert sent.returncode == 0, sent.stderr
    assert sent.json()["ack"] == ("accepted" if codec == "native" else "closed")
    assert heard.returncode == 0, heard.stderr
    received = heard.json()
    _check_json(received, kinds, codec)
    peer = received["peer"]
    assert peer["uid"] == os.getuid() and peer["argv"][-len(kinds.fds) :] == kinds.items()
    assert received["ack"] == "closed the connection"


def test_every_kind_as_text(kinds: Kinds, sockdir: Path) -> None:
    uri = f"unix:{sockdir}/cpr.sock"
    with Child(cli("probe", "--listen", uri)) as listener:
        listener.wait_for("listening on")
        sent = run(
            cli("send", "--metadata", "hello", uri, *kinds.items()), pass_fds=kinds.numbers()
        )
        heard = listener.finish()
    assert sent.returncode == 0, sent.stderr
    assert heard.returncode == 0, heard.stderr
    lines = heard.stdout.splitlines()
    assert lines[0].startswith("peer         pid ")
    assert lines[1] == "state        native codec, 9 descriptors, metadata 5 B: 'hello'"
    assert lines[3].split() == ["name", "id", "fd", "what"]
    described = {(line.split()[0], int(line.split()[1])): line for line in lines[4:-1]}
    for key, summary in kinds.lines.items():
        assert described[key].split(None, 3)[3] == summary
    assert lines[-1] == "ack          closed the connection"


@pytest.mark.anyio
async def test_library_sender_qemu_codec_names_and_ids(sockdir: Path) -> None:
    """The library as the sender, QEMU's format: the listener shows names and ids."""
    path = sockdir / "cpr.sock"
    memfds = [os.memfd_create(f"ram{i}", os.MFD_CLOEXEC) for i in range(3)]
    state = fdchannel.FdState(
        [
            fdchannel.NamedFd("ram", 0, memfds[0]),
            fdchannel.NamedFd("ram", 7, memfds[1]),
            fdchannel.NamedFd("tap", -1, memfds[2]),
        ]
    )
    try:
        with Child(cli("probe", "--listen", "--timeout", "20", f"unix:{path}")) as listener:
            await anyio.to_thread.run_sync(listener.wait_for, "listening on")
            with anyio.fail_after(20):
                stream = await fdchannel.connect(f"unix:{path}")
                async with stream:
                    await fdchannel.send_state(stream, state, codec="qemu")
                    await stream.wait_peer_closed()  # the ack
            heard = await anyio.to_thread.run_sync(listener.finish)
    finally:
        for fd in memfds:
            os.close(fd)
    assert heard.returncode == 0, heard.stderr
    lines = heard.stdout.splitlines()
    assert lines[0].startswith(f"peer         pid {os.getpid()}, uid {os.getuid()}")
    assert lines[1] == "state        qemu codec, 3 descriptors, metadata 0 B"
    rows = [line.split(None, 3) for line in lines[4:7]]
    assert [(row[0], row[1]) for row in rows] == [("ram", "0"), ("ram", "7"), ("tap", "-1")]
    assert [row[3].split()[:2] for row in rows] == [
        ["memfd", "name='ram0'"],
        ["memfd", "name='ram1'"],
        ["memfd", "name='ram2'"],
    ]


def test_no_ack_holds_until_the_sender_gives_up(sockdir: Path) -> None:
    uri = f"unix:{sockdir}/cpr.sock"
    with Child(cli("probe", "--listen", "--no-ack", "--json", uri)) as listener:
        listener.wait_for("listening on")
        sent = run(cli("send", "--timeout", "1", uri, "null=/dev/null"))
        listener.wait_for("the sender hung up after")
        heard = listener.finish()
    assert sent.returncode == 1
    assert sent.error_line() == (
        "fdchannel: error: timed out after 1.0 s waiting for the receiver to acknowledge "
        "(by closing)"
    )
    assert heard.returncode == 0
    assert heard.json()["ack"] == "held: no ack (--no-ack) until the sender hangs up"


def test_no_ack_ends_on_a_signal(sockdir: Path) -> None:
    uri = f"unix:{sockdir}/cpr.sock"
    with Child(cli("probe", "--listen", "--no-ack", uri)) as listener:
        listener.wait_for("listening on")
        with Child(cli("send", "--timeout", "20", uri, "null=/dev/null")) as sender:
            line = listener.wait_for("ack ", stream="stdout")
            assert line.startswith("ack          held")
            heard = listener.signal()
            sent = sender.finish()
    assert heard.returncode == 0
    assert "interrupted while holding" in heard.stderr
    assert sent.returncode == 1
    assert "the receiver closed the connection without a status" in sent.error_line()


def test_timeout_without_a_peer(sockdir: Path) -> None:
    uri = f"unix:{sockdir}/cpr.sock"
    done = run(cli("probe", "--listen", "--timeout", "0.3", uri))
    assert done.returncode == 1
    assert done.stderr.splitlines()[0] == f"fdchannel: listening on {uri}"
    assert done.stderr.splitlines()[1] == (
        f"fdchannel: error: no peer connected to {uri} within 0.3 s"
    )
    assert not (sockdir / "cpr.sock").exists()  # the listener removed its socket file


def test_not_a_state(sockdir: Path) -> None:
    path = sockdir / "cpr.sock"
    with Child(cli("probe", "--listen", "--timeout", "20", f"unix:{path}")) as listener:
        listener.wait_for("listening on")
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(path))
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            sock.shutdown(socket.SHUT_WR)
            heard = listener.finish()
    assert heard.returncode == 1
    assert "unknown state stream magic" in heard.stderr.splitlines()[-1]
    assert "Traceback" not in heard.stderr
