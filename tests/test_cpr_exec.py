"""QEMU's cpr-exec: reading the state it leaves, and ``probe --cpr-exec -- CMD``.

A state is built the way QEMU 10.2+ builds it before its exec: the
descriptors open without close-on-exec, the cpr stream in exec form (each
descriptor's number in place of its SCM_RIGHTS marker) written into a memfd
named ``QEMU_CPR_EXEC_STATE`` whose offset is left at the end, and the
memfd's number in the variable of that name.  The command line runs in a
child that inherits all of it (``pass_fds`` keeps the numbers), as the
program QEMU execs would.  A probe that itself execs a command only ever
runs in a child.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fdchannel import FdState, NamedFd, ProtocolError, StateError, TransportError, procfs
from fdchannel.codecs import qemu
from fdchannel.cpr_exec import (
    CPR_EXEC_STATE_VARIABLE,
    InheritedFdState,
    cpr_exec_state_fd,
    read_cpr_exec_state,
)

from .cli.helpers import Done, cli, run

#: What QEMU 11.1.3 left in its memfd for a guest with memory-backend-memfd
#: RAM and aux-ram-share (captured by a cpr-exec-command that read it):
#: six entries carrying descriptor numbers, then ``CprState/vfio devices``.
QEMU_11_1_STATE = bytes.fromhex(
    "514350520000000101000000132f726f6d406574632f616370692f727364700000000000"
    "000000130100000015"
    "2f726f6d406574632f616370692f7461626c6573000000000000000011010000000870632e"
    "62696f7300000000000000000e01000000162f726f6d406574632f7461626c652d6c6f6164"
    "6572000000000000000012010000000770632e726f6d00000000000000000f010000000572"
    "616d3000000000000000000a00051543707253746174652f7666696f206465766963657300"
    "00000100"
)
QEMU_11_1_ENTRIES = [
    ("/rom@etc/acpi/rsdp", 0, 19),
    ("/rom@etc/acpi/tables", 0, 17),
    ("pc.bios", 0, 14),
    ("/rom@etc/table-loader", 0, 18),
    ("pc.rom", 0, 15),
    ("ram0", 0, 10),
]

#: Printed by the command the probe execs: what it inherited.
SHOW = """
import fcntl, json, os, sys
fds = {}
for name in sorted(os.listdir("/proc/self/fd"), key=int):
    fd = int(name)
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
        cloexec = bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
    except OSError:
        continue  # the directory listdir read
    try:
        offset = os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:
        offset = None
    fds[fd] = {"target": target, "cloexec": cloexec, "offset": offset}
print(json.dumps({"argv": sys.argv, "env": dict(os.environ), "fds": fds}))
"""


@dataclass
class ExecState:
    """Descriptors, a memfd and an environment as QEMU leaves them for its exec."""

    entries: list[NamedFd]
    memfd: int
    data: bytes
    env: dict[str, str]
    #: Every descriptor the child inherits (entries, memfd, and extras).
    inherited: list[int] = field(default_factory=list)

    def rewrite(self, data: bytes) -> None:
        """Put other bytes in the memfd, its offset at their end, as QEMU leaves it."""
        os.ftruncate(self.memfd, 0)
        os.pwrite(self.memfd, data, 0)
        os.lseek(self.memfd, len(data), os.SEEK_SET)
        self.data = data

    def run(self, *args: str) -> Done:
        """``fdchannel ARGS`` in a child that inherits the state."""
        return run(cli(*args), pass_fds=self.inherited, env=self.env, stdin=subprocess.DEVNULL)


def _exec_bytes(entries: Sequence[NamedFd | tuple[str, int, int]]) -> bytes:
    """The exec form of a state, as QEMU 11.1 writes it (with its vfio subsection)."""
    ((data, fds),) = qemu.encode(FdState(entries), "11.1", exec_mode=True)
    assert fds == []
    return data


@contextmanager
def exec_state(extra_names: Sequence[str] = ()) -> Iterator[ExecState]:
    """A cpr-exec state over a memfd, a pipe, an eventfd, a listening socket and a file."""
    with ExitStack() as stack:

        def keep(fd: int) -> int:
            stack.callback(os.close, fd)
            return fd

        ram = keep(os.memfd_create("memory-backend-memfd"))
        os.ftruncate(ram, 1 << 20)
        os.pwrite(ram, b"guest pattern", 4096)
        reader = keep(_pipe(keep))
        kick = keep(os.eventfd(5))
        listener = socket.create_server(("127.0.0.1", 0))
        stack.callback(listener.close)
        log = keep(os.memfd_create("guest.log"))
        os.write(log, b"booted\n")  # offset 7: it must stay 7
        entries = [
            NamedFd("ram0", 0, ram),
            NamedFd("chardev", 3, reader),
            NamedFd("vhost-kick", 0, kick),
            NamedFd("migrate", 0, listener.fileno()),
            NamedFd("log", 0, log),
        ]
        entries += [NamedFd(name, 0, keep(os.eventfd(0))) for name in extra_names]
        data = _exec_bytes(entries)
        memfd = keep(os.memfd_create(CPR_EXEC_STATE_VARIABLE))
        os.write(memfd, data)  # QEMU writes it through the descriptor: offset at the end
        env = {**os.environ, CPR_EXEC_STATE_VARIABLE: str(memfd)}
        yield ExecState(entries, memfd, data, env, [entry.fd for entry in entries] + [memfd])


def _pipe(keep: Callable[[int], int]) -> int:
    """A pipe's read end; its write end is closed with the rest."""
    read, write = os.pipe()
    keep(write)
    return read


# --------------------------------------------------------------------------
# The codec's exec form and the library, in this process.


def test_qemu_11_1_state_decodes_and_encodes_back() -> None:
    state = qemu.decode_exec(QEMU_11_1_STATE)
    assert [(e.name, e.id, e.fd) for e in state.fds] == QEMU_11_1_ENTRIES
    assert [(s.name, s.version_id, s.devices) for s in state.qemu_subsections] == [
        (qemu.VFIO_DEVICES, 1, ())
    ]
    ((data, fds),) = qemu.encode(state, exec_mode=True)
    assert (data, fds) == (QEMU_11_1_STATE, [])


@pytest.mark.parametrize("fd", [-1, 1 << 31])
def test_encode_refuses_what_is_no_descriptor_number(fd: int) -> None:
    with pytest.raises(StateError, match="not a descriptor number"):
        qemu.encode(FdState([NamedFd("ram0", 0, fd)]), exec_mode=True)


def test_exec_form_differs_from_transfer_form_only_in_the_descriptor() -> None:
    entries = [NamedFd("ram0", 0, 7)]
    ((transfer, _), (end, _)) = qemu.encode(FdState(entries))
    ((exec_form, _),) = qemu.encode(FdState(entries), exec_mode=True)
    assert transfer[-1:] == b"\x20"
    assert exec_form == transfer[:-1] + struct.pack(">i", 7) + end


def test_read_leaves_the_memfd_and_the_descriptors_as_they_were() -> None:
    with exec_state() as made:
        found = read_cpr_exec_state(environ=made.env)
        assert found.state_fd == made.memfd
        assert (found.size, found.offset) == (len(made.data), len(made.data))
        assert os.lseek(made.memfd, 0, os.SEEK_CUR) == len(made.data)
        assert found.state.fds == made.entries
        assert isinstance(found.state, InheritedFdState)
        with found.state:
            pass  # closing the state closes nothing: the descriptors are handed on
        for entry in made.entries:
            os.fstat(entry.fd)
        assert read_cpr_exec_state(made.memfd).state.fds == made.entries


def test_state_fd_comes_from_the_environment() -> None:
    assert cpr_exec_state_fd({CPR_EXEC_STATE_VARIABLE: "21"}) == 21


def _write_only(made: ExecState) -> None:
    fd = os.open(f"/proc/self/fd/{made.memfd}", os.O_WRONLY | os.O_CLOEXEC)
    os.dup2(fd, made.memfd, inheritable=True)
    os.close(fd)
    os.lseek(made.memfd, len(made.data), os.SEEK_SET)  # a new open file: offset 0


def _set(text: str | None) -> Callable[[ExecState], None]:
    def change(made: ExecState) -> None:
        if text is None:
            del made.env[CPR_EXEC_STATE_VARIABLE]
        else:
            made.env[CPR_EXEC_STATE_VARIABLE] = text

    return change


def _bytes(change: Callable[[bytes], bytes]) -> Callable[[ExecState], None]:
    return lambda made: made.rewrite(change(made.data))


def _entry_fd(fd: int) -> Callable[[ExecState], None]:
    """A second entry naming ``fd`` (written by hand: encode refuses a negative one)."""

    def change(made: ExecState) -> None:
        one = _exec_bytes([("ram0", 0, made.entries[0].fd), ("x", 0, 0)])
        # The last entry's i32 descriptor ends 28 bytes before the end: 00, then
        # the 27-byte vfio subsection with its one-byte body.
        at = len(one) - 29 - 4
        made.rewrite(one[:at] + struct.pack(">i", fd) + one[at + 4 :])

    return change


def _pipe_as_state(made: ExecState) -> None:
    made.env[CPR_EXEC_STATE_VARIABLE] = str(made.entries[1].fd)


#: A broken state or variable, the error's type and what its one line says.
HOSTILE: list[Any] = [
    pytest.param(_set(None), ProtocolError, "is not set", id="variable-missing"),
    pytest.param(_set("abc"), ProtocolError, "not a descriptor number", id="not-a-number"),
    pytest.param(_set("-1"), ProtocolError, "not a descriptor number", id="negative-number"),
    pytest.param(_set(" 7"), ProtocolError, "not a descriptor number", id="spaced-number"),
    pytest.param(_set("\u0661"), ProtocolError, "not a descriptor number", id="arabic-digit"),
    pytest.param(_set("9" * 30), ProtocolError, "not a descriptor number", id="huge-number"),
    pytest.param(_set("987"), ProtocolError, "987, which is not open", id="closed-state-fd"),
    pytest.param(_pipe_as_state, ProtocolError, "is not a memfd or file", id="state-is-a-pipe"),
    pytest.param(_write_only, TransportError, "cannot read", id="write-only-memfd"),
    pytest.param(_bytes(lambda d: b""), ProtocolError, "after 0 byte(s)", id="empty"),
    pytest.param(_bytes(lambda d: d[:20]), ProtocolError, "middle of a field", id="truncated"),
    pytest.param(_bytes(lambda d: b"QEVM" + d[4:]), ProtocolError, "magic", id="bad-magic"),
    pytest.param(
        _bytes(lambda d: d[:4] + struct.pack(">I", 2) + d[8:]),
        ProtocolError,
        "version 2",
        id="bad-version",
    ),
    pytest.param(_bytes(lambda d: d + b"\x07"), ProtocolError, "not 0x05", id="trailing-byte"),
    pytest.param(_entry_fd(987), ProtocolError, "987, which is not open", id="closed-entry"),
    pytest.param(_entry_fd(-5), ProtocolError, "is negative", id="negative-entry"),
]


@pytest.mark.parametrize(("spoil", "error", "message"), HOSTILE)
def test_hostile_states_raise_typed_errors(
    spoil: Callable[[ExecState], None], error: type[Exception], message: str
) -> None:
    with exec_state() as made:
        spoil(made)
        with pytest.raises(error) as caught:
            read_cpr_exec_state(environ=made.env)
        assert message in str(caught.value)
        assert os.lseek(made.memfd, 0, os.SEEK_CUR) == len(made.data)


@pytest.mark.parametrize("fd", [-1, 1 << 31, 1 << 70])
def test_a_number_that_is_no_descriptor_is_a_state_error(fd: int) -> None:
    with pytest.raises(StateError):
        read_cpr_exec_state(fd)


def test_a_state_too_large_is_refused_unread() -> None:
    with exec_state() as made, pytest.raises(ProtocolError, match="more than 16"):
        read_cpr_exec_state(made.memfd, max_size=16)


# --------------------------------------------------------------------------
# probe --cpr-exec, describing only.


def test_probe_describes_every_descriptor_as_probe_listen_does() -> None:
    with exec_state(["kick\x1b[2J\nforged"]) as made:
        done = made.run("probe", "--cpr-exec", "--json")
        assert done.returncode == 0, done.stderr
        report = done.json()
        text = made.run("probe", "--cpr-exec")
    assert report["ok"] is True
    assert (report["state_fd"], report["state_size"]) == (made.memfd, len(made.data))
    assert report["state_offset"] == len(made.data)
    assert report["state_description"]["name"] == CPR_EXEC_STATE_VARIABLE
    described = {d["name"]: d for d in report["descriptors"]}
    assert [(d["name"], d["id"], d["fd"]) for d in report["descriptors"]] == [
        (e.name, e.id, e.fd) for e in made.entries
    ]
    kinds = {name: d["description"]["kind"] for name, d in described.items()}
    assert kinds == {
        "ram0": "memfd",
        "chardev": "pipe",
        "vhost-kick": "eventfd",
        "migrate": "socket",
        "log": "memfd",
        "kick\x1b[2J\nforged": "eventfd",
    }
    assert described["ram0"]["description"]["size"] == 1 << 20
    assert described["vhost-kick"]["description"]["count"] == 5
    assert described["migrate"]["description"]["listening"] is True
    assert not any(d["cloexec"] for d in report["descriptors"])
    assert report["subsections"] == [
        {"name": qemu.VFIO_DEVICES, "version_id": 1, "known": True, "size": 1}
    ]
    assert report["exec"] is None
    # Text: the same, one line per descriptor, and a peer's name escaped.
    assert text.returncode == 0 and text.stderr == ""
    lines = text.stdout.splitlines()
    assert lines[0].startswith(f"state fd     {made.memfd} ({CPR_EXEC_STATE_VARIABLE}): memfd")
    assert "qemu codec (cpr-exec), 6 descriptors" in lines[1]
    assert any("kick\\x1b[2J\\nforged" in line for line in lines)
    assert len(lines) == 2 + 1 + 6 + 1
    assert lines[-1].startswith("exec         none")


@pytest.mark.parametrize(("spoil", "error", "message"), HOSTILE)
def test_probe_reports_a_hostile_state_in_one_line(
    spoil: Callable[[ExecState], None], error: type[Exception], message: str
) -> None:
    with exec_state() as made:
        spoil(made)
        done = made.run("probe", "--cpr-exec")
    assert done.returncode == 1
    line = done.error_line()
    assert line.startswith("fdchannel: error: ") and message in line
    assert done.stdout == ""


# --------------------------------------------------------------------------
# probe --cpr-exec -- CMD: CMD inherits everything exactly as QEMU left it.


def _inherited(done: Done) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    shown: dict[str, Any] = json.loads(done.stdout)
    return shown


def _without_stdio(fds: dict[str, Any]) -> dict[str, Any]:
    """The inherited descriptors beyond 0, 1, 2 (stdout and stderr are each run's pipes)."""
    return {fd: info for fd, info in fds.items() if int(fd) > 2}


def test_command_inherits_environment_descriptors_and_memfd_unchanged() -> None:
    with exec_state() as made:
        direct = _inherited(run([sys.executable, "-c", SHOW, "arg 1"], **_child(made)))
        done = made.run("probe", "--cpr-exec", "--json", "--", sys.executable, "-c", SHOW, "arg 1")
        wrapped = _inherited(done)
        # Nothing the probe did moved the memfd's offset or a file's.
        assert os.lseek(made.memfd, 0, os.SEEK_CUR) == len(made.data)
        assert os.lseek(made.entries[4].fd, 0, os.SEEK_CUR) == len(b"booted\n")
    assert wrapped["argv"] == direct["argv"] == ["-c", "arg 1"]
    assert wrapped["env"] == direct["env"]
    assert wrapped["env"][CPR_EXEC_STATE_VARIABLE] == str(made.memfd)
    assert _without_stdio(wrapped["fds"]) == _without_stdio(direct["fds"])
    expected = {str(fd) for fd in made.inherited}
    assert set(_without_stdio(wrapped["fds"])) == expected, "a descriptor leaked into CMD"
    assert wrapped["fds"][str(made.memfd)]["offset"] == len(made.data)
    assert not any(info["cloexec"] for info in wrapped["fds"].values())
    for fd in ("0", "1", "2"):
        assert wrapped["fds"][fd]["cloexec"] == direct["fds"][fd]["cloexec"]
    # The report went to stderr, as a document: stdout is CMD's.
    report = json.loads(done.stderr)
    assert [d["name"] for d in report["descriptors"]] == [e.name for e in made.entries]
    assert report["exec"]["argv"] == [sys.executable, "-c", SHOW, "arg 1"]


def _child(made: ExecState) -> dict[str, Any]:
    return {"pass_fds": made.inherited, "env": made.env, "stdin": subprocess.DEVNULL}


def test_a_state_that_cannot_be_read_is_reported_and_the_command_runs_anyway() -> None:
    with exec_state() as made:
        made.rewrite(b"QEVM")
        done = made.run("probe", "--cpr-exec", "--", sys.executable, "-c", SHOW)
    shown = _inherited(done)
    assert set(_without_stdio(shown["fds"])) == {str(fd) for fd in made.inherited}
    lines = done.stderr.splitlines()
    assert lines[0].startswith("fdchannel: error: qemu cpr-exec state has magic")
    assert "anyway" in lines[1] and len(lines) == 2


def _garbage(tmp: Path) -> tuple[str, str]:
    path = tmp / "garbage"
    path.write_bytes(b"\x00\x01\x02 not a program\n")
    path.chmod(0o755)
    return str(path), "not a format this machine can run"


def _bad_interpreter(tmp: Path) -> tuple[str, str]:
    path = tmp / "script"
    path.write_text("#!/nonexistent/interpreter\n")
    path.chmod(0o755)
    return str(path), "names the interpreter '/nonexistent/interpreter'"


def _missing(tmp: Path) -> tuple[str, str]:
    return "fdchannel-no-such-command", "no such executable"


def _directory(tmp: Path) -> tuple[str, str]:
    return str(tmp), "no such executable"


#: A command that cannot be executed: (argv[0], what the error says).  Only
#: execve finds the fault of the last, so the report comes before the error.
UNRUNNABLE = [
    pytest.param(_missing, id="missing"),
    pytest.param(_directory, id="directory"),
    pytest.param(_bad_interpreter, id="bad-interpreter"),
    pytest.param(_garbage, id="enoexec"),
]


@pytest.mark.parametrize("make", UNRUNNABLE)
def test_a_command_that_cannot_run_exits_1_naming_the_file(
    tmp_path: Path, make: Callable[[Path], tuple[str, str]]
) -> None:
    program, message = make(tmp_path)
    with exec_state() as made:
        done = made.run("probe", "--cpr-exec", "--json", "--", program, "-x")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    last = done.stderr.splitlines()[-1]
    assert last.startswith("fdchannel: error: cannot run ") and message in last
    assert done.stdout.startswith("{")  # --json: the error as a document too
    assert json.loads(done.stdout)["ok"] is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cpr-exec", "unix:/x"], "takes no URI"),
        (["--cpr-exec", "true"], "takes no URI"),
        (["--cpr-exec", "--listen"], "--listen does not apply"),
        (["--cpr-exec", "--timeout", "1", "--", "true"], "--timeout does not apply"),
        (["--cpr-exec", "--mode", "normal"], "--mode does not apply"),
        (["--cpr-exec", "--no-self-test", "--", "true"], "--self-test/--no-self-test"),
        (["--cpr-exec", "--"], "a command is needed after '--'"),
    ],
    ids=["uri", "command-without-dashes", "listen", "timeout", "mode", "self-test", "empty"],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    # In a child: a parser mistake here must not exec a command in place of pytest.
    done = run(cli("probe", *args))
    assert done.returncode == 2
    assert message in done.error_line()


def test_dashes_without_cpr_exec_keep_their_old_meaning() -> None:
    done = run(cli("probe", "--", "bogus:x"))
    assert done.returncode == 2
    assert "unknown migration protocol" in done.error_line()


#: Runs the command line with anyio made unimportable.
_NO_ANYIO = """
import sys
sys.modules["anyio"] = None  # any import of it raises ImportError
from fdchannel.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_probe_cpr_exec_needs_no_event_loop() -> None:
    with exec_state() as made:
        argv = [sys.executable, "-c", _NO_ANYIO, "probe", "--cpr-exec", "--json"]
        described = run(argv, **_child(made))
        ran = run([*argv, "--", sys.executable, "-c", SHOW], **_child(made))
    assert described.returncode == 0, described.stderr
    assert len(described.json()["descriptors"]) == len(made.entries)
    assert set(_without_stdio(_inherited(ran)["fds"])) == {str(fd) for fd in made.inherited}


#: Stands in for QEMU at its exec: SIGPIPE ignored and SIGUSR1 blocked, as a
#: QEMU has them (and SIGXFSZ ignored, as Python has it and QEMU has not).
_AS_QEMU = """
import os, signal, sys
signal.signal(signal.SIGPIPE, signal.SIG_IGN)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
os.execv(sys.executable, [sys.executable, "-m", "fdchannel", *sys.argv[1:]])
"""
#: Not through sh: a shell sets its own signal mask.
_SIGNALS = ["grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"]


def _signal_set(done: Done, field: str) -> set[int]:
    line = next(line for line in done.stdout.splitlines() if line.startswith(field))
    bits = int(line.split()[1], 16)
    return {signo for signo in range(1, 65) if bits >> (signo - 1) & 1}


def test_command_gets_qemus_signal_mask_and_dispositions() -> None:
    with exec_state() as made:
        argv = [sys.executable, "-c", _AS_QEMU, "probe", "--cpr-exec", "--", *_SIGNALS]
        done = run(argv, **_child(made))
    assert done.returncode == 0, done.stderr
    assert _signal_set(done, "SigBlk") == {signal.SIGUSR1}
    ignored = _signal_set(done, "SigIgn")
    assert signal.SIGPIPE in ignored
    assert signal.SIGXFSZ not in ignored  # Python's own, reset before the exec


#: Prints the environment it was given, exactly as the kernel keeps it.
_ENVIRON = "import sys; sys.stdout.buffer.write(open('/proc/self/environ', 'rb').read())"
#: Environments QEMU might leave: without a locale Python coerces LC_CTYPE to
#: C.UTF-8 (PEP 538) in its own os.environ, which CMD must not inherit.
ENVIRONMENTS: dict[str, dict[bytes, bytes]] = {
    "no-locale": {},
    "ctype-c": {b"LC_CTYPE": b"C"},
    "lang-posix": {b"LANG": b"POSIX"},
    "utf-8": {b"LANG": b"C.UTF-8"},
}


def environ_bytes(env: dict[bytes, bytes]) -> bytes:
    """An environment as /proc/PID/environ shows it: entries ending in NUL."""
    return b"".join(key + b"=" + value + b"\0" for key, value in env.items())


@pytest.mark.parametrize("state", ["readable", "unreadable"])
@pytest.mark.parametrize("locale", ENVIRONMENTS)
def test_command_gets_the_environment_qemu_left_byte_for_byte(locale: str, state: str) -> None:
    with exec_state() as made:
        if state == "unreadable":
            made.rewrite(b"QEVM")  # reported, and CMD runs anyway: with the same environment
        env = {
            b"PATH": os.environb.get(b"PATH", b"/usr/bin:/bin"),
            b"QEMU_GUEST": b"\xff\xfe not UTF-8 \x1b[0m",
            **ENVIRONMENTS[locale],
            CPR_EXEC_STATE_VARIABLE.encode(): str(made.memfd).encode(),
        }
        done = subprocess.run(
            cli("probe", "--cpr-exec", "--", sys.executable, "-c", _ENVIRON),
            pass_fds=made.inherited,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(b"\0") == environ_bytes(env).split(b"\0")


@pytest.mark.parametrize(
    ("kept", "read"),
    [
        # As getenv reads it: the first entry of a name; none without a name or "=".
        (b"A=1\0A=2\0=x\0no-equals\0B=\0C==c\0", {b"A": b"1", b"B": b"", b"C": b"=c"}),
        (b"", {}),
        (OSError(2, "No such file or directory"), None),  # no /proc: os.environ
    ],
)
def test_the_started_environment_reads_as_getenv_does(
    monkeypatch: pytest.MonkeyPatch, kept: bytes | OSError, read: dict[bytes, bytes] | None
) -> None:
    def proc_environ(path: str, mode: str) -> io.BytesIO:
        assert (path, mode) == ("/proc/self/environ", "rb")
        if isinstance(kept, OSError):
            raise kept
        return io.BytesIO(kept)

    # What a process could have been given, or a machine without /proc (fault injection).
    monkeypatch.setattr(procfs, "open", proc_environ, raising=False)
    assert procfs.started_environment() == (dict(os.environb) if read is None else read)
