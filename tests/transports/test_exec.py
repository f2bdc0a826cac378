"""The exec transport: real commands, their exit status, and no child left behind."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
from pathlib import Path

import anyio
import pytest

import fdchannel
from fdchannel.address import ExecAddress
from fdchannel.capabilities import Capability
from fdchannel.errors import AddressError, CapabilityError, ConnectError, TransportError
from fdchannel.transports import exec as exec_transport
from fdchannel.transports.exec import ExecStream

pytestmark = pytest.mark.anyio

TIMEOUT = 10
MIB = 1024 * 1024
LS = shutil.which("ls") or "/bin/ls"


def sh(script: str) -> ExecAddress:
    return ExecAddress(("/bin/sh", "-c", script))


def assert_reaped(stream: ExecStream) -> None:
    assert stream.returncode is not None
    with pytest.raises(ChildProcessError):
        os.waitpid(stream.pid, os.WNOHANG)


async def accept(address: ExecAddress, grace: float = exec_transport.KILL_GRACE) -> ExecStream:
    async with await exec_transport.listen(address, grace=grace) as listener:
        stream = await listener.accept()
        with pytest.raises(CapabilityError, match="exactly one stream"):
            await listener.accept()
    assert isinstance(stream, ExecStream)
    return stream


async def read_all(stream: ExecStream) -> bytes:
    parts = []
    while True:
        try:
            parts.append(await stream.receive(MIB))
        except anyio.EndOfStream:
            return b"".join(parts)


async def test_cat_round_trip(tmp_path: Path) -> None:
    data = hashlib.shake_256(b"exec").digest(4 * MIB)
    target = tmp_path / "out"
    with anyio.fail_after(TIMEOUT):
        writer = await exec_transport.connect(sh(f"cat > {target}"))
        async with writer:
            assert writer.capabilities == Capability.HALF_CLOSE
            await writer.send(data)
            await writer.send_eof()  # closes the command's stdin
            await writer.wait_peer_closed()  # and waits for it to exit well
        assert writer.returncode == 0
        assert_reaped(writer)

        reader = await accept(ExecAddress(("/bin/cat", str(target))))
        async with reader:
            assert await read_all(reader) == data
        assert_reaped(reader)


@pytest.mark.parametrize(
    ("script", "message", "returncode"),
    [
        ("echo partial; exit 3", "exited with status 3", 3),
        ("echo partial; kill -TERM $$", r"killed by signal 15 \(SIGTERM\)", -signal.SIGTERM),
    ],
    ids=["status", "signal"],
)
async def test_incoming_failure_is_raised_at_eof(
    script: str, message: str, returncode: int
) -> None:
    with anyio.fail_after(TIMEOUT):
        reader = await accept(sh(script))
        async with reader:
            assert await reader.receive() == b"partial\n"
            with pytest.raises(TransportError, match=message) as caught:
                await reader.receive()
            assert script in str(caught.value)
            with pytest.raises(TransportError, match=message):
                await reader.receive()  # and stays raised
        # Reported once already: closing does not raise it again.
        assert reader.returncode == returncode
        assert_reaped(reader)


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ("exit 3", "exited with status 3"),
        ("kill -KILL $$", r"killed by signal 9 \(SIGKILL\)"),
    ],
    ids=["status", "signal"],
)
async def test_outgoing_failure_is_raised(script: str, message: str) -> None:
    with anyio.fail_after(TIMEOUT):
        # By wait_peer_closed, and by receive, once the command has exited.
        writer = await exec_transport.connect(sh(script))
        with pytest.raises(TransportError, match=message):
            await writer.wait_peer_closed()
        with pytest.raises(TransportError, match=message):
            await writer.receive()
        await writer.aclose()
        assert_reaped(writer)

        # By send: the command stopped reading while we still had bytes for it.
        writer = await exec_transport.connect(sh(script))
        with pytest.raises(TransportError, match=message):
            await writer.send(b"\0" * 8 * MIB)
        await writer.aclose()
        assert_reaped(writer)

        # By aclose, when nobody looked before.
        writer = await exec_transport.connect(sh(script))
        with pytest.raises(TransportError, match=message):
            async with writer:
                pass
        assert_reaped(writer)

        # Not over an exception that is already leaving the block.
        writer = await exec_transport.connect(sh(script))
        with pytest.raises(LookupError, match="the caller's own error"):
            async with writer:
                raise LookupError("the caller's own error")
        assert_reaped(writer)


async def test_cancelled_reader_kills_and_reaps() -> None:
    with anyio.fail_after(TIMEOUT):
        reader = await accept(ExecAddress(("/bin/cat", "/dev/zero")), grace=60)
        with anyio.CancelScope() as scope:
            async with reader:
                total = 0
                while True:
                    total += len(await reader.receive(MIB))
                    if total >= MIB:
                        scope.cancel()
    assert scope.cancelled_caught
    # Killed by us, or by SIGPIPE once its pipe closed: never waited 60 s for.
    assert reader.returncode in (-signal.SIGKILL, -signal.SIGPIPE)
    assert_reaped(reader)


async def test_cancelled_writer_kills_at_once() -> None:
    with anyio.fail_after(TIMEOUT):
        writer = await exec_transport.connect(ExecAddress(("/bin/sleep", "60")), grace=60)

        async def feed() -> None:
            async with writer:
                await writer.send(b"\0" * 8 * MIB)  # more than the pipe holds: blocks

        async with anyio.create_task_group() as tg:
            tg.start_soon(feed)
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
    assert writer.returncode == -signal.SIGKILL
    assert_reaped(writer)


async def test_close_kills_a_command_that_does_not_finish() -> None:
    with anyio.fail_after(TIMEOUT):
        writer = await exec_transport.connect(ExecAddress(("/bin/sleep", "60")), grace=0.05)
        with pytest.raises(TransportError, match=r"still running .* was killed"):
            await writer.aclose()
        assert writer.returncode == -signal.SIGKILL
        assert_reaped(writer)
        await writer.aclose()  # idempotent, and quiet now

        # abort() kills at once and reports nothing.
        writer = await exec_transport.connect(ExecAddress(("/bin/sleep", "60")), grace=60)
        await writer.abort()
        assert writer.returncode == -signal.SIGKILL
        assert_reaped(writer)

        # A listener closed before anyone accepted its stream.
        listener = await exec_transport.listen(ExecAddress(("/bin/sleep", "60")), grace=0.05)
        await listener.aclose()
        await listener.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await listener.accept()


async def test_stderr_passes_through(capfd: pytest.CaptureFixture[str]) -> None:
    with anyio.fail_after(TIMEOUT):
        reader = await accept(sh("echo to-stderr >&2; echo to-stdout"))
        async with reader:
            assert await read_all(reader) == b"to-stdout\n"
    assert "to-stderr" in capfd.readouterr().err


async def test_child_inherits_only_its_standard_streams() -> None:
    leaky_r, leaky_w = os.pipe()
    os.set_inheritable(leaky_w, True)
    try:
        with anyio.fail_after(TIMEOUT):
            reader = await accept(ExecAddress((LS, "/proc/self/fd")))
            async with reader:
                listing = (await read_all(reader)).split()
            reader = await accept(ExecAddress(("/bin/readlink", "/proc/self/fd/0")))
            async with reader:
                stdin = await read_all(reader)
    finally:
        os.close(leaky_r)
        os.close(leaky_w)
    # 0, 1, 2 and the directory ls itself opened to list.
    assert set(listing) <= {b"0", b"1", b"2", b"3"}
    assert stdin == b"/dev/null\n"


async def test_the_command_gets_this_programs_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A library's command inherits ``os.environ`` as the program made it, not the
    environment the process was started with (what the fdchannel command line execs
    in its stead gets that): what the program set or removed holds for it."""
    monkeypatch.setenv("FDC_SET_BY_THE_PROGRAM", "yes")
    monkeypatch.setenv("FDC_REMOVED_BY_THE_PROGRAM", "no")
    monkeypatch.delenv("FDC_REMOVED_BY_THE_PROGRAM")
    with anyio.fail_after(TIMEOUT):
        reader = await accept(ExecAddress(("/bin/cat", "/proc/self/environ")))
        async with reader:
            environ = (await read_all(reader)).split(b"\0")[:-1]
    assert b"FDC_SET_BY_THE_PROGRAM=yes" in environ
    assert not [entry for entry in environ if entry.startswith(b"FDC_REMOVED_BY_THE_PROGRAM=")]


async def test_streams_go_one_way() -> None:
    with anyio.fail_after(TIMEOUT):
        reader = await accept(sh("echo out"))
        async with reader:
            with pytest.raises(CapabilityError, match="read end"):
                await reader.send(b"x")
            with pytest.raises(CapabilityError):
                await reader.send_fds(b"x", [0])
            await reader.send_eof()  # its stdin is /dev/null: nothing to close
            await reader.wait_peer_closed()  # reads to EOF and checks the status
            assert await reader.receive() == b"out\n"

        writer = await exec_transport.connect(sh("cat > /dev/null"))
        await writer.send_eof()
        with pytest.raises(anyio.ClosedResourceError):
            await writer.send(b"late")
        with pytest.raises(anyio.EndOfStream):
            await writer.receive()  # exited well: EOF
        await writer.aclose()
        await writer.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await writer.send(b"x")
        assert writer.returncode == 0


async def test_no_path_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConnectError, match="no PATH search") as caught:
        await exec_transport.connect(ExecAddress(("cat",)))
    assert "'cat'" in str(caught.value)
    with pytest.raises(TransportError, match="No such file") as caught_listen:
        await exec_transport.listen(ExecAddress(("/nonexistent/cmd",)))
    assert not isinstance(caught_listen.value, ConnectError)
    # As execv: a bare name is a file in the working directory.
    script = tmp_path / "hello"
    script.write_text("#!/bin/sh\necho hello from cwd\n")
    script.chmod(0o755)
    with anyio.fail_after(TIMEOUT):
        reader = await accept(ExecAddress(("hello",)))
        async with reader:
            assert await read_all(reader) == b"hello from cwd\n"


async def test_empty_command() -> None:
    with pytest.raises(AddressError, match="needs a command"):
        await exec_transport.connect(ExecAddress(()))


async def test_abort_kills_what_the_shell_forked() -> None:
    # The shell forks "sleep" and waits for it: killing only the shell would
    # leave the sleep running, adopted by init.  The shell reports its pid.
    async with await fdchannel.listen("exec:sleep 1000 & echo $!; wait") as listener:
        stream = await listener.accept()
        try:
            with anyio.fail_after(10):
                sleeper = int(await stream.receive())
                pidfd = os.pidfd_open(sleeper)
                try:
                    await stream.abort()
                    await anyio.wait_readable(pidfd)  # readable once the process has exited
                finally:
                    os.close(pidfd)
        finally:
            await stream.aclose()
