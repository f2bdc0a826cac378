"""``fdchannel probe``: addresses, QAPI, capabilities, reachability per transport, sets."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .helpers import Child, cli, run

Setup = Callable[[Path, contextlib.ExitStack], tuple[str, list[int]]]


def _unix_missing(d: Path, stack: contextlib.ExitStack) -> tuple[str, list[int]]:
    return f"unix:{d}/missing.sock", []


def _unix_stale(d: Path, stack: contextlib.ExitStack) -> tuple[str, list[int]]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(d / "stale.sock"))  # closed without unlinking: nobody listens
    return f"unix:{d}/stale.sock", []


def _unix_not_socket(d: Path, stack: contextlib.ExitStack) -> tuple[str, list[int]]:
    (d / "plain").write_text("x")
    return f"unix:{d}/plain", []


def _unix_listening(d: Path, stack: contextlib.ExitStack) -> tuple[str, list[int]]:
    sock = stack.enter_context(socket.socket(socket.AF_UNIX))
    sock.bind(str(d / "live.sock"))
    sock.listen()
    return f"unix:{d}/live.sock", []


def _tcp_listening(d: Path, stack: contextlib.ExitStack) -> tuple[str, list[int]]:
    sock = stack.enter_context(socket.socket())
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return f"tcp:127.0.0.1:{sock.getsockname()[1]}", []


def _tcp_refused(d: Path, stack: contextlib.ExitStack) -> tuple[str, list[int]]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # a port nobody listens on once it is closed
        port = sock.getsockname()[1]
    return f"tcp:127.0.0.1:{port}", []


def _file(d: Path, stack: contextlib.ExitStack) -> tuple[str, list[int]]:
    (d / "state.bin").write_bytes(b"x" * 3000)
    return f"file:{d}/state.bin,offset=1K", []


def _file_new(d: Path, stack: contextlib.ExitStack) -> tuple[str, list[int]]:
    return f"file:{d}/new.bin", []


def _file_nowhere(d: Path, stack: contextlib.ExitStack) -> tuple[str, list[int]]:
    return f"file:{d}/no/such/dir/x", []


def _pipe_fd(d: Path, stack: contextlib.ExitStack) -> tuple[str, list[int]]:
    r, w = os.pipe()
    stack.callback(os.close, r)
    stack.callback(os.close, w)
    return f"fd:{r}", [r]


def _closed_fd(d: Path, stack: contextlib.ExitStack) -> tuple[str, list[int]]:
    return "fd:987", []


def _literal(uri: str) -> Setup:
    return lambda d, stack: (uri, [])


# (setup, exit status, capabilities, words in the reachability detail)
CASES = [
    pytest.param(_unix_missing, 1, "FD_PASSING HALF_CLOSE MULTI_ACCEPT", "does not exist",
                 id="unix-missing"),
    pytest.param(_unix_stale, 1, "FD_PASSING", "stale socket file", id="unix-stale"),
    pytest.param(_unix_not_socket, 1, "FD_PASSING", "not a socket", id="unix-not-socket"),
    pytest.param(_unix_listening, 0, "FD_PASSING", f"someone listens (pid {os.getpid()}",
                 id="unix-listening"),
    pytest.param(_literal("unix:" + "x" * 120), 1, "FD_PASSING", "sun_path", id="unix-too-long"),
    pytest.param(_tcp_listening, 0, "HALF_CLOSE MULTI_ACCEPT", "connected to 127.0.0.1:",
                 id="tcp-listening"),
    pytest.param(_tcp_refused, 1, "HALF_CLOSE", "refused", id="tcp-refused"),
    pytest.param(_literal("tcp:127.0.0.1:0"), 1, "HALF_CLOSE", "port 0", id="tcp-port-0"),
    pytest.param(_file, 0, "SEEKABLE", "size 2.93 KiB, readable: yes, writable: yes",
                 id="file"),
    pytest.param(_file_new, 0, "SEEKABLE", "can create it", id="file-new"),
    pytest.param(_file_nowhere, 1, "SEEKABLE", "is not writable", id="file-nowhere"),
    pytest.param(_literal("exec:cat > /dev/null"), 0, "HALF_CLOSE", "'cat' = /", id="exec"),
    pytest.param(_literal("exec:exit 0"), 0, "HALF_CLOSE", "shell builtin", id="exec-builtin"),
    pytest.param(_literal("exec:no-such-program-here x"), 1, "HALF_CLOSE", "not found",
                 id="exec-missing"),
    pytest.param(_literal('{"channel-type": "main", "addr": {"transport": "exec", '
                          '"args": ["/nonexistent/prog"]}}'), 1, "HALF_CLOSE",
                 "not an executable", id="exec-args"),
    pytest.param(_pipe_fd, 0, "HALF_CLOSE", "pipe read end", id="fd-pipe"),
    pytest.param(_closed_fd, 1, "(none)", "descriptor 987 is not open", id="fd-closed"),
    pytest.param(_literal("fd:http"), 1, "(none)", "no inherited descriptor", id="fd-name"),
    pytest.param(_literal("rdma:host:1"), 1, "(none)", "not supported", id="rdma"),
    pytest.param(_literal("vsock:1:1"), 1, "HALF_CLOSE", "", id="vsock"),
]  # fmt: skip


@pytest.fixture
def stack() -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as stack:
        yield stack


@pytest.mark.parametrize(("setup", "status", "caps", "words"), CASES)
def test_probe_transport(
    setup: Setup, status: int, caps: str, words: str, sockdir: Path, stack: contextlib.ExitStack
) -> None:
    uri, fds = setup(sockdir, stack)
    done = run(cli("probe", "--timeout", "0.5", uri), pass_fds=fds)
    assert done.returncode == status, done.stdout + done.stderr
    lines = dict(line.strip().split(maxsplit=1) for line in done.stdout.splitlines()[1:-1])
    assert lines["capabilities"] == caps or caps in lines["capabilities"]
    assert words in lines["reachable"], lines["reachable"]
    assert lines["reachable"].startswith("yes: " if status == 0 else "NO: ")
    assert done.stdout.splitlines()[-1] == (
        "result: ok" if status == 0 else "result: 1 problem found"
    )
    assert done.stderr == ""


def test_probe_json_document(sockdir: Path) -> None:
    uri = f"tcp:[::1]:{4446},keep-alive=on"
    done = run(cli("probe", "--json", "--timeout", "2", uri))
    assert done.returncode == 1
    document = done.json()
    assert document["ok"] is False and document["problems"] == 1
    (channel,) = document["channels"]
    assert channel["channel"] == "tcp:[::1]:4446,keep-alive=on"
    assert channel["address"] == {
        "class": "TcpAddress",
        "host": "::1",
        "port": "4446",
        "to": None,
        "ipv4": None,
        "ipv6": None,
        "keep_alive": True,
        "numeric": None,
        "keep_alive_count": None,
        "keep_alive_idle": None,
        "keep_alive_interval": None,
        "mptcp": None,
    }
    assert channel["qapi"] == {
        "channel-type": "main",
        "addr": {
            "transport": "socket",
            "type": "inet",
            "host": "::1",
            "port": "4446",
            "keep-alive": True,
        },
    }
    assert channel["capabilities"] == ["HALF_CLOSE", "MULTI_ACCEPT"]
    assert channel["reachable"]["ok"] is False
    assert channel["self_test"] == {
        "ran": False,
        "ok": None,
        "detail": "skipped: only unix sockets pass descriptors",
    }
    assert set(channel["timings_ms"]) == {"parse", "reach"}
    assert document["validation"] is None


def test_probe_human_text(sockdir: Path) -> None:
    cpr = "cpr,addr.transport=socket,addr.type=unix,addr.path=" + str(sockdir / "cpr.sock")
    done = run(cli("probe", cpr))
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[0] == f"{cpr}  (cpr channel)"
    assert (
        lines[1]
        == f"  address       UnixAddress(path='{sockdir}/cpr.sock', abstract=False, tight=True)"
    )
    assert lines[2] == (
        '  qapi          {"channel-type": "cpr", "addr": {"transport": "socket", "type": "unix", '
        f'"path": "{sockdir}/cpr.sock"}}}}'
    )
    assert lines[5] == "  self-test     skipped: nobody listens"
    assert lines[6].startswith("  timing        parse ") and lines[6].endswith(" ms")


def _validation(args: list[str]) -> tuple[int, dict[str, Any]]:
    done = run(cli("probe", "--json", *args))
    return done.returncode, done.json()["validation"]


@pytest.mark.parametrize(
    ("args", "valid", "mode", "words"),
    [
        (["unix:/a", "cpr,addr.transport=socket,addr.type=unix,addr.path=/b"], True,
         "cpr-transfer", "main unix:/a, cpr cpr,addr.transport=socket"),
        (["unix:/a", "unix:/b"], False, "normal", "more than one main entry"),
        (["--mode", "cpr-transfer", "unix:/a"], False, "cpr-transfer", "missing 'cpr'"),
        (["file:/a", '{"channel-type": "cpr", "addr": {"transport": "socket", "type": "unix", '
                     '"path": "/b"}}'], False, "cpr-transfer", "needs a stream"),
        (["unix:/a", "cpr,addr.transport=socket,addr.type=inet,addr.host=h,addr.port=1"], False,
         "cpr-transfer", "cannot pass descriptors"),
        (["cpr,addr.transport=socket,addr.type=unix,addr.path=/b", "--mode", "normal"], False,
         "normal", "no main entry"),
    ],
    ids=["ok", "two-main", "no-cpr", "file-main", "tcp-cpr", "no-main"],
)  # fmt: skip
def test_channel_set(args: list[str], valid: bool, mode: str, words: str) -> None:
    status, validation = _validation(args)
    assert status == 1  # nothing here is reachable, whatever the verdict on the set
    assert validation["ok"] is valid
    assert validation["mode"] == mode
    assert words in validation["detail"]


def test_self_test_against_probe_listen(sockdir: Path) -> None:
    uri = f"unix:{sockdir}/cpr.sock"
    with Child(cli("probe", "--listen", "--json", "--timeout", "20", uri)) as listener:
        listener.wait_for("listening on")
        done = run(cli("probe", "--json", uri))
        heard = listener.finish()
    assert done.returncode == 0, done.stdout
    (channel,) = done.json()["channels"]
    assert channel["reachable"]["listeners"][0]["pid"] == listener.popen.pid
    test = channel["self_test"]
    assert test["ran"] and test["ok"], test
    assert {"connect_ms", "send_ms", "ack_ms"} <= set(test)
    assert "self_test" in channel["timings_ms"]
    assert heard.returncode == 0
    received = heard.json()
    (entry,) = received["descriptors"]
    assert entry["name"] == "fdchannel-probe" and entry["id"] == 0
    memfd = entry["description"]
    assert memfd["kind"] == "memfd" and memfd["name"] == "fdchannel-probe"
    assert memfd["seals"] == ["seal", "shrink", "grow", "write"]
    assert received["peer"]["pid"] != listener.popen.pid
    assert received["metadata"]["text"].startswith("fdchannel probe self-test from pid ")


def test_self_test_is_not_forced_on_others(sockdir: Path, stack: contextlib.ExitStack) -> None:
    uri, _ = _unix_listening(sockdir, stack)
    done = run(cli("probe", "--json", uri))
    (channel,) = done.json()["channels"]
    assert done.returncode == 0
    assert "not 'fdchannel probe --listen'" in channel["self_test"]["detail"]
    forced = run(cli("probe", "--json", "--self-test", "--timeout", "0.5", uri))
    (channel,) = forced.json()["channels"]
    assert forced.returncode == 1
    assert channel["self_test"]["ok"] is False
    assert "timed out" in channel["self_test"]["detail"]
