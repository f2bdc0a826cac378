"""``fdchannel probe``: reachability per transport (fdchannel/reachability.py)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .cli.helpers import cli, run, unix_listening

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
    pytest.param(unix_listening, 0, "FD_PASSING", f"someone listens (pid {os.getpid()}",
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
