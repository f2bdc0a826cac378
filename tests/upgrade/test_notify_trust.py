"""What systemd hears is what was meant: no value starts a notification line.

systemd reads a notification as ``KEY=VALUE`` lines and obeys every line, so
a newline in a value (a failed upgrade's reason is the new generation's
exception text) would let that text say ``STOPPING=1`` or ``MAINPID=`` as the
main process.  It drops a datagram with a NUL or one longer than 4096 bytes
whole, ``READY=1`` with it.  Each test listens on a real datagram socket.
"""

from __future__ import annotations

import socket
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from fdchannel.errors import UpgradeFailed
from fdchannel.upgrade import Upgrader, systemd

#: systemd's NOTIFY_BUFFER_MAX (PIPE_BUF): a longer datagram is ignored whole.
NOTIFY_BUFFER_MAX = 4096
INJECTED = "\nSTOPPING=1\nMAINPID=1\nWATCHDOG=trigger"


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch, sockdir: Path) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's, named by NOTIFY_SOCKET."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(sockdir / "notify"))
        listener.settimeout(10)
        monkeypatch.setenv("NOTIFY_SOCKET", str(sockdir / "notify"))
        yield listener


def heard(listener: socket.socket) -> list[bytes]:
    """One datagram's lines, split as systemd splits them."""
    return listener.recv(65536).split(b"\n")


@pytest.mark.parametrize(
    ("value", "sent"),
    [
        ("a\nSTOPPING=1", "a\\nSTOPPING=1"),
        ("a\rSTOPPING=1", "a\\rSTOPPING=1"),
        ("a\0b", "a\\x00b"),
        ("a\tb", "a\\tb"),
        ("a\x1b[2Jb", "a\\x1b[2Jb"),  # ESC: a terminal sequence in `systemctl status`
        ("a\x0bb\x0cc", "a\\x0bb\\x0cc"),
        ("a\x7fb", "a\\x7fb"),
        ("a\x85b\x9bc", "a\\x85b\\x9bc"),  # C1: NEL, CSI
        ("a\u2028b\u2029c", "a\\u2028b\\u2029c"),
        ("a\udcffb", "a\\xffb"),  # a byte that was not UTF-8 (a path, os.fsdecode'd)
        ("a\u202eb", "a\\u202eb"),  # a bidirectional override
        ("serving" + INJECTED, "serving" + INJECTED.replace("\n", "\\n")),
        ("héllo wörld ✓", "héllo wörld ✓"),  # printable text passes as it is
    ],
)
def test_a_value_is_one_line(notify_socket: socket.socket, value: str, sent: str) -> None:
    assert systemd.notify(READY=1, STATUS=value)
    assert heard(notify_socket) == [b"READY=1", b"STATUS=" + sent.encode()]


@pytest.mark.parametrize(
    "key", ["STATUS\nSTOPPING", "STOPPING=1\nSTATUS", "status", "", "A B", "A=B", "É", "X\0"]
)
def test_a_key_that_is_no_name_is_not_sent(notify_socket: socket.socket, key: str) -> None:
    assert systemd.notify(**{"READY": 1, key: "x", "STATUS": "ok"})
    assert heard(notify_socket) == [b"READY=1", b"STATUS=ok"]


def test_a_long_value_is_cut_so_that_the_rest_is_heard(notify_socket: socket.socket) -> None:
    # Escapes make it longer still, and a multi-byte character must not be cut in half.
    assert systemd.notify(READY=1, STATUS="é\n" * 5000, MAINPID=42)
    datagram = notify_socket.recv(65536)
    assert len(datagram) <= NOTIFY_BUFFER_MAX
    lines = datagram.decode().split("\n")
    assert lines[0] == "READY=1" and lines[2] == "MAINPID=42" and len(lines) == 3
    assert lines[1].startswith("STATUS=é\\né\\n") and lines[1].endswith("...")


#: A new generation that fails its start with a reason that tries to speak for us.
FAILING_GENERATION = textwrap.dedent(
    f"""
    import anyio
    from fdchannel.upgrade import Upgrader

    async def main() -> None:
        async with Upgrader(trigger=None):
            raise RuntimeError("health check failed{INJECTED.encode("unicode_escape").decode()}")

    anyio.run(main)
    """
)


@pytest.mark.anyio
async def test_a_failed_upgrade_reason_cannot_speak_to_systemd(
    notify_socket: socket.socket, sockdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with Upgrader(trigger=None) as up:
        listener = await up.listen("main", f"unix:{sockdir}/app.sock")
        with await up.ready():
            pass
        with pytest.raises(UpgradeFailed, match="health check failed"):
            await up.upgrade([sys.executable, "-c", FAILING_GENERATION])
        await listener.aclose()
    assert heard(notify_socket) == [b"READY=1", b"STATUS=serving (generation 0)"]
    reloading = heard(notify_socket)
    assert reloading[0] == b"RELOADING=1" and reloading[1].startswith(b"MONOTONIC_USEC=")
    assert reloading[2:] == [b"STATUS=upgrading"]
    back = heard(notify_socket)
    assert len(back) == 2 and back[0] == b"READY=1", back
    assert back[1].startswith(b"STATUS=serving; the last upgrade failed: ")
    assert back[1].endswith(b"health check failed" + INJECTED.replace("\n", "\\n").encode())
    notify_socket.setblocking(False)
    with pytest.raises(BlockingIOError):
        notify_socket.recv(65536)  # and nothing more was said
    # Nor does it forge lines in the log.
    failed = [r.getMessage() for r in caplog.records if "upgrade failed" in r.getMessage()]
    assert failed and all("\n" not in message for message in failed), failed
