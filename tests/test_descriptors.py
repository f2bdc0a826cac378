"""``fdchannel probe --listen``: every descriptor kind described (fdchannel/descriptors.py)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .cli.helpers import Child, cli, run

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
