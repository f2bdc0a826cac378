"""``recv -- CMD`` acknowledges only once CMD has started.

A CMD that exists and is executable but cannot be executed makes the
handoff fail for the sender too: the native codec's sender reads the
refusal with the reason, naming the file really at fault; a qemu-codec
sender is never acknowledged and gives up at its own timeout.  Either way
it keeps its descriptors (exit status 1), and no watcher is left behind.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .helpers import Child, cli, run


def _garbage(tmp: Path) -> tuple[Path, str]:
    path = tmp / "garbage"
    path.write_bytes(b"\x00\x01\x02 not a program\n")
    return path, "not a format this machine can run"


def _script_of_garbage(tmp: Path) -> tuple[Path, str]:
    interp, _ = _garbage(tmp)
    path = tmp / "script"
    path.write_text(f"#!{interp}\necho never\n")
    return path, f"its #! line names the interpreter {str(interp)!r}"


#: Executables that pass recv's checks and still cannot be executed.
UNRUNNABLE: dict[str, Callable[[Path], tuple[Path, str]]] = {
    "enoexec": _garbage,
    "interpreter-enoexec": _script_of_garbage,
}


def _left_behind(sockdir: Path, within: float = 5.0) -> list[int]:
    """Processes still naming ``sockdir`` on their command line (a watcher is a
    fork of recv) once ``within`` seconds have passed, or none sooner."""
    deadline = time.monotonic() + within
    while True:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as file:
                        if os.fsencode(sockdir) in file.read():
                            found.append(int(entry))
                except OSError:
                    continue
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)  # polling a process table, bounded by the deadline


def _executable(path: Path) -> None:
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.mark.parametrize("codec", ["native", "qemu"])
@pytest.mark.parametrize("case", UNRUNNABLE)
def test_unrunnable_command_is_never_acknowledged(sockdir: Path, case: str, codec: str) -> None:
    program, why = UNRUNNABLE[case](sockdir)
    for made in sockdir.iterdir():
        _executable(made)
    uri = f"unix:{sockdir}/cpr.sock"
    with Child(cli("recv", "--timeout", "20", uri, "--", str(program))) as receiver:
        receiver.wait_for("listening on")
        sent = run(cli("send", "--codec", codec, "--timeout", "3", uri, f"dir={sockdir}"))
        done = receiver.finish()
    assert done.returncode == 1, done.stderr
    assert why in done.stderr.splitlines()[-1]
    assert sent.returncode == 1, sent.stdout
    if codec == "native":
        assert "rejected" in sent.stderr and why in sent.stderr
    else:
        assert "timed out" in sent.stderr
    assert _left_behind(sockdir) == []


def test_missing_interpreter_is_refused_before_listening(sockdir: Path) -> None:
    script = sockdir / "script"
    script.write_text("#!/nonexistent/python9\nprint('never')\n")
    _executable(script)
    done = run(cli("recv", "--timeout", "5", f"unix:{sockdir}/cpr.sock", "--", str(script)))
    assert done.returncode == 1
    assert "'/nonexistent/python9'" in done.error_line()
    assert not (sockdir / "cpr.sock").exists()


def test_the_command_runs_as_recv_and_is_acknowledged_after_exec(sockdir: Path) -> None:
    uri = f"unix:{sockdir}/cpr.sock"
    show = 'echo "$LISTEN_PID $$ $(ls /proc/$$/fd | wc -l)"'
    with Child(cli("recv", "--timeout", "20", uri, "--", "sh", "-c", show)) as receiver:
        receiver.wait_for("listening on")
        pid = receiver.popen.pid
        sent = run(cli("send", uri, f"dir={sockdir}"))
        done = receiver.finish()
    assert sent.returncode == 0, sent.stderr
    assert "acknowledged: accepted, then closed" in sent.stdout
    assert done.returncode == 0, done.stderr
    listen_pid, shell_pid, _ = done.stdout.split()
    assert listen_pid == shell_pid == str(pid)
    assert _left_behind(sockdir) == []


#: Writes the environment it was given, exactly as the kernel keeps it, to argv[1].
_ENVIRON = "import sys; open(sys.argv[1], 'wb').write(open('/proc/self/environ', 'rb').read())"


def _entries(raw: bytes) -> dict[bytes, bytes]:
    """/proc/PID/environ as a mapping; each variable must be there once."""
    entries = [entry.partition(b"=")[::2] for entry in raw.split(b"\0")[:-1]]
    assert len({key for key, _ in entries}) == len(entries), entries
    return dict(entries)


@pytest.mark.parametrize("locale", [{}, {"LC_CTYPE": "C"}, {"LANG": "C.UTF-8"}])
def test_the_command_gets_recvs_environment_plus_socket_activation(
    sockdir: Path, locale: dict[str, str]
) -> None:
    """The environment recv was started with, not its os.environ: without a
    locale Python coerces LC_CTYPE to C.UTF-8 there (PEP 538)."""
    uri = f"unix:{sockdir}/cpr.sock"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GUEST": os.fsdecode(b"\xff\xfe not UTF-8"),  # passed on as the same bytes
        "LISTEN_FDS": "7",  # recv's parent's: replaced
        **locale,
    }
    shown = sockdir / "environ"
    command = cli("recv", "--timeout", "20", uri, "--", sys.executable, "-c", _ENVIRON, str(shown))
    with Child(command, env=env) as receiver:
        receiver.wait_for("listening on")
        sent = run(cli("send", uri, f"dir={sockdir}"))
        done = receiver.finish()
    assert sent.returncode == 0, sent.stderr
    assert done.returncode == 0, done.stderr
    expected = {os.fsencode(key): os.fsencode(value) for key, value in env.items()}
    expected |= {
        b"LISTEN_FDS": b"1",
        b"LISTEN_FDNAMES": b"dir",
        b"LISTEN_PID": str(receiver.popen.pid).encode(),
    }
    assert _entries(shown.read_bytes()) == expected
