"""The drain timeout: once replaced, a generation has ``drain_timeout`` to finish what
is in flight; then what is left is cut, counted, logged and recorded, and it exits.

The server (tests/upgrade/slow_peer.py) answers each request after as long as
its client asks, and drains without a limit of its own: only the Upgrader's
timeout ends it."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from fdchannel.upgrade import pidfile as pidfiles, request_upgrade
from fdchannel.upgrade.connections import accepted

from .harness import TIMEOUT, wait_gone
from .slow import BACKENDS, Request, SlowServer

#: The drain timeout, and each request's length: those shorter than the timeout are
#: answered in full by the old generation, the others cut.  With nothing left to cut
#: the generation leaves on its own, before the timeout.
CASES = [
    pytest.param("1.5", [300, 20_000], id="one-cut"),
    pytest.param("1.5", [200, 400], id="none-cut"),
    pytest.param(None, [200, 2_000], id="no-timeout"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("timeout", "lengths"), CASES)
def test_what_is_in_flight_finishes_or_is_cut_at_the_drain_timeout(
    sockdir: Path, backend: str, timeout: str | None, lengths: list[int]
) -> None:
    drain = ("--drain-timeout", timeout) if timeout else ()
    with SlowServer(sockdir, backend, *drain) as server:
        first = server.ready(0)["pid"]
        requests = [Request(sockdir / "app.sock", ms) for ms in lengths]
        for ms in lengths:  # every request is in flight on generation 0
            server.in_flight(ms)
        result = request_upgrade(server.control, timeout=TIMEOUT)
        assert server.ready(1)["pid"] == result["pid"] == server.serving()
        answers = [request.result() for request in requests]
        assert server.process.wait(TIMEOUT) == 0  # generation 0: cut or drained, it exits 0
        assert wait_gone(first)
        seconds = float(timeout) if timeout else float("inf")
        bound = seconds * 1000
        expected = [f"{first} 0 {ms}\n".encode() if ms < bound else b"" for ms in lengths]
        assert answers == expected
        cut = sum(ms >= bound for ms in lengths)
        drained = pidfiles.outcome(pidfiles.read_status(server.pidfile), 1)
        assert drained is not None and drained["ok"] is True
        if not cut:  # it drained, and left, before the timeout
            assert "drain" not in drained
            assert not any("drain timeout" in line for line in server.output)
        else:
            assert drained["drain"] == {"timeout": seconds, "cut": cut, "pid": first}
            said = f"the drain timeout ({seconds:g} s) passed: exiting, {cut} connection"
            assert any(said in line for line in server.output), server.tail()
        # The new generation serves on.
        assert Request(sockdir / "app.sock", 0).result().startswith(f"{result['pid']} 1 ".encode())


def test_the_count_is_of_connections_accepted_on_the_listeners(sockdir: Path) -> None:
    """Not listeners, socketpairs, other listeners' connections or our own outgoing ones."""
    with socket.socket(socket.AF_UNIX) as unix, socket.socket() as tcp:
        unix.bind(str(sockdir / "a.sock"))
        unix.listen()
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        with socket.socket(socket.AF_UNIX) as other:
            other.bind(str(sockdir / "other.sock"))
            other.listen()
            clients = [socket.socket(socket.AF_UNIX) for _ in range(3)] + [socket.socket()]
            served = []
            try:
                for client in clients[:2]:
                    client.connect(str(sockdir / "a.sock"))
                    served.append(unix.accept()[0])
                clients[2].connect(str(sockdir / "other.sock"))
                served.append(other.accept()[0])  # accepted, but on another listener
                clients[3].connect(tcp.getsockname())
                served.append(tcp.accept()[0])
                served.append(socket.socket(fileno=os.dup(served[0].fileno())))  # twice: once
                pair = socket.socketpair()
                try:
                    assert accepted([unix.fileno()]) == 2
                    assert accepted([unix.fileno(), tcp.fileno()]) == 3
                    assert accepted([tcp.fileno()]) == 1
                    assert accepted([]) == 0
                finally:
                    for end in pair:
                        end.close()
            finally:
                for sock in clients + served:
                    sock.close()
