"""Channels (SPEC section 3): the URI, JSON and keyval spellings, and channel lists.

The tables pin QEMU 10.0's decisions: ``incoming_option_parse`` (system/vl.c),
its JSON dialect (qobject/json-*.c), keyval (util/keyval.c), the QObject input
visitor, and the channel-list checks of ``qmp_migrate``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from fdchannel import (
    Address,
    AddressError,
    Channel,
    ChannelError,
    ChannelType,
    ExecAddress,
    FdAddress,
    FileAddress,
    RdmaAddress,
    TcpAddress,
    UnixAddress,
    VsockAddress,
    parse_address,
    parse_channel,
    validate_channels,
)
from fdchannel.address import address_from_qapi, address_to_qapi

from .fuzzing import examples

MAIN, CPR = ChannelType.MAIN, ChannelType.CPR
U64 = (1 << 64) - 1


def main(addr: Address) -> Channel:
    return Channel(MAIN, addr)


def cpr(addr: Address) -> Channel:
    return Channel(CPR, addr)


def js(channel_type: str, **addr: Any) -> str:
    return json.dumps({"channel-type": channel_type, "addr": addr})


INET = "main,addr.transport=socket,addr.type=inet,addr.host=h,addr.port=1"
CPR_UNIX = '{"channel-type": "cpr", "addr": {"transport": "socket", "type": "unix", "path": "/x"}}'

# (input, the channel it names)
ACCEPTED: list[tuple[Any, Channel]] = [
    # A URI is a main channel.
    ("unix:/run/vm/main.sock", main(UnixAddress("/run/vm/main.sock"))),
    ("tcp:[::1]:4446,keep-alive=on", main(TcpAddress("::1", "4446", keep_alive=True))),
    ("exec:cat", main(ExecAddress(("/bin/sh", "-c", "cat")))),
    # JSON in QAPI MigrationChannel form, in QEMU's dialect.
    (CPR_UNIX, cpr(UnixAddress("/x"))),
    (
        "{'channel-type': 'cpr', 'addr': {'transport': 'socket', 'type': 'unix', 'path': '/x'}}",
        cpr(UnixAddress("/x")),
    ),  # single quotes are a QEMU extension
    (
        '{"channel-type":"main","addr":{"transport":"socket","type":"unix",'
        '"path":"\\/tmp\\/a\\u00e9\\ud83d\\ude00\\\'"}}',
        main(UnixAddress("/tmp/aé😀'")),
    ),
    (
        '{\n\t"channel-type" : "main" ,\r\n "addr": {"transport": "file", "filename": "/x",'
        ' "offset": 4096}}  \n',
        main(FileAddress("/x", 4096)),
    ),
    (
        js("main", transport="exec", args=["/usr/bin/nc", "-U", "/s"]),
        main(ExecAddress(("/usr/bin/nc", "-U", "/s"))),
    ),
    (
        js("main", transport="socket", type="vsock", cid="3", port="1234"),
        main(VsockAddress("3", "1234")),
    ),
    (
        js("main", transport="rdma", host="h", port="1", ipv6=True),
        main(RdmaAddress("h", "1", ipv6=True)),
    ),
    (
        js(
            "main",
            transport="socket",
            type="inet",
            host="h",
            port="1",
            numeric=False,
            to=9,
            ipv4=True,
            ipv6=False,
            mptcp=True,
            **{"keep-alive": True, "keep-alive-count": 4},
        ),
        main(
            TcpAddress(
                "h",
                "1",
                to=9,
                ipv4=True,
                ipv6=False,
                keep_alive=True,
                numeric=False,
                keep_alive_count=4,
                mptcp=True,
            )
        ),
    ),
    (
        js("main", transport="file", filename="/x", offset=-2),
        main(FileAddress("/x", U64 - 1)),
    ),  # negative JSON integers wrap for uint64
    (js("main", transport="file", filename="/x", offset=U64), main(FileAddress("/x", U64))),
    # keyval: a leading bare word is the channel-type; values are strings.
    ("cpr,addr.transport=socket,addr.type=unix,addr.path=/x", cpr(UnixAddress("/x"))),
    ("addr.path=/x,addr.type=unix,channel-type=cpr,addr.transport=socket", cpr(UnixAddress("/x"))),
    ("main,addr.transport=socket,addr.type=unix,addr.path=/a,,b", main(UnixAddress("/a,b"))),
    (
        "main,addr.transport=socket,addr.type=unix,addr.path=/a,addr.path=/b",
        main(UnixAddress("/b")),
    ),  # the last one wins
    ("main,addr.transport=socket,addr.type=unix,addr.path=,", main(UnixAddress(""))),
    ("main,addr.transport=socket,addr.type=unix,addr.path=x=y", main(UnixAddress("x=y"))),
    (
        "main,addr.transport=socket,addr.type=unix,addr.path=/x,addr.abstract=yes,addr.tight=n",
        main(UnixAddress("/x", abstract=True, tight=False)),
    ),
    (
        "main,addr.transport=socket,addr.type=unix,addr.path=/x,addr.abstract=false,addr.tight=on",
        main(UnixAddress("/x")),
    ),
    ("cpr,addr.transport=socket,addr.type=fd,addr.str=3", cpr(FdAddress("3"))),
    (
        "main,addr.transport=exec,addr.args.1=b,,c,addr.args.0=/bin/a",
        main(ExecAddress(("/bin/a", "b,c"))),
    ),
    # "0" and "00" are both index 0; the one QEMU's QDict iterates last wins.
    ("main,addr.transport=exec,addr.args.0=a,addr.args.00=b", main(ExecAddress(("b",)))),
    (
        "main,addr.transport=file,addr.filename=/x,addr.offset=0x1000",
        main(FileAddress("/x", 4096)),
    ),  # integers are base 0: hex ...
    (INET + ",addr.to=010", main(TcpAddress("h", "1", to=8))),  # ... and octal
    (INET + ",addr.to= +5", main(TcpAddress("h", "1", to=5))),
    (
        "main,addr.transport=file,addr.filename=/x,addr.offset=-1",
        main(FileAddress("/x", U64)),
    ),  # qemu_strtou64 wraps negatives
    (
        INET + ",addr.keep-alive=true,addr.keep-alive-idle=0x3c,addr.mptcp=off",
        main(TcpAddress("h", "1", keep_alive=True, keep_alive_idle=60, mptcp=False)),
    ),
    (
        "main,addr.transport=rdma,addr.host=h,addr.port=1,addr.ipv4=y",
        main(RdmaAddress("h", "1", ipv4=True)),
    ),
    # A mapping is the QAPI form with JSON types; Channels and Addresses pass through.
    (
        {"channel-type": "cpr", "addr": {"transport": "socket", "type": "unix", "path": "/x"}},
        cpr(UnixAddress("/x")),
    ),
    (cpr(FdAddress("7")), cpr(FdAddress("7"))),
    (UnixAddress("/x"), main(UnixAddress("/x"))),
]


@pytest.mark.parametrize(
    ("spec", "expected"), ACCEPTED, ids=[repr(row[0])[:50] for row in ACCEPTED]
)
def test_accepted(spec: Any, expected: Channel) -> None:
    channel = parse_channel(spec)
    assert channel == expected
    assert Channel.from_qapi(channel.to_qapi()) == channel
    assert parse_channel(str(channel)) == channel
    assert parse_channel(json.dumps(channel.to_qapi())) == channel


# The exact QAPI spelling (SPEC section 3).
TO_QAPI: list[tuple[Channel, dict[str, Any]]] = [
    (
        cpr(UnixAddress("/x")),
        {"channel-type": "cpr", "addr": {"transport": "socket", "type": "unix", "path": "/x"}},
    ),
    (
        main(UnixAddress("vm", abstract=True, tight=False)),
        {
            "channel-type": "main",
            "addr": {
                "transport": "socket",
                "type": "unix",
                "path": "vm",
                "abstract": True,
                "tight": False,
            },
        },
    ),
    (
        main(ExecAddress(("/bin/sh", "-c", "cat"))),
        {"channel-type": "main", "addr": {"transport": "exec", "args": ["/bin/sh", "-c", "cat"]}},
    ),
    (
        main(FileAddress("/x")),
        {"channel-type": "main", "addr": {"transport": "file", "filename": "/x", "offset": 0}},
    ),
    (
        main(TcpAddress("::1", "4446", to=4450, keep_alive=True)),
        {
            "channel-type": "main",
            "addr": {
                "transport": "socket",
                "type": "inet",
                "host": "::1",
                "port": "4446",
                "to": 4450,
                "keep-alive": True,
            },
        },
    ),
    (
        main(VsockAddress("3", "1")),
        {
            "channel-type": "main",
            "addr": {"transport": "socket", "type": "vsock", "cid": "3", "port": "1"},
        },
    ),
    (
        cpr(FdAddress("cpr")),
        {"channel-type": "cpr", "addr": {"transport": "socket", "type": "fd", "str": "cpr"}},
    ),
    (
        main(RdmaAddress("h", "1")),
        {"channel-type": "main", "addr": {"transport": "rdma", "host": "h", "port": "1"}},
    ),
]


@pytest.mark.parametrize(("channel", "qapi"), TO_QAPI, ids=[str(row[0])[:40] for row in TO_QAPI])
def test_to_qapi(channel: Channel, qapi: dict[str, Any]) -> None:
    assert channel.to_qapi() == qapi
    assert Channel.from_qapi(qapi) == channel


# (JSON, keyval): both spellings of one channel.
SAME: list[tuple[str, str]] = [
    (CPR_UNIX, "cpr,addr.transport=socket,addr.type=unix,addr.path=/x"),
    (
        js("main", transport="exec", args=["a", "b,c"]),
        "main,addr.transport=exec,addr.args.0=a,addr.args.1=b,,c",
    ),
    (
        js("main", transport="file", filename="/s", offset=1 << 40),
        "main,addr.transport=file,addr.filename=/s,addr.offset=1099511627776",
    ),
    (
        js("cpr", transport="socket", type="unix", path="c", abstract=True),
        "cpr,addr.transport=socket,addr.type=unix,addr.path=c,addr.abstract=on",
    ),
    (
        js("main", transport="socket", type="inet", host="", port="0", to=7, ipv6=False),
        "main,addr.transport=socket,addr.type=inet,addr.host=,addr.port=0,addr.to=7,addr.ipv6=off",
    ),
]


@pytest.mark.parametrize(("json_text", "keyval_text"), SAME)
def test_json_and_keyval_agree(json_text: str, keyval_text: str) -> None:
    assert parse_channel(json_text) == parse_channel(keyval_text)


# (input, a phrase the error must contain besides the input itself)
REJECTED: list[tuple[Any, str]] = [
    # URIs
    ("xx:yy", "unknown migration protocol"),
    ("tcp:h", "expected tcp:HOST:PORT"),
    (":", "unknown migration protocol"),  # migrate_is_uri: zero letters then ':'
    # JSON syntax
    ("{", "expected a string key"),
    ('{"channel-type": "main"', "premature end of input"),
    ('{"channel-type": "main", "channel-type": "cpr"}', "duplicate key 'channel-type'"),
    (CPR_UNIX + " {}", "expected the end"),
    ('{"channel-type": "main" "addr": {}}', "expected one of ',}'"),
    ('{"channel-type": "main", "addr": {"a": 01}}', "expected one of ',}'"),
    ('{"channel-type": "main", "addr": {"a": 0e5}}', "expected one of ',}'"),
    ('{"a": NaN}', "expected a value"),
    ('{"a": nan}', "invalid keyword 'nan'"),
    ('{"a": %d}', "expected a value"),  # no interpolation in plain JSON
    ('{"a": "\\x"}', "invalid escape sequence"),
    ('{"a": "\\u12"}', "not a valid Unicode character"),
    ('{"a": "\\ud800"}', "not a valid Unicode character"),
    ('{"a": "\\udc00\\ud800"}', "not a valid Unicode character"),
    ('{"a": "\\ufffe"}', "not a valid Unicode character"),
    ('{"a": "\ufdd0"}', "invalid character"),
    ('{"a": "\\u0000"}', "NUL"),
    ('{"a": "tab\there"}', "control character"),
    ('{"a": "b}', "unterminated string"),
    ("{'a': 'b\"}", "unterminated string"),
    ('{"a": 1,}', "expected a string key"),
    ('{"a": [1,]}', "expected a value"),
    ('{"a": ' + "[" * 40 + "]" * 40 + "}", "nesting too deep"),
    # The MigrationChannel schema, JSON typing
    ('{"channel-type": "main"}', "'addr' is missing"),
    ('{"addr": {}}', "'channel-type' is missing"),
    ('{"channel-type": "primary", "addr": {}}', "does not accept value 'primary'"),
    ('{"channel-type": "main", "addr": []}', "'addr' must be an object, not array"),
    (CPR_UNIX[:-1] + ', "extra": 1}', "'extra' is unexpected"),
    (js("main", transport="socket", type="unix", path="/x", bogus=1), "'addr.bogus' is unexpected"),
    (js("main", transport="socket", type="inet", host="h", port=1), "expected string"),
    (js("main", transport="socket", type="inet", host="h", port="1", to=-1), "from 0 to 65535"),
    (js("main", transport="socket", type="inet", host="h", port="1", to="1"), "expected integer"),
    (js("main", transport="socket", type="unix", path="/x", abstract=1), "expected boolean"),
    (js("main", transport="file", filename="/x", offset=1.5), "expected integer, got number"),
    (js("main", transport="file", filename="/x", offset=1 << 64), "expected integer, got number"),
    (js("main", transport="file", filename="/x"), "'addr.offset' is missing"),
    (js("main", transport="exec", args=[1]), "'addr.args[0]': expected string"),
    (js("main", transport="exec", args="cat"), "expected array"),
    # keyval syntax
    ("", "'channel-type' is missing"),
    ("defer", "does not accept value 'defer'"),
    ("Main,addr.transport=exec,addr.args.0=x", "does not accept value 'Main'"),
    ("help", "help is not available"),
    ("main,?", "help is not available"),
    ("main,foo", "expected '=' after parameter 'foo'"),
    (",addr.transport=exec", "invalid parameter ''"),
    ("main,addr..type=x", "invalid parameter 'addr..type'"),
    ("main,0=x", "invalid parameter '0'"),
    ("main,addr.type x=1", "invalid parameter 'addr.type x'"),
    ("main,addr.args.0x=1", "invalid parameter 'addr.args.0x'"),
    ("main," + "a" * 128 + "=1", "is too long"),
    ("main,addr.transport=socket,addr.transport.x=1", "'addr.transport.*' used inconsistently"),
    ("main,addr.transport.x=1,addr.transport=socket", "'addr.transport.*' used inconsistently"),
    ("main,addr.transport=exec,addr.args.1=x", "'addr.args.0' missing"),
    ("main,addr.transport=exec,addr.args.0=x,addr.args.2=y", "'addr.args.1' missing"),
    ("main,addr.transport=exec,addr.args.0=x,addr.args.99999999999=y", "'addr.args.1' missing"),
    ("main,addr.transport=exec,addr.args.0=x,addr.args.y=z", "'addr.args.*' used inconsistently"),
    # The schema, keyval typing
    ("main,addr.transport=exec,addr.args=x", "expected array"),
    ("main,addr.transport=exec,addr.args.0.x=1", "'addr.args.0.*' are unexpected"),
    ("main,addr.transport=socket,addr.type=unix,addr.path.x=1", "'addr.path.*' are unexpected"),
    ("main,addr=x", "'addr' must be an object"),
    ("main,addr.transport=socket,addr.type=unix", "'addr.path' is missing"),
    (
        "main,addr.transport=socket,addr.type=unix,addr.path=/x,addr.bogus=1",
        "'addr.bogus' is unexpected",
    ),
    (INET + ",addr.to=65536", "from 0 to 65535"),
    (INET + ",addr.to=-1", "from 0 to 65535"),  # wraps to 2**64-1 first
    (INET + ",addr.to=08", "from 0 to 65535"),  # octal has no 8
    (INET + ",addr.to=", "from 0 to 65535"),
    (INET + ",addr.to=5 ", "from 0 to 65535"),
    (INET + ",addr.ipv4=maybe", "expects 'on' or 'off'"),
    (INET + ",addr.ipv4=ON", "expects 'on' or 'off'"),  # case-sensitive
    ("main,addr.transport=file,addr.filename=/x,addr.offset=1K", "expects an integer"),
    (
        "main,addr.transport=file,addr.filename=/x,addr.offset=18446744073709551616",
        "expects an integer",
    ),
    ("main,addr.transport=socket,addr.type=unix,addr.path=/a\x00", "NUL"),
    ("main,addr.transport=socket,addr.type=unix,addr.path=/\ud800", "lone surrogate"),
    # Neither text nor a mapping
    (42, "is not a channel"),
    ({"channel-type": "main"}, "'addr' is missing"),
    (
        {"channel-type": "main", "addr": {"transport": "socket", "type": "fd", "str": 3}},
        "expected string, got integer",
    ),
]


@pytest.mark.parametrize(("spec", "phrase"), REJECTED, ids=[repr(row[0])[:50] for row in REJECTED])
def test_rejected(spec: Any, phrase: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_channel(spec)
    assert repr(spec) in str(info.value)
    assert phrase in str(info.value)
    assert info.value.uri is spec


def test_from_qapi_rejects_like_parse_channel() -> None:
    with pytest.raises(AddressError, match=r"'addr\.path' is missing"):
        Channel.from_qapi({"channel-type": "cpr", "addr": {"transport": "socket", "type": "unix"}})


def test_channel_type_is_checked() -> None:
    assert Channel("cpr", UnixAddress("/x")).type is CPR  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'other'"):
        Channel("other", UnixAddress("/x"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs an address"):
        Channel(MAIN, "unix:/x")  # type: ignore[arg-type]


UNIX = main(UnixAddress("/run/main.sock"))
CPR_SOCK = cpr(UnixAddress("/run/cpr.sock"))
CPR_FD = cpr(FdAddress("5"))
FILE = main(FileAddress("/var/state"))

# (channels, mode, a phrase of the ChannelError or None, the (main, cpr) returned)
VALIDATION: list[tuple[list[Any], str, str | None, tuple[Channel, Channel | None] | None]] = [
    ([UNIX], "normal", None, (UNIX, None)),
    ([UNIX, CPR_SOCK], "normal", None, (UNIX, None)),  # a cpr channel is ignored
    ([UNIX, cpr(TcpAddress("h", "1"))], "normal", None, (UNIX, None)),
    ([FILE], "normal", None, (FILE, None)),
    ([CPR_SOCK, UNIX], "cpr-transfer", None, (UNIX, CPR_SOCK)),  # any order
    ([UNIX, CPR_FD], "cpr-transfer", None, (UNIX, CPR_FD)),  # checked when opened
    (
        [UNIX, cpr(UnixAddress("c", abstract=True))],
        "cpr-transfer",
        None,
        (UNIX, cpr(UnixAddress("c", abstract=True))),
    ),
    (
        [main(TcpAddress("h", "1")), CPR_SOCK],
        "cpr-transfer",
        None,
        (main(TcpAddress("h", "1")), CPR_SOCK),
    ),
    (
        [main(ExecAddress(("/bin/cat",))), CPR_SOCK],
        "cpr-transfer",
        None,
        (main(ExecAddress(("/bin/cat",))), CPR_SOCK),
    ),
    ([], "normal", "no main entry", None),
    ([CPR_SOCK], "normal", "no main entry", None),
    ([CPR_SOCK], "cpr-transfer", "no main entry", None),
    ([UNIX, UNIX], "normal", "more than one main entry", None),
    ([UNIX, CPR_SOCK, CPR_FD], "normal", "more than one cpr entry", None),
    ([UNIX, CPR_SOCK, CPR_FD], "cpr-transfer", "more than one cpr entry", None),
    ([UNIX], "cpr-transfer", "missing 'cpr' migration channel", None),
    ([UNIX, cpr(TcpAddress("h", "1"))], "cpr-transfer", "over the tcp transport", None),
    ([UNIX, cpr(VsockAddress("2", "1"))], "cpr-transfer", "over the vsock transport", None),
    ([UNIX, cpr(FileAddress("/x"))], "cpr-transfer", "over the file transport", None),
    ([UNIX, cpr(ExecAddress(("cat",)))], "cpr-transfer", "over the exec transport", None),
    ([UNIX, cpr(RdmaAddress("h", "1"))], "cpr-transfer", "over the rdma transport", None),
    ([FILE, CPR_SOCK], "cpr-transfer", "needs a stream", None),
    ([UNIX, CPR_SOCK], "cpr-reboot", "unknown migration mode", None),
    ([UNIX, "unix:/x"], "normal", "is not a Channel", None),
]


@pytest.mark.parametrize(
    ("channels", "mode", "phrase", "result"),
    VALIDATION,
    ids=[f"{row[1]}:{row[2] or 'ok'}" for row in VALIDATION],
)
def test_validate_channels(
    channels: list[Any], mode: str, phrase: str | None, result: tuple[Channel, Channel | None]
) -> None:
    if phrase is None:
        assert validate_channels(iter(channels), mode=mode) == result
    else:
        with pytest.raises(ChannelError, match=phrase):
            validate_channels(iter(channels), mode=mode)


# --------------------------------------------------------------------------
# Properties: no input gets past the parsers with anything but a typed error,
# and whatever they accept round-trips.


def _joined(pieces: str) -> st.SearchStrategy[str]:
    """Text glued from '|'-separated grammar fragments, so the interesting paths are hit."""
    return st.lists(st.sampled_from(pieces.split("|")), max_size=10).map("".join)


def _filled(templates: str, pieces: str) -> st.SearchStrategy[str]:
    """A '|'-separated template with its '@' replaced by glued fragments."""
    return st.builds(
        lambda template, hole: template.replace("@", hole),
        st.sampled_from(templates.split("|")),
        _joined(pieces),
    )


URI_PIECES = (
    "tcp:|rdma:|unix:|vsock:|fd:|file:|exec:|TCP:|[|]|:|::|,|,,|=|,to=|,ipv4|,ipv6|,keep-alive"
    "|,mptcp|=on|=off|,offset=|0x|-|+|.| |\t|k|K|M|E|e|B|b|0|1|7|9|65535|65536|4294967296"
    "|99999999999999999999|18446744073709551616|h|::1|é|\x00|\udcff|\ud800|/x|" + "a" * 33
)
KEYVAL_PIECES = (
    "main,|cpr,|help,|?|addr.|transport=|socket|exec|file|rdma|type=|inet|unix|vsock|fd|path="
    "|host=|port=|to=|args.|0|1|00|99999999999|.|=|,|,,|channel-type=|abstract=|tight="
    "|filename=|offset=|str=|cid=|ipv4=|keep-alive-count=|on|off|y|yes|ON|0x10|-1|010|08| "
    "|/x|_|__a.b_|é|\udcff|\x00"
)
KEYVAL_TEMPLATES = (
    "@"
    "|main,addr.transport=socket,addr.type=inet,addr.host=h,addr.port=1,addr.@"
    "|cpr,addr.transport=socket,addr.type=unix,addr.path=@"
    "|main,addr.transport=exec,addr.args.0=/bin/cat,addr.args.@"
    "|main,addr.transport=file,addr.filename=/x,addr.offset=@"
    "|main,addr.transport=rdma,addr.host=h,addr.port=@"
    "|cpr,addr.transport=socket,addr.type=fd,addr.str=@"
    "|main,addr.transport=socket,addr.type=vsock,addr.cid=1,addr.port=@"
)
JSON_PIECES = (
    '"channel-type": |"main"|"cpr"|"addr": {|"transport": "socket"|"transport": "exec"'
    '|"type": "unix"|"type": "inet"|"path": "/x"|"to": |"offset": |"args": [|"a"|'
    "'b'|]|}|{|,|:| |-1|0|01|1.5|1e3|0e5|65536|18446744073709551616|-9223372036854775809"
    '|true|null|nan|"\\u0000"|"\\ud800"|"\\ud83d\\ude00"|"\\x"|"\t"|"|\'|%d|é'
)
JSON_TEMPLATES = (
    "{@"
    '|{"channel-type": "main", "addr": {"transport": "socket", "type": "unix", "path": "@"}}'
    '|{"channel-type": "cpr", "addr": {"transport": "file", "filename": "/x", "offset": @}}'
    '|{"channel-type": "main", "addr": {"transport": "socket", "type": "inet", "host": "h",'
    ' "port": "1"@}}'
    '|{"channel-type": "main", "addr": {"transport": "exec", "args": [@]}}'
    "|{'channel-type': 'main', 'addr': {'transport': 'socket', 'type': 'fd', 'str': '@'}}"
)
TEXTS = st.one_of(
    st.text(max_size=20),
    _filled("@|tcp:@|tcp:h:1@|tcp:[::1]:@|file:/x,offset=@|vsock:1:@|rdma:@|fd:@", URI_PIECES),
    _filled(KEYVAL_TEMPLATES, KEYVAL_PIECES),
    _filled(JSON_TEMPLATES, JSON_PIECES),
)


def _empty_exec(channel: Channel) -> bool:
    """keyval cannot say an empty list, so an exec with no arguments has no text form."""
    return isinstance(channel.addr, ExecAddress) and not channel.addr.args


def _json_can_carry(char: str) -> bool:
    """Whether QEMU's JSON parser takes this character (util/unicode.c)."""
    cp = ord(char)
    surrogate = 0xD800 <= cp <= 0xDFFF
    noncharacter = 0xFDD0 <= cp <= 0xFDEF or (cp & 0xFFFE) == 0xFFFE
    return not (surrogate or noncharacter)


def _check_round_trips(channel: Channel) -> None:
    assert Channel.from_qapi(channel.to_qapi()) == channel
    raw = json.dumps(channel.to_qapi(), ensure_ascii=False)
    text = json.dumps(channel.to_qapi())
    # Bytes that are not UTF-8 (carried as surrogate escapes) and Unicode
    # noncharacters are fine in a C string from a URI or keyval, but QEMU's
    # JSON refuses them (is_valid_codepoint): so must we.
    if all(_json_can_carry(char) for char in raw):
        assert parse_channel(text) == channel
    else:
        with pytest.raises(AddressError):
            parse_channel(text)
    if not _empty_exec(channel):
        assert parse_channel(str(channel)) == channel


@settings(
    max_examples=examples(10_000),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(TEXTS)
def test_any_text_parses_or_fails_typed(text: str) -> None:
    try:
        address = parse_address(text)
    except AddressError:
        pass
    else:
        assert parse_address(str(address)) == address
        assert address_from_qapi(address_to_qapi(address)) == address
    try:
        channel = parse_channel(text)
    except (AddressError, ChannelError):
        pass
    else:
        _check_round_trips(channel)


KEYS = [
    "channel-type",
    "addr",
    "transport",
    "type",
    "path",
    "abstract",
    "tight",
    "host",
    "port",
    "to",
    "ipv4",
    "ipv6",
    "keep-alive",
    "keep-alive-count",
    "numeric",
    "mptcp",
    "cid",
    "str",
    "filename",
    "offset",
    "args",
]
SCALARS = st.one_of(
    st.sampled_from(
        [
            "main",
            "cpr",
            "socket",
            "unix",
            "inet",
            "file",
            "exec",
            "fd",
            "vsock",
            "rdma",
            "/x",
            "1",
            "",
            "on",
            0,
            -1,
            1 << 64,
            True,
            None,
            1.5,
        ]
    ),
    st.text(max_size=3),
    st.integers(min_value=-(1 << 65), max_value=1 << 65),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=examples(500), deadline=None, database=None)
@given(st.dictionaries(st.sampled_from(KEYS), JSON_VALUES, max_size=3), st.booleans())
def test_json_shapes_parse_or_fail_typed(data: dict[str, Any], as_text: bool) -> None:
    try:
        channel = parse_channel(json.dumps(data) if as_text else data)
    except AddressError:
        return
    _check_round_trips(channel)


TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=8)
UINT = st.none() | st.integers(min_value=0, max_value=(1 << 32) - 1)
FLAG = st.none() | st.booleans()
INET_FIELDS: dict[str, Any] = {
    "host": TEXT,
    "port": TEXT,
    "to": st.none() | st.integers(0, 65535),
    "ipv4": FLAG,
    "ipv6": FLAG,
    "keep_alive": FLAG,
    "numeric": FLAG,
    "keep_alive_count": UINT,
    "keep_alive_idle": UINT,
    "keep_alive_interval": UINT,
    "mptcp": FLAG,
}
ADDRESSES = st.one_of(
    st.builds(UnixAddress, TEXT, st.booleans(), st.booleans()),
    st.builds(TcpAddress, **INET_FIELDS),
    st.builds(RdmaAddress, **INET_FIELDS),
    st.builds(VsockAddress, TEXT, TEXT),
    st.builds(FdAddress, TEXT),
    st.builds(FileAddress, TEXT, st.integers(0, (1 << 64) - 1)),
    st.builds(ExecAddress, st.lists(TEXT, max_size=3).map(tuple)),
    st.builds(lambda cmd: ExecAddress(("/bin/sh", "-c", cmd)), TEXT),
)


@settings(max_examples=examples(1_000), deadline=None, database=None)
@given(st.sampled_from(ChannelType), ADDRESSES)
# Found by make fuzz: noncharacters, which QEMU's JSON refuses.
@example(ChannelType.MAIN, VsockAddress("", "\ufffe"))
@example(ChannelType.MAIN, VsockAddress("", "\ufdd0"))
def test_every_channel_round_trips(kind: ChannelType, addr: Address) -> None:
    channel = Channel(kind, addr)
    _check_round_trips(channel)
    text = str(addr)
    if _empty_exec(channel):
        assert text == "transport=exec"
    elif text.startswith("transport="):
        assert parse_channel(f"{kind.value},{_prefixed(text)}") == channel
    else:
        assert parse_address(text) == addr


def _prefixed(keyval: str) -> str:
    """Put 'addr.' before each key of an address's keyval text."""
    parts: Iterable[str] = keyval.replace(",,", "\0").split(",")
    return ",".join("addr." + part.replace("\0", ",,") for part in parts)
