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

import json
import os
import socket
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

import fdchannel
from fdchannel import Channel, FdChannelError, FdState, NamedFd
from fdchannel.cli import main
from fdchannel.codecs import Decoder, native, qemu
from fdchannel.transfer import Codec

from .conftest import BACKENDS
from .fuzzing import examples

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
        ours, theirs = socket.socketpair()
        stream = fdchannel.transports._socket.UnixSocketStream(ours, None)
        memfd = os.memfd_create("ram0", os.MFD_CLOEXEC)
        try:
            for chunk in chunks:
                theirs.sendall(chunk)
            _end(theirs, ending)
            try:
                (await fdchannel.receive_state(stream)).close()
            except Exception as exc:
                _only_ours(exc)
            try:
                await fdchannel.send_state(stream, FdState([NamedFd("ram0", 0, memfd)]), codec)
            except Exception as exc:
                _only_ours(exc)
        finally:
            await stream.aclose()
            theirs.close()
            os.close(memfd)

    _run(backend, exchange)


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
