"""Only the FdChannelError tree escapes the public API, whatever the input.

Every public entry point is driven with arbitrary and hostile inputs: the
parsers, ``connect`` and ``listen``, the codecs, ``send_state`` and
``receive_state`` against a hostile peer, ``relay``, the handoff classes,
and the command line's ``main``.  Anything else that escapes (a bare
OSError, ValueError, OverflowError, an ExceptionGroup, anyio's stream
errors) is a defect: a caller who catches FdChannelError would crash on it.
Cancellation, and the deadlines the tests themselves set, are not errors.

Inputs that could reach outside the test are made safe by construction:
unix paths and files stay in a temporary directory, servers listen on
loopback only, descriptor numbers are huge or the test's own, and the only
commands run are ``true`` and ``exit 3``.  ``make fuzz`` runs these at 100
times the examples.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

import fdchannel
from fdchannel import Channel, FdChannelError, FdState, NamedFd, blocking
from fdchannel.cli import main
from fdchannel.codecs import Decoder, native, qemu
from fdchannel.cpr_exec import CPR_EXEC_STATE_VARIABLE, read_cpr_exec_state
from fdchannel.transfer import Codec
from fdchannel.upgrade import Upgrader, lineage as lineage_env, request_upgrade

from .conftest import BACKENDS
from .fuzzing import examples
from .waiting import in_poll

#: Numbers as hostile input spells them.
NUMBERS = [
    "0", "1", "-1", "65535", "65536", "4294967296", "99999999999999999999", "1" * 5000,
    "\u0661\u0662", "\u0663", "0x10", "010", " 1", "1 ", "+1", "1e3", "", "1.5",
    "18446744073709551616",
]  # fmt: skip
#: Pieces of URIs, JSON and keyval, and text a terminal or a C string chokes on.
PIECES = [
    "unix:", "tcp:", "vsock:", "fd:", "file:", "exec:", "rdma:", ":", ",", "=", "[", "]",
    "::1", "127.0.0.1", "{", "}", '"', ".", "cpr", "main", "cpr,", "main,", "addr.",
    "addr.transport=socket", "addr.type=inet", "addr.type=unix", "addr.type=fd",
    "addr.host=", "addr.port=", "addr.path=", "addr.str=", "addr.args.0=", "offset=",
    ",offset=", "to=", ",to=", "ipv4", "ipv6=on", "keep-alive=off", "abstract=on",
    '"channel-type"', '"addr"', '"transport"', '"socket"', '"type"', '"port"', ":1",
    "\0", "\n", "\x1b[2J", "\udcff", "\ud800", "ü", "\u202e", "\\u0000", "\\ud800", "%",
]  # fmt: skip
TEXT = st.lists(
    st.one_of(st.sampled_from(PIECES), st.sampled_from(NUMBERS), st.text(max_size=6)),
    max_size=10,
).map("".join)


def _settings(default_examples: int) -> settings:
    return settings(
        max_examples=examples(default_examples),
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


def _only_ours(exc: BaseException) -> None:
    """Fail unless ``exc`` is in the FdChannelError tree."""
    if isinstance(exc, AssertionError):
        raise exc  # a failure found further in
    if not isinstance(exc, FdChannelError):
        raise AssertionError(
            f"{type(exc).__module__}.{type(exc).__name__} escaped: {exc!r}"
        ) from exc


def _call(func: Callable[[], object]) -> None:
    try:
        func()
    except Exception as exc:
        _only_ours(exc)


def _run(
    backend: tuple[str, dict[str, Any]], func: Callable[[], Awaitable[object]], limit: float = 5.0
) -> None:
    """``func`` on the backend, under a deadline of our own (not an error)."""

    async def body() -> None:
        with anyio.move_on_after(limit):
            try:
                await func()
            except Exception as exc:
                _only_ours(exc)

    name, options = backend
    anyio.run(body, backend=name, backend_options=options)


# --------------------------------------------------------------------------
# Parsers.


@_settings(600)
@given(TEXT)
@example("tcp:h:1,to=" + "9" * 5000)
@example("file:/x,offset=" + "1" * 5000)
@example(
    '{"channel-type": "main", "addr": {"transport": "file", "filename": "/x", "offset": '
    + "1" * 5000
    + "}}"
)
@example("main,addr.transport=exec,addr.args." + "1" * 5000 + "=x")
def test_parsers(text: str) -> None:
    _call(lambda: fdchannel.parse_address(text))
    _call(lambda: fdchannel.parse_channel(text))
    _call(
        lambda: fdchannel.validate_channels([_channel(text), _channel(text)], mode="cpr-transfer")
    )
    _call(lambda: fdchannel.validate_channels([_channel(text)], mode="normal"))


def _channel(text: str) -> Channel:
    """What validate_channels takes: parsed channels (a text that does not parse
    is an error of parse_channel, checked above)."""
    try:
        return fdchannel.parse_channel(text)
    except FdChannelError:
        return fdchannel.parse_channel("unix:/nonexistent/x")


JSON_LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), TEXT,
    st.sampled_from([1 << 64, -(1 << 63) - 1]),
    st.builds(lambda: 10**5000),  # too long for str(): a repr() must not be needed
)  # fmt: skip
#: Keys QAPI channel objects use, and anything else.
JSON_KEYS = st.sampled_from(
    [
        "channel-type", "addr", "transport", "type", "host", "port", "path", "str", "args",
        "filename", "offset", "cid", "abstract", "tight", "to",
    ]
) | TEXT  # fmt: skip


def _json_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Lists and objects of ``inner`` (a function: hypothesis checks that
    ``extend`` uses its argument, which it cannot see in a long lambda)."""
    return st.one_of(st.lists(inner, max_size=4), st.dictionaries(JSON_KEYS, inner, max_size=5))


JSON = st.recursive(JSON_LEAF, _json_containers, max_leaves=12)


@_settings(400)
@given(JSON)
def test_qapi_objects(value: Any) -> None:
    _call(lambda: Channel.from_qapi(value))
    try:
        text = json.dumps(value)
    except ValueError:  # integers too long for json itself
        return
    _call(lambda: fdchannel.parse_channel(text))


# --------------------------------------------------------------------------
# connect and listen, on targets that cannot reach outside the test.


@contextmanager
def _sandbox() -> Iterator[tuple[Path, list[int]]]:
    """A temporary directory and a few descriptors of the test's own."""
    with tempfile.TemporaryDirectory(prefix="fdc-", dir="/tmp") as tmp, ExitStack() as stack:
        own = []
        for sock in socket.socketpair():
            stack.callback(sock.close)
            own.append(sock.fileno())
        dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        stack.callback(dgram.close)
        own.append(dgram.fileno())
        read, write = os.pipe()
        stack.callback(os.close, read)
        stack.callback(os.close, write)
        own += [read, write]
        yield Path(tmp), own


NAME = st.text(st.characters(blacklist_characters="/\0"), min_size=1, max_size=12).filter(
    lambda n: n not in (".", "..")
)
HOSTS = ["127.0.0.1", "::1", "[::1]", "localhost", "\udcff", "a" * 70, "ü", "-", "..", "1.2.3.4.5"]


def _datagram_targets(tmp: Path) -> st.SearchStrategy[str]:
    """Upgrades' own datagram schemes (udp:, unixgram:), hostile and not."""
    udp = st.builds(
        lambda h, p, o: f"udp:{h}:{p}{o}",
        st.sampled_from(HOSTS),
        st.sampled_from(NUMBERS),
        st.sampled_from(["", ",ipv4", ",ipv6", ",to=1", ",keep-alive=on"]),
    )
    unixgram = st.builds(lambda n: f"unixgram:{tmp}/{n}", NAME)
    return st.one_of(udp, unixgram, st.sampled_from(["udp:", "unixgram:", "udp:x"]))


def _targets(tmp: Path, own: list[int]) -> st.SearchStrategy[str]:
    number = st.sampled_from(NUMBERS)
    unix = st.builds(lambda n: f"unix:{tmp}/{n}", NAME)
    abstract = st.builds(
        lambda n: f"cpr,addr.transport=socket,addr.type=unix,addr.abstract=on,addr.path=fdc-{n}",
        st.text("abc\n\x1b", min_size=1, max_size=8),
    )
    tcp = st.builds(
        lambda h, p, o: f"tcp:{h}:{p}{o}",
        st.sampled_from(HOSTS),
        number,
        st.sampled_from(
            [
                "",
                ",to=1",
                ",ipv4",
                ",ipv6",
                ",ipv4=off,ipv6=off",
                ",keep-alive=on",
                ",to=" + "9" * 5000,
            ]
        ),
    )
    fd = st.builds(
        lambda n: f"fd:{n}", st.sampled_from([*NUMBERS, *map(str, own), "web", "\udcff"])
    )
    file = st.builds(lambda n, o: f"file:{tmp}/{n},offset={o}", NAME, number)
    fixed = st.sampled_from(
        ["exec:true", "exec:exit 3", "rdma:127.0.0.1:1", f"vsock:{'1' * 5000}:1", "vsock:\u0661:1"]
    )
    plain = st.one_of(unix, abstract, tcp, fd, file, fixed)
    as_cpr = plain.map(lambda uri: uri if uri.startswith("cpr,") else f"cpr,{_keyval(uri)}")
    return st.one_of(plain, as_cpr.filter(bool))


def _keyval(uri: str) -> str:
    """A URI as a keyval channel, where one is easy to spell; else the URI itself."""
    scheme, _, rest = uri.partition(":")
    if scheme == "unix" and "," not in rest:
        return f"addr.transport=socket,addr.type=unix,addr.path={rest}"
    if scheme == "fd" and "," not in rest:
        return f"addr.transport=socket,addr.type=fd,addr.str={rest}"
    return ""


@pytest.mark.parametrize("backend", BACKENDS)
@_settings(60)
@given(data=st.data())
def test_connect_and_listen(backend: tuple[str, dict[str, Any]], data: st.DataObject) -> None:
    with _sandbox() as (tmp, own):
        target = data.draw(_targets(tmp, own))

        async def both() -> None:
            for verb in (fdchannel.connect, fdchannel.listen):
                try:
                    opened = await verb(target)
                except Exception as exc:
                    _only_ours(exc)
                else:
                    await opened.aclose()

        _run(backend, both)


# --------------------------------------------------------------------------
# Codecs, and the state exchange against a hostile peer.

CODECS: list[Codec] = ["native", "qemu"]
CHUNKS = st.lists(st.binary(max_size=64), max_size=6)
STREAMS = st.one_of(
    CHUNKS,
    st.builds(lambda tail: [native.MAGIC.to_bytes(4, "big") + tail], st.binary(max_size=80)),
    st.builds(lambda tail: [b"QCPR\0\0\0\1" + tail], st.binary(max_size=80)),
)


@_settings(300)
@given(STREAMS, st.lists(st.integers(0, 3), max_size=6))
def test_decoder(chunks: list[bytes], fd_counts: list[int]) -> None:
    decoder = Decoder()
    try:
        for index, chunk in enumerate(chunks):
            fds = [
                os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
                for _ in range(fd_counts[index] if index < len(fd_counts) else 0)
            ]
            decoder.feed(chunk, fds)
        decoder.finish().close()
    except Exception as exc:
        _only_ours(exc)
    finally:
        decoder.close()
    _call(lambda: list(native.encode(FdState(), window=1)))


@_settings(300)
@given(
    st.lists(
        st.tuples(TEXT, st.integers(-(1 << 40), 1 << 40), st.integers(-5, 1 << 40)), max_size=4
    ),
    st.binary(max_size=8),
    st.sampled_from([None, "10.0", "10.1", "11", "11.1", "9.2", "\udcff"]),
    st.sampled_from([None, 0, 1, 253, 254, -253, 1 << 32]),
)
def test_states_and_encoders(
    entries: list[tuple[str, int, int]], metadata: bytes, target: str | None, window: int | None
) -> None:
    try:
        state = FdState(entries, metadata)
    except Exception as exc:
        _only_ours(exc)
        return
    _call(lambda: qemu.encode(state, target))
    _call(lambda: list(native.encode(state, window)))


@pytest.mark.parametrize("backend", BACKENDS)
@_settings(40)
@given(
    STREAMS, st.sampled_from(["close", "reset", "half-close"]), st.sampled_from(["native", "qemu"])
)
def test_exchange_with_a_hostile_peer(
    backend: tuple[str, dict[str, Any]], chunks: list[bytes], ending: str, codec: Codec
) -> None:
    async def exchange() -> None:
        with _hung_up_peer(chunks, ending) as (ours, state):
            stream = fdchannel.transports._socket.UnixSocketStream(ours, None)
            try:
                try:
                    (await fdchannel.receive_state(stream)).close()
                except Exception as exc:
                    _only_ours(exc)
                try:
                    await fdchannel.send_state(stream, state, codec)
                except Exception as exc:
                    _only_ours(exc)
            finally:
                await stream.aclose()

    _run(backend, exchange)


@contextmanager
def _hung_up_peer(chunks: list[bytes], ending: str) -> Iterator[tuple[socket.socket, FdState]]:
    """Our end of a socketpair whose peer sent ``chunks`` and ended so, and a
    state of one memfd to send back."""
    ours, theirs = socket.socketpair()
    memfd = os.memfd_create("ram0", os.MFD_CLOEXEC)
    try:
        for chunk in chunks:
            theirs.sendall(chunk)
        _end(theirs, ending)
        yield ours, FdState([NamedFd("ram0", 0, memfd)])
    finally:
        ours.close()
        theirs.close()
        os.close(memfd)


def _end(sock: socket.socket, how: str) -> None:
    if how == "half-close":
        sock.shutdown(socket.SHUT_WR)
    elif how == "reset":
        sock.close()
    else:
        sock.shutdown(socket.SHUT_RDWR)


# --------------------------------------------------------------------------
# relay and the handoff classes.


@pytest.mark.parametrize("backend", BACKENDS)
@_settings(25)
@given(data=st.data())
def test_relay_and_handoff(backend: tuple[str, dict[str, Any]], data: st.DataObject) -> None:
    with _sandbox() as (tmp, own):
        targets = _targets(tmp, own)
        # A relay between the test's own descriptors copies for as long as the
        # test holds their far ends (as it should): relay only what it opens.
        source, dest = data.draw(_targets(tmp, [])), data.draw(_targets(tmp, []))
        channels = data.draw(st.lists(st.one_of(targets, TEXT), max_size=3))
        chunks = data.draw(STREAMS)

        async def drive() -> None:
            try:
                await fdchannel.relay(source, dest, accept_timeout=0.05, connect_timeout=0.05)
            except Exception as exc:
                _only_ours(exc)
            await _handoff(channels, chunks)

        _run(backend, drive)


async def _handoff(channels: list[str], chunks: list[bytes]) -> None:
    """Both handoff classes on hostile channel lists; the incoming one also fed
    hostile bytes when its channels are usable."""
    try:
        async with fdchannel.Outgoing(channels) as out:
            await out.send_cpr(FdState(), timeout=0.05)
    except Exception as exc:
        _only_ours(exc)
    try:
        async with fdchannel.Incoming(channels) as inc:
            await inc.listen_cpr()
            cpr = inc.cpr
            async with anyio.create_task_group() as tg:  # ours: its group is unwrapped
                tg.start_soon(_hostile_sender, cpr, chunks)
                with await inc.receive_cpr(timeout=0.2):
                    await inc.listen_main()
    except BaseExceptionGroup as group:
        for leaf in _leaves(group):
            _only_ours(leaf)
    except Exception as exc:
        _only_ours(exc)


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


async def _hostile_sender(cpr: Channel, chunks: list[bytes]) -> None:
    try:
        stream = await fdchannel.connect(cpr)
    except FdChannelError:
        return
    async with stream:
        try:
            for chunk in chunks:
                await stream.send(chunk)
            await stream.send_eof()
        except (FdChannelError, anyio.BrokenResourceError):
            pass


# --------------------------------------------------------------------------
# The command line: an exit status, never "unexpected".


def _argv(tmp: Path) -> st.SearchStrategy[list[str]]:
    # Not the test's own descriptors: a relay between two of them would copy
    # for as long as the test holds their far ends, which is what it is for.
    target = _targets(tmp, [])
    word = st.one_of(
        target,
        TEXT,
        st.sampled_from(
            [
                "--json",
                "--debug",
                "--quiet",
                "--no-ack",
                "--listen",
                "--mode",
                "normal",
                "--codec",
                "qemu",
                "--metadata",
                "x",
            ]
        ),
    )
    item = st.builds(
        lambda n, s: f"{n}={s}",
        NAME,
        st.one_of(target, st.sampled_from([str(tmp), *NUMBERS, "fd:web"])),
    )
    timeout = ["--timeout", "0.05"]
    return st.one_of(
        st.builds(lambda ws: ["probe", *timeout, *ws], st.lists(word, max_size=3)),
        st.builds(lambda t: ["probe", "--listen", *timeout, t], target),
        st.builds(lambda a, b: ["relay", "--quiet", *timeout, a, b], target, target),
        st.builds(
            lambda t, items: ["send", *timeout, t, *items], target, st.lists(item, max_size=2)
        ),
        st.builds(
            lambda t, c: ["recv", *timeout, t, "--", c],
            target,
            st.sampled_from(["true", "/nonexistent", str(tmp)]),
        ),
        st.lists(word, max_size=4),
    )


@_settings(80)
@given(data=st.data())
def test_command_line(capsys: pytest.CaptureFixture[str], data: st.DataObject) -> None:
    with _sandbox() as (tmp, _):
        argv = data.draw(_argv(tmp))
        try:
            status = main(argv)
        except SystemExit as exit:  # --help and --version
            status = int(exit.code or 0)
        captured = capsys.readouterr()
    assert status in (0, 1, 2), (argv, status, captured.err)
    assert "unexpected" not in captured.err, (argv, captured.err)


# --------------------------------------------------------------------------
# The blocking layer: the same entry points, no event loop.

#: Timeouts as a caller may pass them: whatever the async layer takes (NaN is
#: refused by both layers as anyio refuses it, a ValueError: no number of seconds).
TIMEOUTS = st.one_of(
    st.sampled_from(
        [
            None,
            0,
            0.01,
            -1,
            math.inf,
            -math.inf,
            1e300,
            2**31,
            2**31 / 1000,
            2**63,
            10**30,
        ]
    ),
    st.floats(min_value=-1e308, max_value=1e308),
    st.integers(min_value=-(1 << 70), max_value=1 << 70),
)


@_settings(60)
@given(data=st.data())
def test_blocking_connect_and_listen(data: st.DataObject) -> None:
    with _sandbox() as (tmp, own):
        target = data.draw(_targets(tmp, own))
        try:
            blocking.connect(target, timeout=0.05).close()
        except Exception as exc:
            _only_ours(exc)
        try:
            blocking.listen(target).close()
        except Exception as exc:
            _only_ours(exc)


@_settings(60)
@given(
    STREAMS, st.sampled_from(["close", "reset", "half-close"]), st.sampled_from(CODECS), TIMEOUTS
)
def test_blocking_exchange_with_a_hostile_peer(
    chunks: list[bytes], ending: str, codec: Codec, timeout: float | None
) -> None:
    """Whatever the peer sent, it has hung up: every call returns at once, so any
    timeout the caller passes must be taken, not only the ones poll() can."""
    with _hung_up_peer(chunks, ending) as (ours, state), blocking.Stream(ours, None) as stream:
        try:
            blocking.receive_state(stream, timeout=timeout).close()
        except Exception as exc:
            _only_ours(exc)
        _call(lambda: blocking.send_state(stream, state, codec))
        _call(lambda: stream.receive(timeout=timeout))


@_settings(40)
@given(TIMEOUTS, STREAMS)
def test_blocking_waits_take_any_timeout(timeout: float | None, chunks: list[bytes]) -> None:
    """accept, receive_cpr and receive while they really wait: a peer comes once
    the call sits in poll(2), so any timeout the caller passes reaches the wait."""
    with _sandbox() as (tmp, _):
        path = f"unix:{tmp}/l"
        waiter = threading.get_native_id()

        def arrive(done: threading.Event) -> None:
            # The waiter may have given up already (a timeout that passed): then so do we.
            with socket.socket(socket.AF_UNIX) as peer, contextlib.suppress(OSError):
                _once_waiting(waiter, done)
                peer.connect(str(tmp / "l"))
                _once_waiting(waiter, done)
                for chunk in chunks:
                    peer.sendall(chunk)
                peer.shutdown(socket.SHUT_WR)
                _once_waiting(waiter, done)

        with _meanwhile(arrive):
            try:
                with blocking.listen(path) as listener, listener.accept(timeout=timeout) as stream:
                    stream.receive(timeout=timeout)
            except Exception as exc:
                _only_ours(exc)
        with _meanwhile(arrive):
            try:
                with blocking.Incoming([f"cpr,{_keyval(path)}"]) as incoming:
                    incoming.listen_cpr()
                    incoming.receive_cpr(timeout=timeout).close()
            except Exception as exc:
                _only_ours(exc)


def _once_waiting(tid: int, done: threading.Event, limit: float = 5.0) -> None:
    """Return once thread ``tid`` sits in poll(2), or is ``done``, or after ``limit`` s."""
    deadline = time.monotonic() + limit
    while not done.is_set() and time.monotonic() < deadline:
        with contextlib.suppress(OSError):  # the thread may have ended
            if in_poll(tid):
                return
        time.sleep(0.001)


@contextmanager
def _meanwhile(action: Callable[[threading.Event], None]) -> Iterator[None]:
    """Run ``action`` in a thread while the body runs; it hears when the body is done."""
    done = threading.Event()
    thread = threading.Thread(target=action, args=(done,))
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(10)


@_settings(25)
@given(data=st.data())
def test_blocking_handoff(data: st.DataObject) -> None:
    with _sandbox() as (tmp, own):
        targets = _targets(tmp, own)
        channels = data.draw(st.lists(st.one_of(targets, TEXT), max_size=3))
        chunks = data.draw(STREAMS)
        try:
            with blocking.Outgoing(channels) as out:
                out.send_cpr(FdState(), timeout=0.05)
        except Exception as exc:
            _only_ours(exc)
        try:
            with blocking.Incoming(channels) as inc:
                inc.listen_cpr()
                sender = threading.Thread(target=_blocking_hostile_sender, args=(inc.cpr, chunks))
                sender.start()
                try:
                    with inc.receive_cpr(timeout=0.2):
                        inc.listen_main(timeout=0.2)
                finally:
                    sender.join(5)
        except Exception as exc:
            _only_ours(exc)


def _blocking_hostile_sender(cpr: Channel, chunks: list[bytes]) -> None:
    try:
        with blocking.connect(cpr, timeout=1) as stream:
            for chunk in chunks:
                stream.send(chunk, timeout=1)
            stream.send_eof()
    except FdChannelError:
        pass


# --------------------------------------------------------------------------
# cpr-exec: a state an old QEMU left, or something else under its name.

EXEC_STATES = st.one_of(
    STREAMS.map(b"".join),
    st.builds(lambda tail: b"QCPR\0\0\0\1" + tail, st.binary(max_size=200)),
)


@_settings(200)
@given(
    st.one_of(st.none(), st.sampled_from([*NUMBERS, "memfd"]), TEXT),
    EXEC_STATES,
    st.sampled_from([None, -1, 1 << 31, 1 << 64, "memfd"]),
)
def test_read_cpr_exec_state(variable: str | None, content: bytes, fd: object) -> None:
    memfd = os.memfd_create("QEMU_CPR_EXEC_STATE", os.MFD_CLOEXEC)
    try:
        os.write(memfd, content)
        environ = {} if variable is None else {CPR_EXEC_STATE_VARIABLE: variable}
        if variable == "memfd":
            environ[CPR_EXEC_STATE_VARIABLE] = str(memfd)
        number = memfd if fd == "memfd" else fd
        try:
            read_cpr_exec_state(number, environ)  # type: ignore[arg-type]
        except Exception as exc:
            _only_ours(exc)
    finally:
        os.close(memfd)


# --------------------------------------------------------------------------
# The upgrader: what a generation inherits, listens on and is asked.

LINEAGE_FIELDS = ("cpr", "control", "handover", "parent", "generation")


def _lineages() -> st.SearchStrategy[str]:
    """``FDCHANNEL_UPGRADE`` texts: meant for us (our parent), naming no open descriptor."""
    number = st.sampled_from([n for n in NUMBERS if n not in ("0", "1")] + ["2147483648"])
    fields = st.fixed_dictionaries({key: number for key in LINEAGE_FIELDS}).map(
        lambda f: {**f, "parent": str(os.getppid())}
    )
    text = fields.map(lambda f: ",".join(f"{k}={v}" for k, v in f.items()))
    return st.one_of(text, TEXT, text.map(lambda t: t + ",x=1")).filter(_fits_an_environment)


def _fits_an_environment(text: str) -> bool:
    """Whether a variable can hold ``text`` at all (no NUL, encodable)."""
    try:
        return b"\0" not in os.fsencode(text)
    except UnicodeError:
        return False


@pytest.mark.parametrize("backend", BACKENDS)
@_settings(30)
@given(data=st.data())
def test_upgrader(backend: tuple[str, dict[str, Any]], data: st.DataObject) -> None:
    with _sandbox() as (tmp, own):
        lineage = data.draw(st.one_of(st.none(), _lineages()))
        name = data.draw(st.one_of(NAME, TEXT))
        address = data.draw(st.one_of(_targets(tmp, own), _datagram_targets(tmp)))
        command = data.draw(st.sampled_from([["true"], ["sh", "-c", "exit 3"], [], ["\0"]]))

        async def generation() -> None:
            with _environment(lineage_env.ENV, lineage):
                async with Upgrader(
                    trigger=None,
                    pidfile=tmp / "app.pid",
                    control=tmp / "ctl",
                    start_timeout=0.05,
                    ready_timeout=0.05,
                ) as up:
                    await up.listen(name, address)
                    with await up.ready():
                        pass
                    await up.upgrade(command)

        _run(backend, generation)


@contextmanager
def _environment(name: str, value: str | None) -> Iterator[None]:
    old = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


@_settings(60)
@given(
    st.one_of(TEXT, st.sampled_from(NUMBERS)), STREAMS, st.sampled_from(["file", "socket", "dir"])
)
def test_request_upgrade(content: str, answer: list[bytes], kind: str) -> None:
    """A pidfile or control socket that is no server's: signal 0 only, so that
    whatever a pidfile names is never disturbed."""
    with _sandbox() as (tmp, _):
        path = tmp / "target"
        server: threading.Thread | None = None
        if kind == "file":
            path.write_text(content, encoding="utf-8", errors="surrogatepass")
        elif kind == "dir":
            path.mkdir()
        else:
            server = _answering(path, b"".join(answer))
        try:
            request_upgrade(path, timeout=0.05, trigger=0)
        except Exception as exc:
            _only_ours(exc)
        finally:
            if server is not None:
                server.join(5)


def _answering(path: Path, answer: bytes) -> threading.Thread:
    """A control socket at ``path`` answering one asker with ``answer``."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen()
    listener.settimeout(5)

    def answer_once() -> None:
        with listener:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.sendall(answer)

    thread = threading.Thread(target=answer_once)
    thread.start()
    return thread
