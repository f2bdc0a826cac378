"""``fdchannel relay FROM TO``: a whole handoff carried through it, with progress."""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from .helpers import DEADLINE, Child, cli, run

ROOT = Path(__file__).resolve().parents[2]

#: What ``fdchannel send`` says when the receiver reset the connection.
RESET = "Connection reset by peer"


@pytest.mark.parametrize(("codec", "json"), [("native", True), ("qemu", False)])
def test_relay_carries_a_handoff(codec: str, json: bool, sockdir: Path) -> None:
    front, back = f"unix:{sockdir}/front.sock", f"unix:{sockdir}/back.sock"
    memfd = os.memfd_create("ram0", os.MFD_CLOEXEC)
    try:
        os.write(memfd, b"x" * 5000)
        with (
            Child(cli("probe", "--listen", "--json", "--timeout", "20", back)) as receiver,
            Child(cli("relay", *["--json"] * json, "--timeout", "20", front, back)) as relay,
        ):
            receiver.wait_for("listening on")
            assert relay.wait_for("listening on") == (
                f"fdchannel: listening on {front}, relaying to {back}"
            )
            sent = run(cli("send", "--codec", codec, front, f"ram={memfd}"), pass_fds=[memfd])
            relayed = relay.finish()
            heard = receiver.finish()
    finally:
        os.close(memfd)
    assert sent.returncode == 0, sent.stderr
    assert heard.returncode == 0, heard.stderr
    (entry,) = heard.json()["descriptors"]
    assert entry["description"]["name"] == "ram0" and entry["description"]["size"] == 5000
    assert relayed.returncode == 0, relayed.stderr
    closing = "the sender half-closed first, then the receiver closed (the ack)"
    if json:
        stats = relayed.json()
        assert stats["forward"]["fds"] == 1 and stats["forward"]["ended"]
        assert stats["backward"]["ended"] and stats["backward"]["fds"] == 0
        assert stats["first_to_close"] == "sender"
        assert stats["closing"] == closing
    else:
        summary, how = relayed.stdout.splitlines()
        assert summary.startswith("relayed sender->receiver ")
        assert summary.endswith(", 1 descriptor; receiver->sender 0 B, 0 descriptors")
        assert how == closing
    progress = relayed.stderr.splitlines()[1:]
    assert progress and all(line.startswith("fdchannel: sender->receiver ") for line in progress)
    assert "1 descriptor; receiver->sender" in progress[-1]
    assert progress[-1].endswith(
        "(the sender half-closed first, then the receiver closed (the ack))"
    )


def test_relay_human_summary_and_timeout(sockdir: Path) -> None:
    done = run(cli("relay", "--timeout", "0.3", f"unix:{sockdir}/a.sock", "unix:/nowhere"))
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        f"fdchannel: error: nobody connected to unix:{sockdir}/a.sock within 0.3 s"
    )
    assert len(done.stderr.splitlines()) == 2  # "listening on ..." then the error


def test_a_receiver_reset_is_passed_on_and_reported(sockdir: Path) -> None:
    """The receiver dies with the state unread: the sender's ``fdchannel send`` fails as
    it would directly (a qemu sender would otherwise take the relay's close as its ack),
    and the relay reports the reset and exits 1."""
    front, back = f"unix:{sockdir}/front.sock", f"unix:{sockdir}/back.sock"
    reset_peer = [sys.executable, "-m", "tests.relay_reset_peer", "receiver", "qemu", back]
    memfd = os.memfd_create("ram0", os.MFD_CLOEXEC)
    try:
        with (
            Child(reset_peer, env={**os.environ, "PYTHONPATH": str(ROOT)}) as receiver,
            Child(cli("relay", "--json", "--timeout", "20", front, back)) as relay,
        ):
            receiver.wait_for("listening ", stream="stdout")
            relay.wait_for("listening on")
            sent = run(cli("send", "--codec", "qemu", front, f"ram={memfd}"), pass_fds=[memfd])
            relayed = relay.finish()
            assert receiver.finish().returncode == -signal.SIGKILL
    finally:
        os.close(memfd)
    assert sent.returncode == 1 and RESET in sent.error_line(), sent.stderr
    assert relayed.returncode == 1, relayed.stderr
    stats = relayed.json()
    assert stats["ok"] is False and stats["reset_by"] == "receiver"
    assert stats["closing"] == (
        "the receiver reset the connection (it closed or died with bytes unread); "
        "the relay reset the sender's in turn"
    )


def test_a_relay_that_dies_resets_the_sender(sockdir: Path) -> None:
    """The relay killed while the sender waits for its verdict: its close must not be
    taken for the receiver's ack (the receiver read everything and still holds on)."""
    front, back = f"unix:{sockdir}/front.sock", str(sockdir / "back.sock")
    memfd = os.memfd_create("ram0", os.MFD_CLOEXEC)
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(back)
        listening.listen()
        listening.settimeout(DEADLINE)
        try:
            with Child(cli("relay", "--timeout", "20", front, f"unix:{back}")) as relay:
                relay.wait_for("listening on")
                send = cli("send", "--codec", "qemu", front, f"ram={memfd}")
                with Child(send, pass_fds=[memfd]) as sender:
                    receiver, _ = listening.accept()
                    with receiver:
                        receiver.settimeout(DEADLINE)
                        while receiver.recv(65536):  # the whole state, to the sender's EOF
                            pass
                        relay.kill()
                        sent = sender.finish()
        finally:
            os.close(memfd)
    assert sent.returncode == 1 and RESET in sent.error_line(), sent.stderr
