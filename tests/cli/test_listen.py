"""``fdchannel probe --listen``: who the peer is, names and ids, the ack, timeouts."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

import fdchannel

from .helpers import Child, cli, run


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
