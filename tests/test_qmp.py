"""QEMU's monitor protocol without I/O (``fdchannel.qemu.qmp``), and the monitor
drivers and ``check_qemu`` of both layers against a real QEMU.

The host's QEMU (Debian 12's 7.2) has no cpr-transfer: ``check_qemu`` must
say so, from its own greeting, in either layer.  The updates themselves run
against QEMU 10.0 and 11.1 in ``tests/interop/test_qemu_update.py``.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

import fdchannel
from fdchannel import ProtocolError, QemuError, QmpError, blocking
from fdchannel.protocol.qemu_update import _listening
from fdchannel.qemu.qmp import MAX_LINE, MISSING, QmpSession

GREETING = {
    "QMP": {"version": {"qemu": {"major": 10, "minor": 0, "micro": 13}}, "capabilities": []}
}


def line(message: object) -> bytes:
    return json.dumps(message).encode() + b"\n"


def greeted() -> QmpSession:
    session = QmpSession("the QEMU")
    session.receive_data(line(GREETING))
    return session


def test_the_greeting_gives_the_version() -> None:
    session = QmpSession()
    with pytest.raises(QemuError, match="no QMP greeting"):
        _ = session.version
    session.receive_data(line(GREETING))
    assert session.version == (10, 0, 13)


def test_each_command_has_its_own_id_and_one_line() -> None:
    session = greeted()
    first, data = session.request("query-status")
    second, other = session.request("getfd", {"fdname": "cpr"})
    assert first != second
    assert json.loads(data) == {"execute": "query-status", "id": first}
    assert json.loads(other) == {"execute": "getfd", "id": second, "arguments": {"fdname": "cpr"}}
    assert data.endswith(b"\n") and data.count(b"\n") == 1


#: A reply as QEMU sends it -> what ``reply`` gives or raises.
REPLIES: dict[str, tuple[dict[str, object], object]] = {
    "a value": ({"return": {"status": "running"}}, {"status": "running"}),
    "nothing": ({"return": {}}, {}),
    "an error": (
        {"error": {"class": "CommandNotFound", "desc": "The command x has not been found"}},
        QmpError,
    ),
}


@pytest.mark.parametrize("case", list(REPLIES))
def test_a_reply_is_the_commands_by_its_id(case: str) -> None:
    sent, expected = REPLIES[case]
    session = greeted()
    ident, _ = session.request("x")
    assert session.reply(ident) is MISSING
    session.receive_data(line({**sent, "id": ident}))
    if expected is QmpError:
        with pytest.raises(QmpError) as raised:
            session.reply(ident)
        assert (raised.value.command, raised.value.error_class) == ("x", "CommandNotFound")
        assert "has not been found" in str(raised.value)
    else:
        assert session.reply(ident) == expected


def test_lines_split_anywhere_and_events_come_in_between() -> None:
    session = greeted()
    ident, _ = session.request("migrate")
    stop = {"event": "STOP", "timestamp": {"seconds": 100, "microseconds": 250000}}
    resume = {"event": "RESUME", "timestamp": {"seconds": 100, "microseconds": 253000}, "data": {}}
    data = line(stop) + line({"return": {}, "id": ident}) + line(resume)
    for i in range(0, len(data), 7):
        session.receive_data(data[i : i + 7])
    assert session.reply(ident) == {}
    found = session.event(["RESUME"])
    assert found is not None and found.name == "RESUME"
    assert found.timestamp == pytest.approx(100.253)
    assert session.event(["RESUME"]) is None
    stopped = session.event(["STOP", "RESUME"])
    assert stopped is not None and stopped.timestamp == pytest.approx(100.25)


def test_a_closed_monitor_answers_nothing_more() -> None:
    session = greeted()
    ident, _ = session.request("quit")
    session.receive_data(b"")
    with pytest.raises(QemuError, match="closed its monitor before answering quit"):
        session.reply(ident)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"not json\n", "no JSON"),
        (b"[1, 2]\n", "list, not an object"),
        (b"x" * (MAX_LINE + 1), "longer than"),
    ],
)
def test_what_is_no_qmp_is_a_protocol_error(data: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        greeted().receive_data(data)


def test_a_listening_abstract_name_is_seen_without_connecting() -> None:
    name = f"fdchannel-test-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(b"\0" + name.encode())
        assert not _listening(name)  # bound, not listening yet
        sock.listen(1)
        assert _listening(name)
    assert not _listening(name)


# --- a real QEMU: the host's 7.2 -------------------------------------------------------------

QEMU = shutil.which("qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(
    QEMU is None, reason="no qemu-system-x86_64 (make test installs it)"
)


@pytest.fixture
def old_qemu(sockdir: Path) -> Iterator[tuple[str, int]]:
    """The host's QEMU with its QMP monitor on a socket we bound first (so it is
    there before QEMU starts): its path and QEMU's pid."""
    assert QEMU is not None
    path = str(sockdir / "qmp.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)
        command = [QEMU, "-machine", "pc", "-accel", "tcg", "-m", "64", "-nodefaults"]
        command += ["-display", "none", "-S", "-mon", "chardev=m,mode=control"]
        command += ["-chardev", f"socket,id=m,fd={listener.fileno()},server=on,wait=off"]
        process = subprocess.Popen(command, pass_fds=[listener.fileno()], stdin=subprocess.DEVNULL)
    try:
        yield path, process.pid
    finally:
        process.kill()
        process.wait(10)


EXPECTED_PROBLEM = "has no cpr-transfer (QEMU 10.0 and later)"


@needs_qemu
@pytest.mark.anyio
@pytest.mark.parametrize("layer", ["async", "blocking"])
async def test_check_says_why_an_old_qemu_cannot_be_updated(
    old_qemu: tuple[str, int], layer: str
) -> None:
    path, pid = old_qemu
    with anyio.fail_after(30):
        if layer == "async":
            report = await fdchannel.check_qemu(path, timeout=20)
        else:
            report = await anyio.to_thread.run_sync(lambda: blocking.check_qemu(path, timeout=20))
    assert report.result == "not-ready" and not report.ok
    assert report.old_pid == pid
    assert report.old_version is not None and report.old_version.startswith("7.2.")
    assert len(report.problems) == 1 and EXPECTED_PROBLEM in report.problems[0]
    assert report.reason == report.problems[0]
    assert report.as_json()["result"] == "not-ready"


@pytest.mark.anyio
async def test_check_on_a_socket_nobody_serves_says_so(sockdir: Path) -> None:
    report = await fdchannel.check_qemu(str(sockdir / "missing.sock"), timeout=5)
    assert report.result == "not-ready"
    assert "cannot reach the QEMU's QMP socket" in (report.reason or "")


@needs_qemu
@pytest.mark.anyio
async def test_an_update_of_a_qemu_without_cpr_transfer_fails_untouched(
    old_qemu: tuple[str, int], sockdir: Path
) -> None:
    """Refused before the new QEMU starts: nothing to roll back, no log written."""
    path, _ = old_qemu
    with anyio.fail_after(30):
        report = await fdchannel.update_qemu(path, ["false"], timeout=20, log=str(sockdir / "log"))
    assert report.result == "failed" and report.new_pid is None
    assert EXPECTED_PROBLEM in (report.reason or "")
    assert not (sockdir / "log").exists()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: blocking.update_qemu("x", []), "command line is empty"),
        (lambda: blocking.update_qemu("x", ["q"], mode="normal"), "mode 'normal'"),
        (lambda: blocking.update_qemu("x", ["q"], timeout=0), "positive number"),
        (lambda: blocking.check_qemu("x", mode="normal"), "mode 'normal'"),
    ],
)
def test_bad_arguments_are_value_errors_before_anything_happens(call: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()  # type: ignore[operator]
