"""What an operator reads of an upgrade: the reason a new generation failed, named by
what it did (never by the stream between the two), the same through ``upgrade()``,
``fdchannel upgrade PIDFILE`` and ``fdchannel upgrade CTL`` (text and ``--json``);
and ``fdchannel upgrade --status``: the generation serving, the last upgrade, and
the counts since the service started.

The old generation is an Upgrader in this process (SIGHUP and its control socket
ask it); the new generations are real processes (tests/upgrade/outcome_peer.py,
or a one-line Python program).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from fdchannel.errors import UpgradeFailed
from fdchannel.upgrade import Upgrader, pidfile as pidfiles
from fdchannel.upgrade.stderr import Relay, Tail, last_words
from fdchannel.upgrade.wait_status import UNKNOWN, fate

from .harness import TIMEOUT, wait_gone

PEER = Path(__file__).with_name("outcome_peer.py")
PYTHON = sys.executable


def peer(sockdir: Path, mode: str, *args: str) -> list[str]:
    """outcome_peer.py as the next generation of a server listening on ``app.sock``."""
    return [PYTHON, str(PEER), mode, "--listen", f"unix:{sockdir}/app.sock", *args]


@dataclass(frozen=True)
class Case:
    """A new generation that fails, and the reason that must name what it did."""

    command: Sequence[str]
    #: The reason after "the new generation (pid N) " (a regular expression).
    did: str
    ready_timeout: float = 30.0
    probation: float = 0.0


#: The program text of each one-line new generation (``python -c``).
IMPORT = "import fdchannel_no_such_module"
EXIT_3 = (
    "import os; os.write(2, b'reading /etc/app.conf\\nno \\x1b[1mconfig\\xff here\\n'); "
    "raise SystemExit(3)"
)
#: No core file: the kernel's core pattern might keep one (or hand it to a slow helper).
SEGV = (
    "import os, resource, signal; resource.setrlimit(resource.RLIMIT_CORE, (0, 0)); "
    "os.kill(os.getpid(), signal.SIGSEGV)"
)

CASES = {
    "import-error": Case(
        [PYTHON, "-c", IMPORT],
        r"exited with status 1 before ready\(\): "
        r"ModuleNotFoundError: No module named 'fdchannel_no_such_module'",
    ),
    "exit-3": Case(
        [PYTHON, "-c", EXIT_3],
        # The last lines, escaped: the terminal's escape and the byte that is no UTF-8.
        r"exited with status 3 before ready\(\): "
        r"reading /etc/app\.conf \| no \\x1b\[1mconfig\\xff here",
    ),
    "sigsegv": Case([PYTHON, "-c", SEGV], r"was killed by SIGSEGV before ready\(\)(: .+)?"),
    "exit-after-listening": Case(
        ["{peer}", "exit"],
        r"exited with status 4 before ready\(\): "
        r"reading the configuration \| giving up: \\x1b\[31mno\\xff config",
    ),
    "never-ready": Case(
        ["{peer}", "never-ready"],
        r"did not call ready\(\) within 0\.5 s(; its stderr ended: waiting for the database)?",
        ready_timeout=0.5,
    ),
    "raises": Case(["{peer}", "raise"], r"failed its start: no database at db\.internal:5432"),
    "rolled-back": Case(
        ["{peer}", "crash-after-ready"],
        r"exited with status 3, \d+ ms after ready\(\): crashing on purpose",
        probation=30,
    ),
}


def command(case: Case, sockdir: Path) -> list[str]:
    if case.command[0] == "{peer}":
        return peer(sockdir, *case.command[1:])
    return list(case.command)


def pattern(case: Case) -> str:
    prefix = "rolled back: " if case.probation else ""
    return rf"{prefix}the new generation \(pid (?P<pid>\d+)\) {case.did}"


async def fdchannel(*args: str) -> subprocess.CompletedProcess[str]:
    """The command line, in a thread: the server it asks runs on this event loop."""
    run = partial(
        subprocess.run,
        [PYTHON, "-m", "fdchannel", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
    )
    done: subprocess.CompletedProcess[str] = await anyio.to_thread.run_sync(run)
    return done


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The reason in ``fdchannel: error: REASON``, the command's last line on stderr."""
    last = done.stderr.splitlines()[-1]
    assert last.startswith("fdchannel: error: "), done
    return last.removeprefix("fdchannel: error: ")


@pytest.mark.anyio
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_a_failed_upgrade_says_what_the_new_generation_did(sockdir: Path, case: Case) -> None:
    pidfile, control = sockdir / "app.pid", sockdir / "app.ctl"
    reasons: list[str] = []
    documents: list[dict[str, Any]] = []
    upgrader = Upgrader(  # SIGHUP asks too
        pidfile=pidfile,
        control=control,
        command=command(case, sockdir),
        ready_timeout=case.ready_timeout,
        probation=case.probation,
    )
    async with upgrader as up:
        await up.listen("main", f"unix:{sockdir}/app.sock")
        with await up.ready():
            pass
        with anyio.fail_after(TIMEOUT), pytest.raises(UpgradeFailed) as failed:
            await up.upgrade()
        reasons.append(str(failed.value))
        for target in (str(pidfile), str(control)):
            text = await fdchannel("upgrade", target)
            assert (text.returncode, text.stdout) == (1, ""), text
            reasons.append(error_line(text))
            as_json = await fdchannel("upgrade", "--json", target)
            assert as_json.returncode == 1, as_json
            documents.append(json.loads(as_json.stdout))
            reasons.append(documents[-1]["error"]["message"])
        assert not up.replaced and pidfiles.read_pid(pidfile) == os.getpid()
    for reason in reasons:
        assert re.fullmatch(pattern(case), reason), reason
        assert "Stream" not in reason and "fd:" not in reason and "reset" not in reason
    by_pidfile, by_control = documents
    assert by_pidfile.keys() == by_control.keys()
    for document, reason in zip(documents, reasons[2::2], strict=True):
        found = re.fullmatch(pattern(case), reason)
        assert found is not None
        assert document["ok"] is False and document["pid"] == int(found["pid"])
        assert document["generation"] == 1 and document["seconds"] > 0
        kind = "UpgradeRolledBack" if case.probation else "UpgradeFailed"
        assert document["error"]["type"] == kind and isinstance(failed.value, UpgradeFailed)
        assert document.get("rolled_back", False) is (case.probation > 0)


UPGRADED = r"upgraded: pid (?P<pid>\d+) serves now \(generation (?P<generation>\d+)\), in [\d.]+ ms"


@pytest.mark.anyio
async def test_both_ways_of_asking_print_the_same_outcome(sockdir: Path) -> None:
    pidfile, control = sockdir / "app.pid", sockdir / "app.ctl"
    serving = peer(sockdir, "serve", "--pidfile", str(pidfile), "--control", str(control))
    async with Upgrader(pidfile=pidfile, control=control, command=serving) as up:
        await up.listen("main", f"unix:{sockdir}/app.sock")
        with await up.ready():
            pass
        first = await fdchannel("upgrade", str(pidfile))  # SIGHUP to this process
        with anyio.fail_after(TIMEOUT):
            pid = await up.wait_replaced()
    # Our child: reaped here once it is replaced in turn.
    reaping = partial(os.waitpid, pid, 0)
    texts = [first, await fdchannel("upgrade", str(control))]
    documents = [await fdchannel("upgrade", "--json", str(t)) for t in (pidfile, control)]
    assert await anyio.to_thread.run_sync(reaping) == (pid, 0)
    for done in [*texts, *documents]:
        assert done.returncode == 0, done
    found = [re.fullmatch(UPGRADED, done.stdout.strip()) for done in texts]
    assert [int(f["generation"]) for f in found if f] == [1, 2]
    by_pidfile, by_control = (json.loads(done.stdout) for done in documents)
    assert by_pidfile.keys() == by_control.keys()
    assert (by_pidfile["generation"], by_control["generation"]) == (3, 4)
    assert by_pidfile["seconds"] > 0 and by_control["seconds"] > 0
    assert by_pidfile["ok"] is by_control["ok"] is True
    last = by_control["pid"]
    os.kill(last, signal.SIGTERM)  # the service ends: its last generation leaves
    assert wait_gone(last)
    assert not pidfile.exists()


# ----------------------------------------------------------------------
# --status


async def status(pidfile: Path, control: Path) -> dict[str, Any]:
    """``--status`` through the pidfile and the control socket, as text and JSON: the
    same either way; the JSON document."""
    documents: list[dict[str, Any]] = []
    texts: list[str] = []
    for target in (str(pidfile), str(control)):
        text = await fdchannel("upgrade", "--status", target)
        assert text.returncode == 0, text
        texts.append(text.stdout)
        as_json = await fdchannel("upgrade", "--status", "--json", target)
        assert as_json.returncode == 0, as_json
        documents.append(json.loads(as_json.stdout))
    by_pidfile, by_control = documents
    # The start time is read from the pidfile by one, from the process by the other.
    started = [datetime.fromisoformat(d.pop("started")) for d in documents]
    assert abs((started[0] - started[1]).total_seconds()) <= 1
    assert by_pidfile == by_control
    document = by_pidfile
    lines = texts[0].splitlines()
    assert lines[0].startswith(f"generation {document['generation']}: pid {document['pid']}, ")
    counts = document["counts"]
    assert lines[-1].startswith("upgrades since the service started (")
    assert lines[-1].endswith(
        f"): {counts['ok']} ok, {counts['failed']} failed, "
        f"{counts['rolled_back']} rolled back, {counts['refused']} refused"
    )
    assert [line.split(", started")[0] for line in texts[1].splitlines()] == [
        line.split(", started")[0] for line in lines
    ]
    return document


def counted(ok: int = 0, failed: int = 0, rolled_back: int = 0) -> dict[str, int]:
    return {"ok": ok, "failed": failed, "rolled_back": rolled_back, "refused": 0}


@pytest.mark.anyio
async def test_status_tells_the_generation_the_last_upgrade_and_the_counts(
    sockdir: Path,
) -> None:
    pidfile, control = sockdir / "app.pid", sockdir / "app.ctl"
    serving = peer(sockdir, "serve", "--pidfile", str(pidfile), "--control", str(control))
    async with Upgrader(trigger=None, pidfile=pidfile, control=control, probation=0.5) as up:
        await up.listen("main", f"unix:{sockdir}/app.sock")
        with await up.ready():
            pass
        first = await status(pidfile, control)
        assert (first["pid"], first["generation"], first["last"]) == (os.getpid(), 0, None)
        assert first["counts"] == counted() and first["probation"] is None

        with anyio.fail_after(TIMEOUT), pytest.raises(UpgradeFailed) as failed:
            await up.upgrade([PYTHON, "-c", IMPORT])
        after_failure = await status(pidfile, control)
        assert after_failure["counts"] == counted(failed=1)
        last = after_failure["last"]
        assert (last["ok"], last["error"], last["generation"]) == (False, str(failed.value), 1)

        with anyio.fail_after(TIMEOUT), pytest.raises(UpgradeFailed) as rolled:
            await up.upgrade(peer(sockdir, "crash-after-ready"))
        after_rollback = await status(pidfile, control)
        assert after_rollback["counts"] == counted(failed=1, rolled_back=1)
        assert after_rollback["last"]["rolled_back"] is True
        assert after_rollback["last"]["error"] == str(rolled.value)
        assert after_rollback["pid"] == os.getpid()

        with anyio.fail_after(TIMEOUT):
            result = await up.upgrade(serving)
        # The new generation answers on the control socket now; the pidfile names it.
        after_upgrade = await status(pidfile, control)
        assert (after_upgrade["pid"], after_upgrade["generation"]) == (result.pid, 1)
        assert after_upgrade["counts"] == counted(ok=1, failed=1, rolled_back=1)
        last = after_upgrade["last"]
        assert last["ok"] is True and (last["pid"], last["generation"]) == (result.pid, 1)
        assert last["seconds"] == result.seconds
        assert after_upgrade["service_started"] == first["service_started"]
        text = (await fdchannel("upgrade", "--status", str(control))).stdout
        assert f"upgraded: pid {result.pid} serves now (generation 1), in " in text
    # A restart of the service: its last generation stops, a first one starts anew.
    os.kill(result.pid, signal.SIGTERM)  # our child, not reaped yet: the pid is its own
    assert await anyio.to_thread.run_sync(os.waitpid, result.pid, 0) == (result.pid, 0)
    assert not pidfile.exists()
    async with Upgrader(trigger=None, pidfile=pidfile, control=control) as up:
        await up.listen("main", f"unix:{sockdir}/app.sock")
        with await up.ready():
            pass
        fresh = await status(pidfile, control)
        assert (fresh["pid"], fresh["generation"], fresh["last"]) == (os.getpid(), 0, None)
        assert fresh["counts"] == counted()
        assert fresh["service_started"] != first["service_started"]
        with anyio.fail_after(TIMEOUT), pytest.raises(UpgradeFailed):
            await up.upgrade([PYTHON, "-c", IMPORT])
        # The requests are numbered anew too.
        assert pidfiles.read_status(pidfile)["attempt"] == 1
        assert (await status(pidfile, control))["counts"] == counted(failed=1)


# ----------------------------------------------------------------------
# The parts: what is kept of a new generation's stderr, and how its end is told.

TRACEBACK = ["Traceback (most recent call last):", '  File "app.py", line 1, in <module>']
LAST_WORDS = {
    "plain": (["starting", "no config"], ["starting", "no config"]),
    "the last three": (["a", "b", "c", "d"], ["b", "c", "d"]),
    "a traceback": (
        [*TRACEBACK, "    import foo", "ModuleNotFoundError: No module named 'foo'"],
        ["ModuleNotFoundError: No module named 'foo'"],
    ),
    "a chain": (
        [
            *TRACEBACK,
            "KeyError: 'db'",
            "During handling of the above exception, another",
            *TRACEBACK,
        ],
        [],
    ),
    "a chain's last": (
        [*TRACEBACK, "KeyError: 'db'", *TRACEBACK, "    connect()", "RuntimeError: no database"],
        ["RuntimeError: no database"],
    ),
    "its head cut off": (
        ['  File "db.py", line 9, in connect', "    ^^^^^^", "ConnectionRefusedError: [Errno 111]"],
        ["ConnectionRefusedError: [Errno 111]"],
    ),
}


@pytest.mark.parametrize(("lines", "words"), LAST_WORDS.values(), ids=LAST_WORDS.keys())
def test_the_last_words_of_a_traceback_are_its_exception(
    lines: list[str], words: list[str]
) -> None:
    assert last_words(lines) == words


@pytest.mark.parametrize(
    ("status", "text"),
    [
        (0, "exited with status 0"),
        (3 << 8, "exited with status 3"),
        (signal.SIGSEGV, "was killed by SIGSEGV"),
        (UNKNOWN, "exited (status unknown)"),
    ],
)
def test_how_a_process_ended(status: int, text: str) -> None:
    assert fate(status) == text


def test_the_lines_kept_are_escaped() -> None:
    tail = Tail()
    tail.feed(b"no \x1b[31mconfig\xff here\r\n\n  \nhalf a \x07line")
    assert tail.lines() == ["no \\x1b[31mconfig\\xff here", "half a \\x07line"]


def test_a_pipe_nothing_writes_to_any_more_is_relayed_without_a_thread() -> None:
    read, write = os.pipe2(os.O_CLOEXEC)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.write(write, b"the last words\n")
        os.close(write)
        threads = threading.active_count()
        Relay(read, null).start_unless_done()  # closes the pipe (the leak check sees it)
        assert threading.active_count() == threads
    finally:
        os.close(null)


@pytest.mark.anyio
async def test_the_new_generation_s_stderr_reaches_the_old_one_s(
    sockdir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    async with Upgrader(trigger=None, command=peer(sockdir, "exit")) as up:
        await up.listen("main", f"unix:{sockdir}/app.sock")
        with await up.ready():
            pass
        with anyio.fail_after(TIMEOUT), pytest.raises(UpgradeFailed):
            await up.upgrade()
    # Relayed as it was written (the escaping is for the reason only).
    assert "reading the configuration\ngiving up: \x1b[31mno" in capfd.readouterr().err


def test_status_asks_for_nothing_to_start(sockdir: Path) -> None:
    done = subprocess.run(
        [PYTHON, "-m", "fdchannel", "upgrade", "--status", str(sockdir / "app.ctl"), "--cwd", "/"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 2 and "--status asks for nothing to start" in done.stderr, done
