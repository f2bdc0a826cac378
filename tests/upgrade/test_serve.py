"""``fdchannel serve``: a server that takes listening descriptors, upgraded.

The checks' parsing and the sockets' placement are tables.  Then the real
command: a small peer server (below) shows what a server is given (its
descriptors, ``LISTEN_*``, signals, its death with the generation), on each
event loop the launcher can run; and gunicorn (sync workers, uvicorn
workers) is upgraded under wrk's load with no failed request, a release
that fails its check or crashes leaves the old generation serving, and
SIGTERM stops it all with the server's status.  Every process a test starts
carries a marker in its environment: none may be left at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from bench.load import describe, find_wrk, finish_wrk, start_wrk
from fdchannel.cli import main as cli_main
from fdchannel.errors import UpgradeFailed
from fdchannel.upgrade import request_upgrade
from fdchannel.upgrade.launch_checks import (
    Check,
    CheckError,
    Endpoint,
    Target,
    parse_check,
    shared_with_old,
    substitute,
)
from fdchannel.upgrade.launcher import Plan, ServeOptions, plan

from .harness import wait_gone

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "serve_gunicorn"
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
LOOPS = ["asyncio", "uvloop", "trio"]
TIMEOUT = 30.0
MARKER = "FDCHANNEL_SERVE_TEST"

# ----------------------------------------------------------------------
# Checks, as parsed.

PARSED = [
    ("tcp:127.0.0.1:8080", Check("tcp", "tcp:127.0.0.1:8080", Target(host="127.0.0.1", port=8080))),
    ("tcp:[::1]:80", Check("tcp", "tcp:[::1]:80", Target(host="::1", port=80))),
    ("tcp:{http}", Check("tcp", "tcp:{http}", Target(name="http"))),
    ("unix:/run/app.sock", Check("unix", "unix:/run/app.sock", Target(path="/run/app.sock"))),
    ("unix:{ready}", Check("unix", "unix:{ready}", Target(name="ready"))),
    (
        "http://{ready}/healthz?deep=1",
        Check("http", "http://{ready}/healthz?deep=1", Target(name="ready"), "/healthz?deep=1"),
    ),
    ("http://{ready}", Check("http", "http://{ready}", Target(name="ready"), "/")),
    (
        "http://localhost/up#x",
        Check(
            "http",
            "http://localhost/up#x",
            Target(host="localhost", port=80),
            "/up",
            authority="localhost",
        ),
    ),
    (
        "http://[::1]:8080/",
        Check("http", "http://[::1]:8080/", Target(host="::1", port=8080), "/", "[::1]:8080"),
    ),
    (
        "cmd:curl -fsS --unix-socket '{ready}' http://x/healthz",
        Check(
            "cmd",
            "cmd:curl -fsS --unix-socket '{ready}' http://x/healthz",
            argv=("curl", "-fsS", "--unix-socket", "{ready}", "http://x/healthz"),
        ),
    ),
    ("alive:1.5", Check("alive", "alive:1.5", seconds=1.5)),
]


@pytest.mark.parametrize(("text", "expected"), PARSED, ids=[t for t, _ in PARSED])
def test_a_check_parses(text: str, expected: Check) -> None:
    assert parse_check(text) == expected


REFUSED = [
    ("", "is not a check"),
    ("8080", "is not a check"),
    ("ftp://x/", "is not a check"),
    ("tcp:8080", "a port is needed"),
    ("tcp:host:", "a port is needed"),
    ("tcp:host:http", "is not a port"),
    ("tcp:host:70000", "is not a port"),
    ("tcp::80", "a host is needed"),
    ("tcp:[::1:80", "in brackets"),
    ("unix:", "needs a path"),
    ("http:/x", "http://HOST:PORT/PATH"),
    ("http://h/a b", "a space or a control character"),
    ("http://h/a\r\nX: y", "a space or a control character"),
    ("http://user@h/", "no user or password"),
    ("https://h/", "https is not checked"),
    ("cmd:", "needs a command"),
    ("cmd:echo 'x", "does not split"),
    ("alive:", "number of seconds"),
    ("alive:-1", "positive"),
    ("alive:inf", "positive"),
]


@pytest.mark.parametrize(("text", "message"), REFUSED, ids=[t or "empty" for t, _ in REFUSED])
def test_a_check_that_does_not_parse_says_why(text: str, message: str) -> None:
    with pytest.raises(CheckError, match=re.escape(message)):
        parse_check(text)


SHARED = {
    "http": Endpoint(host="0.0.0.0", port=8080),
    "admin": Endpoint(host="127.0.0.1", port=9000),
    "sock": Endpoint(path="/run/app/app.sock"),
}
REACHES = [
    ("http://{http}/healthz", "http"),
    ("tcp:{admin}", "admin"),
    ("cmd:probe {sock}", "sock"),
    ("http://127.0.0.1:8080/", "http"),  # a wildcard bind is reached from any address
    ("tcp:10.1.2.3:8080", "http"),
    ("tcp:127.0.0.1:9000", "admin"),
    ("unix:/run/app/app.sock", "sock"),
    ("tcp:10.1.2.3:9000", None),  # admin is bound to loopback only
    ("http://{ready}/healthz", None),
    ("unix:/run/app/other.sock", None),
    ("cmd:probe {ready} {http2}", None),
    ("alive:1", None),
]


@pytest.mark.parametrize(("text", "reached"), REACHES, ids=[t for t, _ in REACHES])
def test_a_check_on_a_shared_socket_is_found(text: str, reached: str | None) -> None:
    assert shared_with_old(parse_check(text), SHARED) == reached


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("fd://{http}", "fd://3"),
        ("{http},{ready}", "3,4"),
        ("%({x-forwarded-for}i)s", "%({x-forwarded-for}i)s"),  # not a socket: left as it is
        ("{{http}}", "{3}"),
        ("{nope}", "{nope}"),
    ],
)
def test_placeholders_name_known_sockets_only(word: str, expected: str) -> None:
    assert substitute(word, {"http": "3", "ready": "4"}) == expected


# ----------------------------------------------------------------------
# Where the sockets go.


def options(command: Sequence[str], *listen: str, **kw: Any) -> ServeOptions:
    pairs = tuple(tuple(item.split("=", 1)) for item in listen or ("http=tcp:127.0.0.1:0",))
    return ServeOptions(command=tuple(command), listen=pairs, **kw)  # type: ignore[arg-type]


PLANS = [
    (
        options(["gunicorn", "app:app"], ready=parse_check("http://{ready}/healthz")),
        Plan(("http", "ready"), ("gunicorn", "app:app"), listen_fds=True),
    ),
    (
        options(["gunicorn", "app:app", "--bind", "fd://{http}"]),
        Plan(("http",), ("gunicorn", "app:app", "--bind", "fd://3"), listen_fds=False),
    ),
    (
        options(
            ["srv", "--fd", "{admin}", "--fd", "{ready}"],
            "http=tcp:0.0.0.0:80",
            "admin=unix:/run/a.sock",
            ready=parse_check("http://{ready}/"),
        ),
        Plan(("http", "admin", "ready"), ("srv", "--fd", "4", "--fd", "5"), listen_fds=False),
    ),
    (
        options(["srv", "{http}"], socket_activation="always"),
        Plan(("http",), ("srv", "3"), listen_fds=True),
    ),
    (
        options(["srv"], ready=parse_check("cmd:check {http}")),
        Plan(("http",), ("srv",), listen_fds=True),
    ),
]


@pytest.mark.parametrize(("given", "expected"), PLANS)
def test_sockets_are_placed_from_3(given: ServeOptions, expected: Plan) -> None:
    assert plan(given) == expected


BAD_PLANS = [
    (options([]), "a server command is needed"),
    (options(["srv"], "1http=tcp:h:1"), "a letter or '_'"),
    (options(["srv"], "ready=tcp:h:1"), "private socket"),
    (options(["srv"], "a=tcp:h:1", "a=tcp:h:2"), "given twice"),
    (options(["srv"], ready=parse_check("tcp:{admin}")), "neither a --listen name"),
    (options(["srv"], socket_activation="never"), "must be told its sockets"),
    (
        options(["srv", "{http}"], ready=parse_check("http://{ready}/")),
        "put {ready} in its command line",
    ),
    (options(["srv"], ready=parse_check("alive:40")), "does not fit"),
    (options(["srv"], ready=parse_check("tcp:{ready}")), "would pass at once"),
    (options(["srv"], ready=parse_check("unix:{http}")), "would pass at once"),
]


@pytest.mark.parametrize(("given", "message"), BAD_PLANS, ids=[m for _, m in BAD_PLANS])
def test_a_plan_that_cannot_work_says_why(given: ServeOptions, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        plan(given)


USAGE = [
    (["--listen", "http"], "expected NAME=ADDRESS"),
    (["--listen", "http=nowhere:1"], "is no address to listen on for upgrades: use tcp:"),
    (["--listen", "dns=udp:127.0.0.1:53"], "hands on stream listeners only"),
    (["--listen", "log=unixgram:/run/x"], "hands on stream listeners only"),
    (["--ready", "ftp://x/"], "is not a check"),
    (["--forward", "HUP"], "asks the generation for an upgrade"),
    (["--stop-signal", "KILL"], "cannot be caught"),
    (["--probation", "-1"], "--probation -1.0: a number of seconds"),
    (["--socket-activation", "never"], "must be told its sockets"),
]


@pytest.mark.parametrize(("extra", "message"), USAGE, ids=[" ".join(e) for e, _ in USAGE])
def test_a_wrong_command_line_is_a_usage_error(
    sockdir: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    listen = [] if extra[0] == "--listen" else ["--listen", "http=tcp:127.0.0.1:0"]
    args = [
        *("serve", *listen, *extra),
        *("--pidfile", str(sockdir / "p"), "--control", str(sockdir / "c"), "--", "true"),
    ]
    assert cli_main(args) == 2
    assert message in capsys.readouterr().err


# ----------------------------------------------------------------------
# The real command, with a peer server that tells what it was given.

PEER = r"""
import json, os, signal, socket, sys, threading

args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
if os.environ.get("LISTEN_PID") == str(os.getpid()):
    fds = list(range(3, 3 + int(os.environ["LISTEN_FDS"])))
else:
    fds = [int(fd) for fd in args["--fds"].split(",")]
code = int(args.get("--code", "0"))
if args.get("--term") == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: os._exit(code))
signal.signal(signal.SIGUSR1, lambda *_: os._exit(code + 1))
print("peer up", file=sys.stderr, flush=True)

def describe():
    names = {}
    for fd in range(3, 20):
        try:
            with socket.socket(fileno=os.dup(fd)) as s:
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    names[fd] = str(s.getsockname())
        except OSError:
            pass
    keys = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "FDCHANNEL_UPGRADE")
    return {"pid": os.getpid(), "pgid": os.getpgid(0), "env": {k: os.environ.get(k) for k in keys},
            "fds": names}

def serve(fd):
    sock = socket.socket(fileno=fd)
    sock.settimeout(3600)  # waits in poll(): the shared socket stays non-blocking
    while True:
        conn, _ = sock.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            path = data.split(b" ")[1] if data.count(b" ") > 1 else b"/"
            body = json.dumps(describe()).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                         % len(body) + body)
        if path == b"/exit":
            print("peer exits on request", file=sys.stderr, flush=True)
            os._exit(5)

for fd in fds:
    threading.Thread(target=serve, args=(fd,), daemon=True).start()
while True:
    signal.pause()
"""


def marked(marker: str) -> list[int]:
    """The processes whose environment carries ``marker`` (ours: every one a test started)."""
    needle = f"{MARKER}={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if needle in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                    found.append(int(entry))
    return found


def get(address: str | tuple[str, int], path: str = "/", timeout: float = 5.0) -> bytes:
    """One HTTP/1.0 GET; the body (raises on anything but 200)."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family) as sock:
        sock.settimeout(timeout)
        sock.connect(address)
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: test\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b" ")[1:2] == [b"200"], head
    return body


class Service:
    """``fdchannel serve`` started here; its generations and servers marked, killed at the end."""

    def __init__(self, tmp: Path, serve_args: Sequence[str], command: Sequence[str]) -> None:
        self.tmp = tmp
        self.port = _free_port()
        self.pidfile = tmp / "app.pid"
        self.control = tmp / "app.ctl"
        self.marker = uuid.uuid4().hex
        self.log = tmp / "serve.log"
        self.argv = [
            *(sys.executable, "-m", "fdchannel", "serve"),
            *("--listen", f"http=tcp:127.0.0.1:{self.port}"),
            *("--pidfile", str(self.pidfile), "--control", str(self.control)),
            *serve_args,
            "--",
            *command,
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Service:
        env = {**os.environ, MARKER: self.marker, "PYTHONUNBUFFERED": "1"}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            print(self.output())  # pytest shows it with the failure
        left = marked(self.marker)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(TIMEOUT)
        for pid in left:
            assert wait_gone(pid), f"pid {pid} outlived SIGKILL"
        if exc[0] is None:
            assert not left, f"processes left behind: {left}\n{self.output()}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def serving(self, path: str = "/") -> bytes:
        """Wait until the first generation serves (its pidfile is written at ready())."""
        deadline = time.monotonic() + TIMEOUT
        assert self.process is not None
        while not self.pidfile.exists():
            if self.process.poll() is not None:
                pytest.fail(f"fdchannel serve exited {self.process.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"fdchannel serve did not serve in time:\n{self.output()}")
            time.sleep(0.02)
        return get(("127.0.0.1", self.port), path)

    def generation(self) -> int:
        return int(self.pidfile.read_text().split()[0])

    def stop(self, pid: int) -> int | None:
        """SIGTERM to a generation: its exit status if it is our child, once gone."""
        os.kill(pid, signal.SIGTERM)
        assert self.process is not None
        if pid == self.process.pid:
            return self.process.wait(TIMEOUT)
        assert wait_gone(pid), f"generation {pid} did not stop"
        return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def peer(tmp: Path, *args: str) -> list[str]:
    script = tmp / "peer.py"
    script.write_text(PEER)
    return [sys.executable, str(script), *args]


@pytest.mark.parametrize("loop", LOOPS)
def test_the_server_gets_its_sockets_by_socket_activation(sockdir: Path, loop: str) -> None:
    ready = ["--ready", "http://{ready}/", "--loop", loop]
    with Service(sockdir, ready, peer(sockdir, "--code", "7")) as service:
        seen = json.loads(service.serving())
        assert seen["env"] == {
            "LISTEN_PID": str(seen["pid"]),  # its own pid: sd_listen_fds believes it
            "LISTEN_FDS": "2",
            "LISTEN_FDNAMES": "http:ready",
            "NOTIFY_SOCKET": None,
            "FDCHANNEL_UPGRADE": None,
        }
        assert seen["fds"]["3"] == str(("127.0.0.1", service.port))
        assert seen["fds"]["4"].endswith("/ready")
        assert seen["pgid"] == seen["pid"]  # a process group of its own
        assert sorted(seen["fds"]) == ["3", "4"]  # nothing else leaked into it
        # SIGTERM goes on to the server; the generation exits with its status.
        assert service.stop(service.generation()) == 7
        assert wait_gone(seen["pid"])
        assert not (sockdir / "app.ctl").exists()
        assert not [p for p in sockdir.iterdir() if p.name.startswith(".fdchannel-serve-")]


def test_the_server_gets_its_sockets_by_its_command_line(sockdir: Path) -> None:
    command = peer(sockdir, "--fds", "{http},{ready}")
    with Service(sockdir, ["--ready", "http://{ready}/"], command) as service:
        seen = json.loads(service.serving())
        assert seen["env"]["LISTEN_FDS"] is None
        assert seen["env"]["LISTEN_PID"] is None
        assert sorted(seen["fds"]) == ["3", "4"]
        assert service.stop(service.generation()) == 0


@pytest.mark.parametrize(
    ("name", "how", "status"),
    [
        ("forwarded", ["--forward", "USR1"], 1),  # the peer exits 0 + 1 on SIGUSR1
        ("exits-by-itself", [], 5),
    ],
)
def test_the_generation_exits_with_the_servers_status(
    sockdir: Path, name: str, how: list[str], status: int
) -> None:
    with Service(sockdir, ["--ready", "http://{ready}/", *how], peer(sockdir)) as service:
        service.serving()
        assert service.process is not None
        if name == "forwarded":
            service.process.send_signal(signal.SIGUSR1)
        else:
            get(("127.0.0.1", service.port), "/exit")
        assert service.process.wait(TIMEOUT) == status
        assert "exited while serving" in service.output() or name == "forwarded"


def test_a_server_that_ignores_its_stop_signal_is_killed_after_the_drain_timeout(
    sockdir: Path,
) -> None:
    args = ["--ready", "http://{ready}/", "--drain-timeout", "0.5"]
    with Service(sockdir, args, peer(sockdir, "--term", "ignore")) as service:
        seen = json.loads(service.serving())
        assert service.stop(service.generation()) == 128 + signal.SIGKILL
        assert wait_gone(seen["pid"])
        assert "did not stop within 0.5 s" in service.output()


def test_a_server_dies_with_its_generation(sockdir: Path) -> None:
    """SIGKILL to the generation: the kernel sends its server the stop signal (pdeathsig)."""
    args = ["--ready", "http://{ready}/", "--stop-signal", "USR1"]
    with Service(sockdir, args, peer(sockdir)) as service:
        seen = json.loads(service.serving())
        assert service.process is not None
        service.process.kill()
        service.process.wait(TIMEOUT)
        assert wait_gone(seen["pid"])


def test_a_server_that_cannot_start_fails_the_generation(sockdir: Path) -> None:
    args = ["--ready", "http://{ready}/", "--ready-timeout", "5"]
    command = [sys.executable, "-c", "import sys; print('no config here', file=sys.stderr); 1/0"]
    with Service(sockdir, args, command) as service:
        assert service.process is not None
        assert service.process.wait(TIMEOUT) == 1
        out = service.output()
        assert "exited (exit status 1)) before ready" in out
        assert "its last lines on stderr:" in out
        assert "ZeroDivisionError: division by zero" in out


def test_a_new_generation_that_exits_on_probation_is_rolled_back(sockdir: Path) -> None:
    """The old server stops at the commit; the new one exits during the probation: the old
    generation starts a fresh server, checks it and serves again; the next upgrade sticks."""
    args = ["--ready", "http://{ready}/", "--probation", "3"]
    with Service(sockdir, args, peer(sockdir)) as service:
        old = json.loads(service.serving())["pid"]
        first = service.generation()
        crashed: list[int] = []

        def crash_the_new_server(interim: dict[str, Any]) -> None:
            # Once the old server is gone, only the new one accepts: /exit reaches it.
            assert wait_gone(old)
            crashed.append(json.loads(get(("127.0.0.1", service.port), "/exit"))["pid"])

        with pytest.raises(UpgradeFailed, match="rolled back: the new generation"):
            request_upgrade(service.control, timeout=TIMEOUT, on_probation=crash_the_new_server)
        fresh = json.loads(get(("127.0.0.1", service.port)))["pid"]
        assert fresh not in (old, *crashed) and len(crashed) == 1
        assert service.generation() == first
        assert "rolled back: starting the server again" in service.output()
        # By the control socket: the new generation, leaving on probation, left its file.
        reply = request_upgrade(service.control, timeout=TIMEOUT)
        assert reply["ok"] is True and reply["probation"] == 3
        assert service.process is not None and service.process.wait(TIMEOUT) == 0
        assert wait_gone(fresh)
        assert service.generation() == reply["pid"]
        assert service.stop(reply["pid"]) is None


# ----------------------------------------------------------------------
# gunicorn, upgraded under load.

needs_wrk = pytest.mark.skipif(find_wrk() is None, reason="wrk is not installed")
UPGRADES = 3
RATE = 300
CONNECTIONS = 6
WORKERS = {
    "sync": ["wsgi_app:app"],
    "uvicorn": ["asgi_app:app", "-k", "fdchannel.upgrade.launch_gunicorn.UvicornWorker"],
}


def gunicorn(chdir: Path, *app: str) -> list[str]:
    return [
        *(GUNICORN, "--chdir", str(chdir), "--no-control-socket", "--log-level", "warning"),
        *("--workers", "2", "--graceful-timeout", "10", *app),
    ]


@needs_wrk
@pytest.mark.parametrize(
    ("worker", "loop"),
    [("sync", "asyncio"), ("sync", "uvloop"), ("sync", "trio"), ("uvicorn", "asyncio")],
)
def test_gunicorn_upgrades_under_load_lose_nothing(sockdir: Path, worker: str, loop: str) -> None:
    args = ["--ready", "http://{ready}/healthz", "--loop", loop]
    with Service(sockdir, args, gunicorn(EXAMPLES, *WORKERS[worker])) as service:
        service.serving()
        first = service.generation()
        url = f"http://127.0.0.1:{service.port}/"
        load = start_wrk(url, rate=RATE, seconds=120, connections=CONNECTIONS)
        try:
            replies = [request_upgrade(service.control, timeout=TIMEOUT) for _ in range(UPGRADES)]
        finally:
            measured = finish_wrk(load, timeout=TIMEOUT, stop=True)
        pids = [first, *(reply["pid"] for reply in replies)]
        assert len(set(pids)) == len(pids)
        assert service.generation() == pids[-1]
        assert measured.total_errors == 0, describe(measured)
        assert measured.requests > 0
        for pid in pids[:-1]:
            assert wait_gone(pid), f"replaced generation {pid} did not exit"
        assert service.process is not None and service.process.wait(TIMEOUT) == 0
        service.stop(pids[-1])  # SIGTERM: gunicorn stops gracefully, then the generation


APP = r"""
import os, pathlib

MODE = pathlib.Path(os.environ["SERVE_TEST_MODE"]).read_text().strip()
if MODE == "crash":
    raise RuntimeError("this release is broken")


def app(environ, start_response):
    if environ["PATH_INFO"] == "/healthz" and MODE == "unhealthy":
        start_response("503 Service Unavailable", [("Content-Length", "0")])
        return [b""]
    body = MODE.encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
"""


@pytest.fixture
def release(sockdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The application the next gunicorn loads: healthy, unhealthy or crashing by a file."""
    (sockdir / "release_app.py").write_text(APP)
    mode = sockdir / "mode"
    mode.write_text("ok")
    monkeypatch.setenv("SERVE_TEST_MODE", str(mode))
    return mode


@needs_wrk
@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("unhealthy", "http://{ready}/healthz said: HTTP 503 Service Unavailable"),
        ("crash", "exit status 1)) before ready; its last lines on stderr: Error: this release"),
    ],
)
def test_a_release_that_fails_leaves_the_old_one_serving(
    sockdir: Path, release: Path, mode: str, reason: str
) -> None:
    args = ["--ready", "http://{ready}/healthz", "--ready-timeout", "3"]
    # --preload: each generation's master loads its release once, and the workers it
    # starts later (a replacement, say) are forked from it: they never load another.
    command = gunicorn(sockdir, "--preload", "release_app:app")
    with Service(sockdir, args, command) as service:
        service.serving()
        first = service.generation()
        load = start_wrk(
            f"http://127.0.0.1:{service.port}/", rate=RATE, seconds=120, connections=CONNECTIONS
        )
        try:
            release.write_text(mode)
            with pytest.raises(UpgradeFailed) as failed:
                request_upgrade(service.control, timeout=TIMEOUT)
            release.write_text("ok")
            after = request_upgrade(service.control, timeout=TIMEOUT)
        finally:
            measured = finish_wrk(load, timeout=TIMEOUT, stop=True)
        assert reason in str(failed.value)
        assert after["pid"] != first
        # The failed release's server stopped gracefully: what it took, it answered.
        assert measured.total_errors == 0, describe(measured)
        service.stop(after["pid"])


def test_a_check_on_the_shared_socket_fails_every_upgrade(sockdir: Path) -> None:
    args = ["--ready", "http://{http}/"]
    with Service(sockdir, args, peer(sockdir)) as service:
        service.serving()
        first = service.generation()
        assert "upgrades will fail" in service.output()
        with pytest.raises(UpgradeFailed, match="proves nothing about the new one"):
            request_upgrade(service.control, timeout=TIMEOUT)
        assert service.generation() == first
        assert service.stop(first) == 0


# ----------------------------------------------------------------------
# Under systemd: docs/serve.md's unit.


def serve_unit(tmp: Path, port: int) -> dict[str, str]:
    """docs/serve.md's unit, with this test's paths."""
    pidfile, control = tmp / "app.pid", tmp / "app.ctl"
    fdchannel = f"{sys.executable} -m fdchannel"
    return {
        "fdchannel-test.target": "[Unit]\nDefaultDependencies=no\nWants=app.service\n",
        "app.service": (
            "[Unit]\nDefaultDependencies=no\n"
            "[Service]\nType=notify\nNotifyAccess=main\n"
            f"ExecStart={fdchannel} serve --listen http=tcp:127.0.0.1:{port} "
            f"--pidfile {pidfile} --control {control} --ready 'http://{{ready}}/healthz' "
            f"-- {GUNICORN} --chdir {EXAMPLES} --workers 2 --no-control-socket wsgi_app:app\n"
            f"ExecReload={fdchannel} upgrade {pidfile}\n"
            f"PIDFile={pidfile}\n"
            "TimeoutStopSec=40\n"
            f"StandardOutput=append:{tmp / 'events'}\nStandardError=append:{tmp / 'events'}\n"
        ),
    }


def test_the_unit_follows_each_generation_and_stops_cleanly(
    sockdir: Path, request: pytest.FixtureRequest
) -> None:
    from fdchannel.upgrade.pidfile import read_pid

    from .systemd_manager import Manager, cannot_start, unavailable

    why = unavailable() or cannot_start()
    if why is not None:
        pytest.skip(why)
    port = _free_port()
    with Manager(sockdir, serve_unit(sockdir, port), "fdchannel-test.target") as systemd:
        events = sockdir / "events"
        request.addfinalizer(lambda: print(events.read_text() if events.exists() else ""))
        shown = systemd.wait_for("app.service", ActiveState="active", SubState="running")
        main = int(shown["MainPID"])
        assert main == read_pid(sockdir / "app.pid")
        for _ in range(2):
            systemd.systemctl("reload", "app.service")  # fdchannel upgrade PIDFILE: waits
            pid = read_pid(sockdir / "app.pid")
            assert pid != main
            shown = systemd.wait_for("app.service", MainPID=str(pid), ActiveState="active")
            assert shown["NRestarts"] == "0"
            assert get(("127.0.0.1", port)).startswith(b"hello from pid")
            main = pid
        # SIGTERM to every process of the unit: the generation passes it on to gunicorn's
        # master (which has it already), gunicorn's workers finish their requests.
        systemd.systemctl("stop", "app.service")
        systemd.wait_for("app.service", ActiveState="inactive", Result="success", MainPID="0")
        assert systemd.processes() == {1}
        assert not (sockdir / "app.pid").exists()
