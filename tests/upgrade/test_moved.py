"""A listener whose address changed in the new version: bound anew, not inherited.

(A UDP socket moved across an upgrade: test_datagrams.py.)"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bench.upgrades import SCRIPTS, Generations
from fdchannel.errors import UpgradeFailed
from fdchannel.upgrade import request_upgrade, sockets
from fdchannel.upgrade.addresses import listen_address

TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("bound", "asked", "moved"),
    [
        ("tcp:127.0.0.1:{port}", "tcp:127.0.0.1:{port}", False),
        ("tcp:127.0.0.1:{port}", "tcp:127.0.0.1:0", False),  # any port: the one it has
        ("tcp:127.0.0.1:{port}", "tcp:localhost:{port}", False),  # a name: not looked up
        ("tcp:127.0.0.1:{port}", "tcp:127.0.0.1:{other}", True),
        ("tcp:127.0.0.1:{port}", "tcp:127.0.0.2:{port}", True),
        ("tcp:127.0.0.1:{port}", "unix:{dir}/b.sock", True),
        ("unix:{dir}/a.sock", "unix:{dir}/a.sock", False),
        ("unix:{dir}/a.sock", "unix:{dir}/b.sock", True),
        ("unix:{dir}/a.sock", "tcp:127.0.0.1:{port}", True),
        # Datagram sockets, and a socket of the other kind at the same place.
        ("udp:127.0.0.1:{port}", "udp:127.0.0.1:{port}", False),
        ("udp:127.0.0.1:{port}", "udp:127.0.0.1:0", False),
        ("udp:127.0.0.1:{port}", "udp:127.0.0.1:{other}", True),
        ("udp:127.0.0.1:{port}", "tcp:127.0.0.1:{port}", True),
        ("tcp:127.0.0.1:{port}", "udp:127.0.0.1:{port}", True),
        ("udp:127.0.0.1:{port}", "unixgram:{dir}/a.sock", True),
        ("unixgram:{dir}/a.sock", "unixgram:{dir}/a.sock", False),
        ("unixgram:{dir}/a.sock", "unixgram:{dir}/b.sock", True),
        ("unixgram:{dir}/a.sock", "unix:{dir}/a.sock", True),
        ("unix:{dir}/a.sock", "unixgram:{dir}/a.sock", True),
        ("unixgram:{dir}/a.sock", "fd:3", False),  # only the descriptor could say
    ],
)
def test_what_counts_as_moved(sockdir: Path, bound: str, asked: str, moved: bool) -> None:
    values = {"port": free_port(), "other": free_port(), "dir": sockdir}
    where = listen_address(bound.format(**values))
    kind = socket.SOCK_DGRAM if where.scheme in ("udp", "unixgram") else socket.SOCK_STREAM
    if where.scheme in ("unix", "unixgram"):
        sock = socket.socket(socket.AF_UNIX, kind)
        sock.bind(str(sockdir / "a.sock"))
    else:
        sock = socket.socket(socket.AF_INET, kind)
        sock.bind(("127.0.0.1", values["port"]))
    with sock:
        if kind == socket.SOCK_STREAM:
            sock.listen()
        found = sockets.moved(sock.fileno(), listen_address(asked.format(**values)))
    assert (found is not None) == moved, found
    if moved:
        assert found == bound.format(**values)


def answers(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=TIMEOUT) as reply:
        # "hello from pid N, generation G"
        return int(reply.read().split()[3].rstrip(b","))


def test_a_new_version_listening_elsewhere_binds_there(sockdir: Path) -> None:
    old, new = free_port(), free_port()
    options = ("--backend", "asyncio", "--drain-timeout", "5")
    with Generations(
        SCRIPTS["anyio"], sockdir, *options, "--listen", f"tcp:127.0.0.1:{old}"
    ) as gens:
        first = gens.ready(0, TIMEOUT)
        assert answers(old) == first["pid"]
        command = [
            *gens.command[: gens.command.index("--listen")],
            "--listen",
            f"tcp:127.0.0.1:{new}",
        ]
        result = request_upgrade(gens.control, timeout=TIMEOUT, command=command)
        assert gens.ready(1, TIMEOUT)["url"] == f"http://127.0.0.1:{new}/"
        assert answers(new) == result["pid"]
        assert gens.wait_exited([first["pid"]], TIMEOUT) == []
        with pytest.raises(urllib.error.URLError, match="refused"):  # gone with generation 0
            answers(old)
        assert "http moved from tcp:127.0.0.1:" in "\n".join(gens.output)


def test_a_new_address_that_cannot_be_bound_fails_the_upgrade(sockdir: Path) -> None:
    old = free_port()
    options = ("--backend", "asyncio", "--drain-timeout", "5")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with Generations(
            SCRIPTS["anyio"], sockdir, *options, "--listen", f"tcp:127.0.0.1:{old}"
        ) as gens:
            first = gens.ready(0, TIMEOUT)
            command = [
                *gens.command[: gens.command.index("--listen")],
                "--listen",
                f"tcp:127.0.0.1:{busy}",
            ]
            with pytest.raises(UpgradeFailed, match="in use"):
                request_upgrade(gens.control, timeout=TIMEOUT, command=command)
            assert answers(old) == first["pid"] == gens.serving()
