"""``fdchannel run``: who the main process is (a table through ``MainProcess``), and the
supervisor itself as a child subreaper (no PID namespace needed: tests/upgrade/
test_pid1.py runs it as PID 1)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import subprocess
import sys
import termios
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fdchannel.upgrade.supervisor import (
    FORWARDED,
    Effect,
    Follow,
    Forward,
    Hurry,
    Log,
    MainProcess,
    Stop,
    exit_code,
    status_text,
)

TIMEOUT = 20.0
ME, UID, OTHER_UID = 1, 1000, 1001
#: The fake tree: 2 is CMD (the first main process), 3 and 4 are ours, 50 runs
#: but is not ours, 9 is gone.
OURS = {2, 3, 4}
RUNNING = OURS | {50}


class Tree:
    """``Processes`` for the table."""

    def descendant(self, pid: int) -> bool:
        return pid in OURS

    def alive(self, pid: int) -> bool:
        return pid in RUNNING


def says(sender: int, text: str, uid: int = UID) -> tuple[str, int, int, str]:
    return ("says", sender, uid, text)


def exits(pid: int, status: int | None) -> tuple[str, int, int | None]:
    return ("exit", pid, status)


def gets(signum: signal.Signals) -> tuple[str, int]:
    return ("signal", signum)


def code(n: int) -> int:
    """The wait status of ``exit(n)``."""
    return n << 8


def token(effect: Effect) -> str:
    """An effect as the table writes it; a log's text is matched by a part of it."""
    if isinstance(effect, Log):
        return ("warn:" if effect.important else "log:") + effect.text
    if isinstance(effect, Follow):
        return f"follow {effect.pid}"
    if isinstance(effect, Forward):
        return f"forward {signal.Signals(effect.signum).name} {effect.pid}"
    if isinstance(effect, Stop):
        return "stop"
    assert isinstance(effect, Hurry)
    return "hurry"


@dataclass(frozen=True)
class Case:
    events: list[tuple[object, ...]]
    #: Every effect, in order; "log:TEXT" and "warn:TEXT" match a line holding TEXT.
    effects: list[str]
    main: int = 2
    #: The exit status once the main process ended; None: it has not.
    exit: int | None = None


CASES = {
    "MAINPID moves the main process": Case(
        [says(2, "MAINPID=3\nREADY=1\nSTATUS=pid 3 serves")],
        ["log:pid 2: main process pid 2 -> pid 3; ready; status: pid 3 serves", "follow 3"],
        main=3,
    ),
    "MAINPID of a pid not running": Case(
        [says(2, "MAINPID=9")], ["warn:ignored MAINPID=9 from pid 2: pid 9 is not running"]
    ),
    "MAINPID of a pid not ours": Case(
        [says(2, "MAINPID=50")], ["warn:MAINPID=50 from pid 2: pid 50 is not one of our"]
    ),
    "MAINPID that is no number": Case([says(2, "MAINPID=3x")], ["warn:not a pid it can name"]),
    "MAINPID=0": Case([says(2, "MAINPID=0")], ["warn:not a pid it can name"]),
    "MAINPID naming the supervisor": Case([says(2, "MAINPID=1")], ["warn:not a pid it can name"]),
    "MAINPID of the main process itself": Case([says(2, "MAINPID=2")], []),
    "another user's word": Case(
        [says(2, "MAINPID=3", uid=OTHER_UID)], ["warn:runs as uid 1001, not as ours (1000)"]
    ),
    "root's word": Case([says(2, "MAINPID=3", uid=0)], ["log:pid 2 -> pid 3", "follow 3"], 3),
    "a stranger's word": Case([says(50, "MAINPID=3")], ["warn:pid 50: it is not one of our"]),
    "a sender outside our PID namespace": Case(
        [says(0, "READY=1")], ["warn:pid 0: it is not one of our"]
    ),
    "the supervisor's own word": Case([says(ME, "READY=1")], ["warn:not one of our"]),
    "any process of ours may name the main one": Case(
        [says(4, "MAINPID=3")], ["log:pid 4: main process pid 2 -> pid 3", "follow 3"], 3
    ),
    "a datagram too long": Case([says(2, "STATUS=" + "x" * 5000)], ["warn:longer than 4096 bytes"]),
    "ready once, again after reloading": Case(
        [says(2, "READY=1"), says(2, "READY=1"), says(2, "RELOADING=1"), says(2, "READY=1")],
        ["log:pid 2: ready", "log:pid 2: reloading", "log:pid 2: ready"],
    ),
    "a status when it changes": Case(
        [says(2, "STATUS=a"), says(2, "STATUS=a"), says(2, "STATUS=b\nSTOPPING=1")],
        ["log:status: a", "log:pid 2: stopping; status: b"],
    ),
    "a status escaped": Case([says(2, "STATUS=\x1b[2J")], ["log:status: \\x1b[2J"]),
    "the first of a key counts; other lines are skipped": Case(
        [says(2, "FOO=1\nno equals sign\nSTATUS=a\nSTATUS=b")], ["log:status: a"]
    ),
    "the main process exits": Case(
        [exits(2, code(3))], ["warn:main process pid 2 exited (exit status 3)", "stop"], exit=3
    ),
    "the main process is killed": Case(
        [exits(2, signal.SIGKILL)], ["warn:(killed by SIGKILL)", "stop"], exit=137
    ),
    "the replaced generation exits, then the new one": Case(
        [says(2, "MAINPID=3"), exits(2, code(0)), exits(3, code(4))],
        [
            "log:pid 2 -> pid 3",
            "follow 3",
            "log:pid 2 (replaced) exited (exit status 0)",
            "warn:main process pid 3 exited (exit status 4)",
            "stop",
        ],
        main=3,
        exit=4,
    ),
    "a main process someone else reaped": Case(
        [says(2, "MAINPID=3"), exits(3, None)],
        ["log:pid 2 -> pid 3", "follow 3", "warn:pid 3 exited (status unknown)", "stop"],
        main=3,
        exit=1,
    ),
    "... whose status comes later, its parent gone": Case(
        [says(2, "MAINPID=3"), exits(3, None), exits(3, code(5))],
        ["log:-> pid 3", "follow 3", "warn:status unknown", "stop", "log:pid 3: exit status 5"],
        main=3,
        exit=5,
    ),
    "an orphan exits": Case([exits(4, code(0)), exits(9, None)], []),
    "signals go to the main process of the moment": Case(
        [gets(signal.SIGHUP), says(2, "MAINPID=3"), gets(signal.SIGTERM)],
        [
            "forward SIGHUP 2",
            "log:SIGHUP -> pid 2",
            "log:-> pid 3",
            "follow 3",
            "forward SIGTERM 3",
            "log:SIGTERM -> pid 3",
        ],
        main=3,
    ),
    "a stop follows the main process to its successor (a probation's end)": Case(
        [gets(signal.SIGTERM), says(2, "MAINPID=3"), gets(signal.SIGHUP), says(3, "MAINPID=4")],
        [
            "forward SIGTERM 2",
            "log:SIGTERM -> pid 2",
            "log:-> pid 3",
            "follow 3",
            "forward SIGTERM 3",
            "log:SIGTERM -> pid 3 too",
            "forward SIGHUP 3",
            "log:SIGHUP -> pid 3",
            "log:-> pid 4",
            "follow 4",
            "forward SIGTERM 4",
            "log:SIGTERM -> pid 4 too",
        ],
        main=4,
    ),
    "once over: a stopping signal hurries, nothing else counts": Case(
        [exits(2, code(0)), gets(signal.SIGHUP), gets(signal.SIGINT), says(3, "MAINPID=4")],
        ["warn:exited", "stop", "hurry", "warn:SIGINT again"],
        exit=0,
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_who_the_main_process_is(case: Case) -> None:
    main = MainProcess(2, uid=UID, me=ME)
    effects: list[Effect] = []
    for kind, *args in case.events:
        if kind == "says":
            sender, uid, text = args
            assert isinstance(sender, int) and isinstance(uid, int) and isinstance(text, str)
            effects += main.datagram(sender, uid, text.encode(), Tree())
        elif kind == "exit":
            pid, status = args
            assert isinstance(pid, int) and (status is None or isinstance(status, int))
            effects += main.exited(pid, status)
        else:
            (signum,) = args
            assert isinstance(signum, int)
            effects += main.signalled(signum)
    got = [token(effect) for effect in effects]
    assert len(got) == len(case.effects), got
    for seen, wanted in zip(got, case.effects, strict=True):
        kind, _, text = wanted.partition(":")
        if text:
            assert seen.startswith(kind + ":") and text in seen, got
        else:
            assert seen == wanted, got
    assert main.pid == case.main
    assert main.ended == (case.exit is not None)
    if case.exit is not None:
        assert main.exit_code == case.exit


@pytest.mark.parametrize(
    ("status", "text", "exit"),
    [
        (None, "status unknown", 1),
        (code(0), "exit status 0", 0),
        (code(42), "exit status 42", 42),
        (signal.SIGTERM, "killed by SIGTERM", 143),
        (signal.SIGKILL | 0x80, "killed by SIGKILL", 137),  # and dumped core
    ],
)
def test_wait_statuses(status: int | None, text: str, exit: int) -> None:
    assert status_text(status) == text
    assert exit_code(status) == exit


# ----------------------------------------------------------------------
# The supervisor as a child subreaper.


def supervisor(*args: str, **kw: object) -> subprocess.Popen[str]:
    """``fdchannel run ARGS`` (stdin from /dev/null unless ``kw`` says)."""
    options: dict[str, object] = {"stdin": subprocess.DEVNULL, **kw}
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-m", "fdchannel", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **options,
    )


def finish(process: subprocess.Popen[str], timeout: float = TIMEOUT) -> tuple[int, str, str]:
    """Wait for it (killed after ``timeout``): exit status, stdout, stderr."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"fdchannel run did not exit within {timeout:g} s: {err}")
    return process.returncode, out, err


class Lines:
    """A running supervisor's stdout and stderr, read line by line with a deadline
    (from the descriptors: the text streams' buffers are never used)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.seen: list[str] = []
        self._pending = {"stdout": b"", "stderr": b""}

    def until(self, part: str, stream: str = "stderr", timeout: float = TIMEOUT) -> str:
        """The first line (from now) of ``stream`` holding ``part``."""
        fd = getattr(self.process, stream).fileno()
        deadline = time.monotonic() + timeout
        while True:
            pending = self._pending[stream]
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                self._pending[stream] = pending
                text = line.decode(errors="replace")
                self.seen.append(text)
                if part in text:
                    return text
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            self._pending[stream] += chunk
        pytest.fail(f"no line with {part!r} on {stream}; seen: {self.seen}")


@contextlib.contextmanager
def running(*args: str, **kw: object) -> Iterator[Lines]:
    process = supervisor(*args, **kw)
    try:
        yield Lines(process)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=TIMEOUT)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


@pytest.mark.parametrize(
    ("code", "exit"),
    [("pass", 0), ("import sys; sys.exit(3)", 3), ("import os; os.kill(os.getpid(), 9)", 137)],
    ids=["exit 0", "exit 3", "SIGKILL"],
)
def test_exits_with_the_main_process_status(code: str, exit: int) -> None:
    status, _, err = finish(supervisor("--", *python(code)))
    assert status == exit, err
    assert f"exit status {exit}" in err.splitlines()[-1]


def test_cannot_start(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("echo hi\n")
    script = tmp_path / "script"
    script.write_text("#!/nonexistent/interpreter\n")
    script.chmod(0o755)
    for argv, exit, why in [
        (["fdchannel-no-such-command"], 127, "no such command (PATH searched)"),
        ([str(plain)], 126, "Permission denied"),
        ([str(script)], 126, "its #! line names the interpreter '/nonexistent/interpreter'"),
    ]:
        status, out, err = finish(supervisor("--", *argv))
        assert status == exit, err
        assert out == ""
        assert err.startswith(f"fdchannel run: error: cannot run '{argv[0]}': {why}"), err


@pytest.mark.parametrize("args", [[], ["--"], ["--grace", "0", "x"], ["--grace", "-1", "x"]])
def test_usage_errors(args: list[str]) -> None:
    status, _, err = finish(supervisor(*args))
    assert status == 2, err


def test_what_the_command_inherits() -> None:
    code = """
        import os, signal
        status = dict(line.split(":\\t") for line in open("/proc/self/status").read().splitlines()
                      if line.startswith(("SigBlk", "SigIgn")))
        print(os.environ["NOTIFY_SOCKET"])
        print(sorted(os.listdir("/proc/self/fd")))
        print(os.getpgrp() == os.getpid(), int(status["SigBlk"], 16))
        """
    status, out, err = finish(supervisor("--", *python(code)))
    assert status == 0, err
    notify, fds, rest = out.splitlines()
    assert notify.startswith("@fdchannel-run/")
    assert fds == "['0', '1', '2', '3']"  # 3: the directory listdir read
    assert rest == "True 0"  # a process group of its own, no signal blocked


def ignored_here() -> int:
    """The signals this process ignores, as /proc shows them (bit N-1 for signal N)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("SigIgn:"))
    return int(line.split()[1], 16)


def test_the_command_starts_with_no_signal_ignored() -> None:
    # Python ignores SIGPIPE (the supervisor is Python): sh shows what it inherited.
    # Only signals Python cannot name (glibc's reserved 32 and 33), ignored by
    # whoever started this test, may stay ignored: no Python program can reset them.
    unnamed = sum(1 << (n - 1) for n in range(1, 65) if n not in signal.valid_signals())
    status, out, err = finish(supervisor("--", "sh", "-c", "grep SigIgn /proc/$$/status"))
    assert status == 0, err
    assert out.split() == ["SigIgn:", f"{ignored_here() & unnamed:016x}"]


#: The first generation, once told on stdin, starts the next, names it the main
#: process and exits at once; the next exits 5 on SIGTERM.
HAND_ON = """
    import os, sys
    from fdchannel.upgrade.systemd import notify
    NEXT = "import signal, sys; signal.signal(signal.SIGTERM, lambda *_: sys.exit(5)); "
    NEXT += "print('next', flush=True); signal.pause()"
    print("waiting", flush=True)
    sys.stdin.readline()
    pid = os.posix_spawn(sys.executable, [sys.executable, "-c", NEXT], os.environ)
    notify(MAINPID=pid, READY=1, STATUS=f"pid {pid} serves")
    os._exit(0)
    """


def state(pid: int) -> str:
    """A process's state letter (Z: a zombie), from /proc."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2]


def test_follows_the_main_process_it_is_told() -> None:
    # The supervisor is stopped while the first generation names its successor
    # and exits: on waking it finds the datagram, the exit and SIGCHLD all at
    # once, and must read the datagram first (or it would end the service).
    with running("--", *python(HAND_ON), stdin=subprocess.PIPE) as run:
        first = int(run.until("started").split()[3])
        run.until("waiting", stream="stdout")
        run.process.send_signal(signal.SIGSTOP)
        try:
            assert run.process.stdin is not None
            run.process.stdin.write("go\n")
            run.process.stdin.flush()
            deadline = time.monotonic() + TIMEOUT
            while state(first) != "Z":  # exited; its parent, stopped, has not reaped it
                assert time.monotonic() < deadline, "the first generation did not exit"
                time.sleep(0.01)  # polling /proc, bounded by the deadline
        finally:
            run.process.send_signal(signal.SIGCONT)
        moved = run.until(f"pid {first}: main process pid {first} -> pid ")
        second = int(moved.split("-> pid ")[1].split(";")[0])
        run.until("next", stream="stdout")
        run.until(f"pid {first} (replaced) exited (exit status 0)")
        run.process.send_signal(signal.SIGTERM)
        run.until(f"SIGTERM -> pid {second}")
        run.until(f"main process pid {second} exited (exit status 5)")
        assert run.process.wait(TIMEOUT) == 5


@pytest.mark.parametrize(
    ("pid", "why"),
    [("os.getppid()", "not a pid it can name"), ("1", "is not one of our processes")],
    ids=["the supervisor", "init"],
)
def test_ignores_a_main_process_that_is_not_its_own(pid: str, why: str) -> None:
    code = f"import os; from fdchannel.upgrade.systemd import notify; notify(MAINPID={pid})"
    status, _, err = finish(supervisor("--", *python(code)))
    assert status == 0, err
    assert why in err
    assert "main process pid" in err and "->" not in err


def test_signals_reach_the_main_process() -> None:
    code = """
        import signal, sys
        def heard(signum, frame):
            print(signal.Signals(signum).name, flush=True)
            if signum == signal.SIGTERM:
                sys.exit(0)
        for signum in SIGNALS:
            signal.signal(signum, heard)
        print("ready", flush=True)
        while True:
            signal.pause()
        """.replace("SIGNALS", repr(tuple(int(s) for s in FORWARDED)))
    with running("--", *python(code)) as run:
        run.until("ready", stream="stdout")
        for signum in [*FORWARDED[1:], FORWARDED[0]]:  # SIGTERM last: it ends it
            run.process.send_signal(signum)
            run.until(signum.name, stream="stdout")
        assert run.process.wait(TIMEOUT) == 0


def test_what_is_left_gets_sigterm_then_sigkill() -> None:
    code = """
        import os, signal, sys
        stays = "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); os.write(1, b'+'); time.sleep(60)"
        goes = "import os, time; os.write(1, b'+'); time.sleep(60)"
        pids = []
        for child in (stays, goes):
            read, write = os.pipe()
            pids.append(os.posix_spawn(sys.executable, [sys.executable, "-c", child], os.environ,
                                       file_actions=[(os.POSIX_SPAWN_DUP2, write, 1)]))
            os.close(write)
            os.read(read, 1)  # it runs, its handler set
        print(*pids, flush=True)
        """  # noqa: E501
    started = time.monotonic()
    status, out, err = finish(supervisor("--grace", "0.5", "--", *python(code)))
    assert status == 0, err
    assert "stopping what is left: SIGTERM, SIGKILL after 0.5 s" in err
    assert "SIGKILL to what is left" in err
    assert time.monotonic() - started < TIMEOUT / 2
    for pid in out.split():
        assert not Path(f"/proc/{pid}").exists(), f"pid {pid} outlived the supervisor"


def test_the_terminal_goes_to_the_command() -> None:
    # The supervisor leads a session whose controlling terminal is a pty: a
    # Ctrl-C typed there must reach the command once, and not through the supervisor.
    master, slave = os.openpty()

    def take_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    code = """
        import os, signal, sys
        signal.signal(signal.SIGINT, lambda *_: (print("SIGINT", flush=True), sys.exit(0)))
        print("foreground" if os.tcgetpgrp(0) == os.getpgrp() else "background", flush=True)
        signal.pause()
        """
    try:
        with running(
            "--", *python(code), stdin=slave, start_new_session=True, preexec_fn=take_terminal
        ) as run:
            assert "foreground" in run.until("ground", stream="stdout")
            os.write(master, b"\x03")  # Ctrl-C: SIGINT to the foreground process group
            run.until("SIGINT", stream="stdout")
            assert run.process.wait(TIMEOUT) == 0
            _, err = run.process.communicate(timeout=TIMEOUT)
        assert "SIGINT ->" not in "".join(run.seen) + err
    finally:
        os.close(master)
        os.close(slave)
