"""``fdchannel relay FROM TO``: a whole handoff carried through it, with progress."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .helpers import Child, cli, run


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
