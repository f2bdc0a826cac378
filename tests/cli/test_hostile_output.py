"""Output never fails a command, and never lets a peer's text drive the terminal.

A name may hold bytes that are not UTF-8, newlines and ESC sequences (so
may the peer's command line, which carries the names).  Human output
escapes them, one report line stays one line, and a strict UTF-8 stdout,
a full disk or a closed pipe never turn an acknowledged handoff into exit
status 1: the status says what happened to the descriptors.  ``--json``
keeps every value exact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import DEADLINE, Child, cli

#: Not UTF-8, a newline that would forge a report line, and a terminal escape.
HOSTILE = b"\xff\x1b[2Jram\nack          forged"
STRICT = {**os.environ, "PYTHONIOENCODING": "utf-8:strict", "LC_ALL": "C.UTF-8"}


def _send(
    uri: str, path: Path, *extra: str, stdout: int | None = subprocess.PIPE
) -> subprocess.CompletedProcess[bytes]:
    argv = [os.fsencode(a) for a in cli("send", *extra, uri)] + [HOSTILE + b"=" + os.fsencode(path)]
    return subprocess.run(
        argv, stdout=stdout, stderr=subprocess.PIPE, env=STRICT, timeout=DEADLINE, check=False
    )


def _no_terminal_controls(text: str) -> None:
    assert "\x1b" not in text
    assert not any(0xDC80 <= ord(c) <= 0xDCFF for c in text)


def test_human_output_escapes_names_and_succeeds(sockdir: Path) -> None:
    uri = f"unix:{sockdir}/cpr.sock"
    with Child(cli("probe", "--listen", "--timeout", "20", uri), env=STRICT) as receiver:
        receiver.wait_for("listening on")
        sent = _send(uri, sockdir)
        done = receiver.finish()
    assert sent.returncode == 0, sent.stderr
    assert done.returncode == 0, done.stderr
    for text in (sent.stdout.decode(), done.stdout):
        _no_terminal_controls(text)
        assert "\\xff\\x1b[2Jram\\nack          forged" in text
    # One descriptor row, and only the real ack line.
    assert [line for line in done.stdout.splitlines() if line.startswith("ack")] == [
        "ack          closed the connection"
    ]
    peer = next(line for line in done.stdout.splitlines() if line.startswith("peer"))
    assert "\\n" in peer and "\\x1b" in peer  # the sender's argv, escaped


def test_json_output_is_exact(sockdir: Path) -> None:
    uri = f"unix:{sockdir}/cpr.sock"
    with Child(cli("probe", "--listen", "--json", "--timeout", "20", uri), env=STRICT) as receiver:
        receiver.wait_for("listening on")
        sent = _send(uri, sockdir, "--json")
        done = receiver.finish()
    name = os.fsdecode(HOSTILE)
    assert sent.returncode == 0, sent.stderr
    assert done.returncode == 0, done.stderr
    assert json.loads(sent.stdout)["descriptors"][0]["name"] == name
    report = json.loads(done.stdout)
    assert report["descriptors"][0]["name"] == name
    assert any(arg.startswith(name + "=") for arg in report["peer"]["argv"])


@pytest.mark.parametrize("where", ["full-disk", "closed"])
def test_lost_output_does_not_fail_an_acknowledged_send(sockdir: Path, where: str) -> None:
    uri = f"unix:{sockdir}/cpr.sock"
    with Child(cli("probe", "--listen", "--json", "--timeout", "20", uri)) as receiver:
        receiver.wait_for("listening on")
        if where == "full-disk":
            with open("/dev/full", "wb") as full:
                sent = _send(uri, sockdir, stdout=full.fileno())
        else:
            read, write = os.pipe()
            os.close(read)  # every write to stdout is EPIPE
            try:
                sent = _send(uri, sockdir, stdout=write)
            finally:
                os.close(write)
        done = receiver.finish()
    assert done.returncode == 0, done.stderr
    assert sent.returncode == 0, sent.stderr
    assert b"Traceback" not in sent.stderr and b"Exception ignored" not in sent.stderr


def test_error_lines_are_escaped(sockdir: Path) -> None:
    argv = [os.fsencode(a) for a in cli("probe", "--listen", "--timeout", "0.2")]
    done = subprocess.run(
        [*argv, b"unix:" + os.fsencode(sockdir) + b"/" + HOSTILE.replace(b"\n", b"")],
        capture_output=True,
        env=STRICT,
        timeout=DEADLINE,
        check=False,
    )
    assert done.returncode == 1
    err = done.stderr.decode()
    _no_terminal_controls(err)
    assert len(err.splitlines()) == 2  # "listening on ..." and the error
    assert sys.executable  # the interpreter ran the command line
