"""``send`` and ``recv``: descriptors from a shell into a socket-activated server."""

from __future__ import annotations

import json
import shlex
import shutil
import signal
import socket
import sys
from pathlib import Path

import pytest

from .helpers import Child, cli, run

#: A socket-activated server as any would be written: it trusts LISTEN_* only
#: when LISTEN_PID is its own pid, takes fd 3 onwards, and answers one client.
SERVER = """
import os, socket, sys
if os.environ.get("LISTEN_PID") != str(os.getpid()):
    sys.exit("LISTEN_PID is not mine")
names = os.environ["LISTEN_FDNAMES"].split(":")
assert len(names) == int(os.environ["LISTEN_FDS"])
index = names.index(sys.argv[1])
assert os.get_inheritable(3 + index)
sock = socket.socket(fileno=3 + index)
print(f"serving {sys.argv[1]} on {sock.getsockname()!r} with {names}", file=sys.stderr, flush=True)
conn, _ = sock.accept()
with conn:
    conn.sendall(f"hello from {sys.argv[1]} (fd {3 + index} of {len(names)})\\n".encode())
"""


@pytest.fixture
def server(tmp_path: Path) -> list[str]:
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    return [sys.executable, str(script)]


def _ask(address: str | tuple[str, int]) -> str:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family) as client:
        client.settimeout(20)
        client.connect(address)
        return client.makefile().readline()


def test_recv_hands_a_tcp_socket_to_a_server(sockdir: Path, server: list[str]) -> None:
    uri = f"unix:{sockdir}/cpr.sock"
    recv = cli("recv", "--timeout", "20", uri, "--", *server, "http")
    with Child(recv) as receiver:
        receiver.wait_for("listening on")
        sent = run(cli("send", uri, f"log={sockdir}", "http=tcp:127.0.0.1:0"))
        serving = receiver.wait_for("serving http")
        port = int(serving.split("', ")[1].split(")")[0])
        answer = _ask(("127.0.0.1", port))
        done = receiver.finish()
    assert sent.returncode == 0, sent.stderr
    assert answer == "hello from http (fd 4 of 2)\n"
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[1:3] == [
        "fdchannel: received 2 descriptors (native codec); acknowledging once the command "
        "has started",
        f"fdchannel: exec {sys.executable} with LISTEN_FDS=2 LISTEN_FDNAMES=log:http (fd 3-4)",
    ]
    lines = sent.stdout.splitlines()
    assert lines[0] == f"sent 2 descriptors to {uri} (native codec); acknowledged: " + (
        "accepted, then closed"
    )
    assert "new listening socket tcp:127.0.0.1:0" in lines[3]
    assert f"listening local=127.0.0.1:{port}" in lines[3]
    assert "directory" in lines[2]


def test_send_from_a_shell_pipeline(sockdir: Path) -> None:
    uri = f"unix:{sockdir}/cpr.sock"
    show = 'echo "$LISTEN_FDS $LISTEN_FDNAMES $([ "$LISTEN_PID" = $$ ] && echo mine)"; cat <&3'
    with Child(cli("recv", "--json", "--timeout", "20", uri, "--", "sh", "-c", show)) as receiver:
        receiver.wait_for("listening on")
        fdchannel = shlex.join(cli("send", uri, "data=0"))
        sent = run(["sh", "-c", f"printf 'piped data' | {fdchannel}"])
        done = receiver.finish()
    assert sent.returncode == 0, sent.stderr
    assert "pipe read end" in sent.stdout
    assert done.returncode == 0, done.stderr
    assert done.stdout == "1 data mine\npiped data"
    report = json.loads(done.stderr.split("\n", 1)[1])
    assert report["descriptors"] == [{"name": "data", "id": 0}]
    assert report["exec"]["argv"] == ["sh", "-c", show]
    assert report["exec"]["LISTEN_FDNAMES"] == "data"


@pytest.mark.interop
@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate is missing"
)
def test_systemd_socket_activate_starts_send(sockdir: Path, server: list[str]) -> None:
    """systemd listens, starts `fdchannel send` on the first client, which hands over fd 3."""
    uri = f"unix:{sockdir}/cpr.sock"
    http = str(sockdir / "http.sock")
    with Child(cli("recv", "--timeout", "20", uri, "--", *server, "web")) as receiver:
        receiver.wait_for("listening on")
        activate = [
            "systemd-socket-activate",
            "--listen",
            http,
            "--fdname=web",
            *cli("send", "--timeout", "20", uri, "web=fd:web", "again=3"),
        ]
        with Child(activate) as systemd:
            systemd.wait_for(f"Listening on {http}")
            # The connection waits in the backlog while the socket changes hands.
            answer = _ask(http)
            sent = systemd.finish()
        done = receiver.finish()
    assert answer == "hello from web (fd 3 of 2)\n"
    assert sent.returncode == 0, sent.stderr
    assert "inherited descriptor 3 (web)" in sent.stdout
    assert done.returncode == 0, done.stderr


def test_send_without_a_listener(sockdir: Path) -> None:
    done = run(cli("send", "--timeout", "0.3", f"unix:{sockdir}/nobody.sock", "x=/dev/null"))
    assert done.returncode == 1
    assert done.error_line() == (
        f"fdchannel: error: nobody accepted on unix:{sockdir}/nobody.sock within 0.3 s "
        "(last attempt: No such file or directory)"
    )


def test_send_json(sockdir: Path) -> None:
    uri = f"unix:{sockdir}/cpr.sock"
    with Child(cli("probe", "--listen", "--timeout", "20", uri)) as listener:
        listener.wait_for("listening on")
        sent = run(cli("send", "--json", "--codec", "qemu", uri, "a=/dev/null", "a=/dev/zero"))
        listener.finish()
    assert sent.returncode == 0, sent.stderr
    document = sent.json()
    assert document["codec"] == "qemu" and document["ack"] == "closed"
    assert [(d["name"], d["id"], d["source"]) for d in document["descriptors"]] == [
        ("a", 0, "file /dev/null (read-write)"),
        ("a", 1, "file /dev/zero (read-write)"),
    ]
    assert document["descriptors"][1]["description"]["device"] == "1:5"
    assert set(document["timings_ms"]) == {"connect", "send", "ack"}


def test_recv_interrupted_cleans_up(sockdir: Path) -> None:
    path = sockdir / "cpr.sock"
    with Child(cli("recv", f"unix:{path}", "--", "true")) as receiver:
        receiver.wait_for("listening on")
        done = receiver.signal(signal.SIGTERM)
    assert done.returncode == 128 + signal.SIGTERM
    assert done.stderr.splitlines()[-1] == "fdchannel: error: interrupted by SIGTERM"
    assert not path.exists()  # the listener removed its socket file on the way out
