"""Datagram sockets (udp:, unixgram:) inherited by every generation, and the upgrade grammar.

In this process: binding, answering, the credential policy per datagram,
the socket file's mode and removal, systemd's sockets matched by kind, and
the addresses refused.  With real generations (tests/upgrade/apps/
datagram_echo.py): no datagram lost across upgrades, a UDP socket moved to
another port, and a socket activated by systemd-socket-activate.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import SocketAttribute

from bench.upgrades import Generations
from fdchannel.address import ExecAddress, UnixAddress
from fdchannel.credentials import CredentialPolicy, Credentials, same_user_or_root
from fdchannel.errors import AddressError, CapabilityError, TransportError, UpgradeError
from fdchannel.transports import FdAttribute, Listener
from fdchannel.transports.datagram import DatagramListener
from fdchannel.upgrade import Upgrader, request_upgrade, sockets
from fdchannel.upgrade.addresses import (
    UdpAddress,
    UnixDatagramAddress,
    listen_address,
)

APP = Path(__file__).resolve().parent / "apps" / "datagram_echo.py"
ACTIVATE = shutil.which("systemd-socket-activate")
TIMEOUT = 30.0
#: Upgrades while datagrams flow.
UPGRADES = 4
#: Datagrams a client leaves unanswered at most: far below what a queue holds.
WINDOW = 8
SCHEMES = "use tcp:HOST:PORT, udp:HOST:PORT, unix:PATH, unixgram:PATH, vsock:CID:PORT or fd:N"


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def client_for(listener: Listener, sockdir: Path) -> socket.socket:
    """A datagram socket that can reach ``listener`` and be answered (bound, for unix)."""
    family = listener.extra(SocketAttribute.family)
    client = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_UNIX:
        client.bind(str(sockdir / f"client-{len(os.listdir(sockdir))}.sock"))
    else:  # the listener's host, so that the sender's address is known before it sends
        client.bind((listener.extra(SocketAttribute.local_address)[0], 0))
    client.settimeout(TIMEOUT)
    return client


# --------------------------------------------------------------------------
# The grammar.


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("exec:foo", f"'exec:foo' is no address to listen on for upgrades: {SCHEMES}"),
        ("file:/x", "is no address to listen on for upgrades"),
        ("rdma:127.0.0.1:1", "is no address to listen on for upgrades"),
        ("UDP:127.0.0.1:1", "is no address to listen on for upgrades"),  # case-sensitive
        ("cpr,addr.transport=socket,addr.type=unix,addr.path=x", "is no address to listen on"),
        ("", "is no address to listen on for upgrades"),
        ("udp:x", "expected udp:HOST:PORT, udp:\\[HOST\\]:PORT or udp::PORT"),
        ("udp:127.0.0.1:1,to=5", "udp: takes the ipv4 and ipv6 options only, not to"),
        ("udp:127.0.0.1:1,keep-alive", "udp: takes the ipv4 and ipv6 options only"),
        ("unixgram:", "expected unixgram:PATH: the path is empty"),
        ("unix:", "expected unix:PATH: the path is empty"),
        ("udp:a\0:1", "NUL"),
    ],
)
def test_an_address_that_fits_no_scheme_says_which_exist(text: str, message: str) -> None:
    with pytest.raises(AddressError, match=message) as refused:
        listen_address(text)
    assert "migration" not in str(refused.value)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("udp:127.0.0.1:53", UdpAddress("127.0.0.1", "53")),
        ("udp:[::1]:53", UdpAddress("::1", "53")),
        ("udp::53,ipv6=on", UdpAddress("", "53", ipv6=True)),
        ("unixgram:/run/app.sock", UnixDatagramAddress("/run/app.sock")),
        ("unixgram:@name", UnixDatagramAddress("@name")),  # a file, as unix:@name is
        ("unix:/run/app.sock", UnixAddress("/run/app.sock")),
    ],
)
def test_an_address_reads_and_prints_back(text: str, parsed: object) -> None:
    assert listen_address(text) == parsed
    assert str(parsed) == text


@pytest.mark.anyio
@pytest.mark.parametrize("address", ["exec:true", ExecAddress(("true",)), "file:/x"])
async def test_listen_refuses_what_is_no_socket_address(address: Any) -> None:
    async with Upgrader(trigger=None) as up:
        with pytest.raises(AddressError, match="is no address to listen on for upgrades"):
            await up.listen("main", address)
        assert up.listening() == {}


@pytest.mark.anyio
@pytest.mark.parametrize("address", ["tcp:127.0.0.1:0", "unix:{dir}/s.sock"])
async def test_listen_datagram_refuses_a_stream_address(sockdir: Path, address: str) -> None:
    async with Upgrader(trigger=None) as up:
        with pytest.raises(UpgradeError, match="a stream socket's address"):
            await up.listen_datagram("main", address.format(dir=sockdir))
        assert up.listening() == {}


@pytest.mark.anyio
async def test_listen_datagram_refuses_a_descriptor_that_is_a_stream_listener() -> None:
    with socket.socket() as stream:
        stream.bind(("127.0.0.1", 0))
        stream.listen()
        async with Upgrader(trigger=None) as up:
            with pytest.raises(UpgradeError, match="is no datagram socket"):
                await up.listen_datagram("main", f"fd:{stream.fileno()}")


# --------------------------------------------------------------------------
# In this process: bound, answered, handed the policy.


def _abstract_name() -> UnixDatagramAddress:
    return UnixDatagramAddress(f"fdc-test-{os.getpid()}-{threading.get_ident()}", abstract=True)


ADDRESSES: list[Callable[[Path], Any]] = [
    lambda d: "udp:127.0.0.1:0",
    lambda d: "udp:[::1]:0",
    lambda d: f"unixgram:{d}/dgram.sock",
    lambda d: _abstract_name(),
]


@pytest.mark.anyio
@pytest.mark.parametrize("make", ADDRESSES, ids=["udp", "udp6", "unixgram", "abstract"])
async def test_a_datagram_socket_receives_and_answers(
    sockdir: Path, make: Callable[[Path], Any]
) -> None:
    async with Upgrader(trigger=None) as up:
        listener = await up.listen_datagram("dgram", make(sockdir))
        again = await up.listen("dgram", make(sockdir))  # the same socket, another copy
        assert isinstance(again, DatagramListener)
        assert listener.extra(FdAttribute.fileno) == listener.fileno()
        assert os.fstat(listener.fileno()).st_ino == os.fstat(again.fileno()).st_ino
        with client_for(listener, sockdir) as client:
            client.sendto(b"ping", listener.extra(SocketAttribute.local_address))
            with anyio.fail_after(TIMEOUT):
                data, peer = await again.receive()
                assert (data, peer) == (b"ping", client.getsockname())
                await listener.send(b"pong", peer)
            assert client.recv(100) == b"pong"


@pytest.mark.anyio
async def test_a_datagram_listener_accepts_nothing(sockdir: Path) -> None:
    async with Upgrader(trigger=None) as up:
        listener = await up.listen("dgram", f"unixgram:{sockdir}/d.sock")
        with pytest.raises(CapabilityError, match="no connections: use receive\\(\\)/send\\(\\)"):
            await listener.accept()
        with pytest.raises(CapabilityError, match="no connections"):
            await listener.serve(lambda stream: stream.aclose())


@pytest.mark.anyio
async def test_closing_wakes_a_receiver_and_an_unnamed_sender_cannot_be_answered(
    sockdir: Path,
) -> None:
    async with Upgrader(trigger=None) as up:
        listener = await up.listen_datagram("dgram", f"unixgram:{sockdir}/d.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unnamed:
            unnamed.sendto(b"x", str(sockdir / "d.sock"))
            with anyio.fail_after(TIMEOUT):
                data, peer = await listener.receive()
            assert (data, peer) == (b"x", None)
            with pytest.raises(AddressError, match="nowhere to send to"):
                await listener.send(b"y", peer)

        async def close_soon() -> None:
            await anyio.wait_all_tasks_blocked()
            await listener.aclose()

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(close_soon)
                with pytest.raises(anyio.ClosedResourceError):
                    await listener.receive()


def _refuse_the_first() -> tuple[CredentialPolicy, list[Credentials]]:
    seen: list[Credentials] = []

    def policy(creds: Credentials) -> bool:
        seen.append(creds)
        return len(seen) > 1

    return policy, seen


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("policy", "received", "refused"),
    [
        ("refuse the first", b"second", 1),
        (None, b"first", 0),
        (same_user_or_root, b"first", 0),
    ],
)
async def test_the_policy_is_applied_to_each_datagram(
    sockdir: Path, policy: Any, received: bytes, refused: int
) -> None:
    seen: list[Credentials] = []
    if policy == "refuse the first":
        policy, seen = _refuse_the_first()
    async with Upgrader(trigger=None) as up:
        listener = await up.listen_datagram("dgram", f"unixgram:{sockdir}/d.sock", policy=policy)
        with client_for(listener, sockdir) as client:
            for data in (b"first", b"second"):
                client.sendto(data, str(sockdir / "d.sock"))
            with anyio.fail_after(TIMEOUT):
                assert (await listener.receive())[0] == received
        assert listener.refused == refused
        assert all(creds == (os.getpid(), os.geteuid(), os.getegid()) for creds in seen)


@pytest.mark.anyio
async def test_a_datagram_queued_before_credentials_were_asked_for_is_refused(
    sockdir: Path,
) -> None:
    """A socket handed over as fd: without SO_PASSCRED: what was queued carries none."""
    path = str(sockdir / "d.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            client.sendto(b"before", path)
            async with Upgrader(trigger=None) as up:
                listener = await up.listen_datagram("dgram", f"fd:{server.fileno()}")
                client.sendto(b"after", path)
                with anyio.fail_after(TIMEOUT):
                    assert await listener.receive() == (b"after", None)
                assert listener.refused == 1


@pytest.mark.anyio
@pytest.mark.parametrize("mode", [0o600, 0o660, 0o666])
async def test_the_socket_file_has_its_mode_and_goes_with_the_last_generation(
    sockdir: Path, mode: int
) -> None:
    path = sockdir / "d.sock"
    async with Upgrader(trigger=None) as up:
        await up.listen_datagram("dgram", f"unixgram:{path}", mode=mode)
        assert stat.S_ISSOCK(path.lstat().st_mode)
        assert stat.S_IMODE(path.lstat().st_mode) == mode
    assert not path.exists()


@pytest.mark.anyio
async def test_a_live_socket_file_is_not_replaced(sockdir: Path) -> None:
    path = sockdir / "d.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as live:
        live.bind(str(path))
        async with Upgrader(trigger=None) as up:
            with pytest.raises(
                TransportError, match=f"cannot listen on unixgram:{path}: .*may be live"
            ):
                await up.listen_datagram("dgram", f"unixgram:{path}")
        assert path.exists()


@pytest.mark.anyio
@pytest.mark.parametrize(
    "address",
    [UnixAddress("fdc-abstract-stream", abstract=True), _abstract_name()],
    ids=["unix", "unixgram"],
)
async def test_an_abstract_socket_leaves_no_file_to_remove(address: Any) -> None:
    """The last generation closes an abstract socket without looking for a file
    (its name is bytes with a NUL first, which no path can hold)."""
    async with Upgrader(trigger=None) as up:
        await up.listen("abstract", address)


@contextlib.contextmanager
def _bound_pair(sockdir: Path) -> Iterator[dict[str, socket.socket]]:
    """A socket of each kind, TCP and UDP on the same port, as systemd may pass them."""
    made: dict[str, socket.socket] = {}
    try:
        made["tcp"] = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        made["tcp"].bind(("127.0.0.1", 0))
        made["tcp"].listen()
        made["udp"] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        made["udp"].bind(made["tcp"].getsockname())
        made["unix"] = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        made["unix"].bind(str(sockdir / "same.sock"))
        made["unix"].listen()
        made["unixgram"] = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        made["unixgram"].bind(str(sockdir / "same.dgram"))
        yield made
    finally:
        for sock in made.values():
            sock.close()


@pytest.mark.parametrize(
    ("asked", "found"),
    [
        ("udp:127.0.0.1:{port}", "udp"),
        ("tcp:127.0.0.1:{port}", "tcp"),
        ("unix:{dir}/same.sock", "unix"),
        ("unixgram:{dir}/same.dgram", "unixgram"),
        ("unixgram:{dir}/same.sock", None),  # the path of a stream socket
        ("udp:127.0.0.2:{port}", None),
    ],
)
def test_systemds_sockets_are_matched_by_kind_and_address(
    sockdir: Path, monkeypatch: pytest.MonkeyPatch, asked: str, found: str | None
) -> None:
    with _bound_pair(sockdir) as made:
        passed = {f"passed-{kind}": sock.fileno() for kind, sock in made.items()}
        monkeypatch.setattr(sockets, "inherited_fds", lambda: passed)
        port = made["tcp"].getsockname()[1]
        address = listen_address(asked.format(port=port, dir=sockdir))
        fd = sockets.from_socket_activation("unnamed", address)
        if found is None:
            assert fd is None
            return
        assert fd is not None
        try:
            assert os.fstat(fd).st_ino == os.fstat(made[found].fileno()).st_ino
        finally:
            os.close(fd)


# --------------------------------------------------------------------------
# Real generations.


class Pinger:
    """Numbered datagrams sent from a thread, with at most WINDOW unanswered at a time
    (a queue never overflows), and each answer recorded: the generation that
    received the datagram it answers."""

    def __init__(self, family: int, server: Any, bind: str | None = None) -> None:
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        if bind is not None:
            self.sock.bind(bind)
        self.server = server
        self.sent = 0
        #: Each datagram's number, and the generations that answered it.
        self.answers: dict[int, list[int]] = {}
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            while True:
                with self.changed:
                    waiting = self.sent - len(self.answers)
                if waiting < WINDOW and not self.stop.is_set():
                    self.sock.sendto(b"%d" % self.sent, self.server)
                    with self.changed:
                        self.sent += 1
                    self.stop.wait(0.001)  # pacing, not synchronisation
                    continue
                if not waiting:
                    return  # stopped, and every datagram answered
                if not select.select([self.sock], [], [], TIMEOUT)[0]:
                    self.errors.append(f"no answer within {TIMEOUT} s ({waiting} waiting)")
                    return
                number, generation = map(int, self.sock.recv(100).split())
                with self.changed:
                    self.answers.setdefault(number, []).append(generation)
                    self.changed.notify_all()
        except (OSError, ValueError) as exc:
            self.errors.append(repr(exc))

    def answered_by(self, generation: int) -> None:
        """Wait until ``generation`` has answered a datagram."""

        def answered() -> bool:
            return any(generation in found for found in self.answers.values())

        with self.changed:
            assert self.changed.wait_for(answered, TIMEOUT), (generation, self.errors)

    @contextlib.contextmanager
    def running(self) -> Iterator[Pinger]:
        self.thread.start()
        try:
            yield self
        finally:
            self.stop.set()
            self.thread.join(TIMEOUT + 5)
            self.sock.close()


def _client(kind: str, ready: dict[str, Any], sockdir: Path) -> Pinger:
    address = ready["address"]
    if kind == "unixgram":
        return Pinger(socket.AF_UNIX, address, bind=str(sockdir / "client.sock"))
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    return Pinger(family, tuple(address))


LISTEN = {
    "udp": "udp:127.0.0.1:0",
    "udp6": "udp:[::1]:0",
    "unixgram": "unixgram:{dir}/echo.sock",
}


@pytest.mark.parametrize("backend", ["asyncio", "uvloop", "trio"])
@pytest.mark.parametrize("kind", list(LISTEN))
def test_no_datagram_is_lost_across_upgrades(sockdir: Path, kind: str, backend: str) -> None:
    listen = LISTEN[kind].format(dir=sockdir)
    with Generations(APP, sockdir, "--backend", backend, "--listen", listen) as gens:
        pinger = _client(kind, gens.ready(0, TIMEOUT), sockdir)
        with pinger.running():
            pinger.answered_by(0)
            for generation in range(1, UPGRADES + 1):
                request_upgrade(gens.control, timeout=TIMEOUT)
                gens.ready(generation, TIMEOUT)
                pinger.answered_by(generation)
        assert pinger.errors == []
        gens.close()
        received = sum(event["received"] for event in gens.exits())
    missing = [n for n in range(pinger.sent) if n not in pinger.answers]
    twice = {n: found for n, found in pinger.answers.items() if len(found) > 1}
    assert (missing, twice) == ([], {}), gens.tail()
    assert received == pinger.sent  # counted by the generations themselves
    assert {g for found in pinger.answers.values() for g in found} == set(range(UPGRADES + 1))
    assert not (sockdir / "echo.sock").exists()  # the last generation removed it


def _ask(port: int) -> int:
    """One datagram to ``port`` on a connected socket: the generation that answered.
    ConnectionRefusedError if nothing is bound there (the kernel's ICMP answer)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(("127.0.0.1", port))
        sock.send(b"0")
        return int(sock.recv(100).split()[1])


def test_a_udp_socket_asked_for_at_another_port_is_bound_there(sockdir: Path) -> None:
    old, new = free_udp_port(), free_udp_port()
    listen = ("--listen", f"udp:127.0.0.1:{old}")
    with Generations(APP, sockdir, "--backend", "asyncio", *listen) as gens:
        first = gens.ready(0, TIMEOUT)
        assert _ask(old) == 0
        command = [*gens.command[: gens.command.index("--listen")], "--listen"]
        request_upgrade(gens.control, timeout=TIMEOUT, command=[*command, f"udp:127.0.0.1:{new}"])
        assert gens.ready(1, TIMEOUT)["address"] == ["127.0.0.1", new]
        assert _ask(new) == 1
        assert gens.wait_exited([first["pid"]], TIMEOUT) == []
        with pytest.raises(ConnectionRefusedError):  # closed with generation 0
            _ask(old)
        moved = f"echo moved from udp:127.0.0.1:{old} to udp:127.0.0.1:{new}"
        assert moved in "\n".join(gens.output)


@pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate is not installed")
@pytest.mark.parametrize("kind", ["udp", "unixgram"])
def test_a_datagram_socket_activated_by_systemd_is_handed_on(sockdir: Path, kind: str) -> None:
    """systemd-socket-activate binds the socket and starts generation 0 at the first
    datagram (which stays queued for it); the server finds the socket by its
    address (it could not bind it again), and hands it to the next generation."""
    assert ACTIVATE is not None
    listen: tuple[str, ...]
    if kind == "udp":
        port = free_udp_port()
        where, listen = f"127.0.0.1:{port}", ("--listen", f"udp:127.0.0.1:{port}")
        pinger = Pinger(socket.AF_INET, ("127.0.0.1", port))
    else:
        # Bound without SO_PASSCRED (no PassCredentials=yes): the first datagrams
        # carry no credentials, which the default policy would refuse.
        where = str(sockdir / "echo.sock")
        listen = ("--listen", f"unixgram:{where}", "--any-sender")
        pinger = Pinger(socket.AF_UNIX, where, bind=str(sockdir / "client.sock"))
    prefix = [ACTIVATE, "--datagram", "--listen", where]
    with Generations(APP, sockdir, *listen, prefix=prefix) as gens:
        # Datagrams sent before it is bound would go nowhere: wait for its word.
        gens.said("Listening on", TIMEOUT)
        with pinger.running():
            pinger.answered_by(0)
            request_upgrade(gens.control, timeout=TIMEOUT)
            gens.ready(1, TIMEOUT)
            pinger.answered_by(1)
        assert pinger.errors == []
    assert sorted(pinger.answers) == list(range(pinger.sent)), gens.tail()
