"""The URI grammar (SPEC section 2) against QEMU 10.0's accept/reject decisions.

Each table row is one decision of ``migrate_uri_parse`` and the functions it
calls; the comments name the QEMU quirk a row pins down.
"""

from __future__ import annotations

from typing import Any

import pytest

from fdchannel import (
    Address,
    AddressError,
    ExecAddress,
    FdAddress,
    FileAddress,
    RdmaAddress,
    TcpAddress,
    UnixAddress,
    VsockAddress,
    parse_address,
)
from fdchannel.address import address_from_qapi, address_to_qapi

U64 = (1 << 64) - 1


def unix_qapi(path: str, **extra: Any) -> dict[str, Any]:
    return {"transport": "socket", "type": "unix", "path": path, **extra}


def inet_qapi(host: str, port: str, **extra: Any) -> dict[str, Any]:
    return {"transport": "socket", "type": "inet", "host": host, "port": port, **extra}


def file_qapi(path: str, offset: int = 0) -> dict[str, Any]:
    return {"transport": "file", "filename": path, "offset": offset}


def sh(command: str) -> ExecAddress:
    return ExecAddress(("/bin/sh", "-c", command))


def sh_qapi(command: str) -> dict[str, Any]:
    return {"transport": "exec", "args": ["/bin/sh", "-c", command]}


# (URI, the address it names, its QAPI MigrationAddress)
ACCEPTED: list[tuple[str, Address, dict[str, Any]]] = [
    # unix: everything after the prefix is the path, commas included.
    ("unix:/run/vm/main.sock", UnixAddress("/run/vm/main.sock"), unix_qapi("/run/vm/main.sock")),
    ("unix:/tmp/s,abstract=on", UnixAddress("/tmp/s,abstract=on"), unix_qapi("/tmp/s,abstract=on")),
    ("unix:relative/sock", UnixAddress("relative/sock"), unix_qapi("relative/sock")),
    ("unix:@name", UnixAddress("@name"), unix_qapi("@name")),  # not abstract: just a name
    # tcp: the three host forms.
    (
        "tcp:[::1]:4446,keep-alive=on",
        TcpAddress("::1", "4446", keep_alive=True),
        inet_qapi("::1", "4446", **{"keep-alive": True}),
    ),
    ("tcp::4446", TcpAddress("", "4446"), inet_qapi("", "4446")),
    ("tcp:localhost:4446", TcpAddress("localhost", "4446"), inet_qapi("localhost", "4446")),
    ("tcp:192.0.2.1:http", TcpAddress("192.0.2.1", "http"), inet_qapi("192.0.2.1", "http")),
    # Options: found by strstr anywhere after the port, any order.
    ("tcp:h:1,to=10", TcpAddress("h", "1", to=10), inet_qapi("h", "1", to=10)),
    ("tcp:h:1,ipv4", TcpAddress("h", "1", ipv4=True), inet_qapi("h", "1", ipv4=True)),
    (
        "tcp:h:1,ipv4=off,ipv6=off",
        TcpAddress("h", "1", ipv4=False, ipv6=False),
        inet_qapi("h", "1", ipv4=False, ipv6=False),
    ),  # parses; fails when used
    (
        "tcp:h:1,ipv6=on,to=5,keep-alive=off,mptcp",
        TcpAddress("h", "1", to=5, ipv6=True, keep_alive=False, mptcp=True),
        inet_qapi("h", "1", to=5, ipv6=True, mptcp=True, **{"keep-alive": False}),
    ),
    ("tcp:h:1,foo=bar,numeric=on", TcpAddress("h", "1"), inet_qapi("h", "1")),  # ignored
    ("tcp:h:1,to=5,to=x", TcpAddress("h", "1", to=5), inet_qapi("h", "1", to=5)),  # first wins
    ("tcp:h:1,ipv4,ipv4=junk", TcpAddress("h", "1", ipv4=True), inet_qapi("h", "1", ipv4=True)),
    ("tcp:h:1,ipv6=on,x,,y", TcpAddress("h", "1", ipv6=True), inet_qapi("h", "1", ipv6=True)),
    ("tcp:h:1,to=7,", TcpAddress("h", "1", to=7), inet_qapi("h", "1", to=7)),
    # to= is sscanf %d (skips white space, takes a sign) stored into a uint16_t.
    ("tcp:h:1,to= +7", TcpAddress("h", "1", to=7), inet_qapi("h", "1", to=7)),
    ("tcp:h:1,to=-1", TcpAddress("h", "1", to=65535), inet_qapi("h", "1", to=65535)),
    ("tcp:h:1,to=65537", TcpAddress("h", "1", to=1), inet_qapi("h", "1", to=1)),
    ("tcp:h:1,to=4294967296", TcpAddress("h", "1", to=0), inet_qapi("h", "1", to=0)),
    (
        "tcp:h:1,to=99999999999999999999",
        TcpAddress("h", "1", to=65535),
        inet_qapi("h", "1", to=65535),
    ),  # strtol saturates, the int keeps the low bits
    # sscanf field widths: a port is cut at 32 bytes, the rest searched for options.
    ("tcp::" + "1" * 40, TcpAddress("", "1" * 32), inet_qapi("", "1" * 32)),
    (
        "tcp:h:" + "9" * 32 + "x,to=3",
        TcpAddress("h", "9" * 32, to=3),
        inet_qapi("h", "9" * 32, to=3),
    ),
    ("tcp:h:" + "é" * 17, TcpAddress("h", "é" * 16), inet_qapi("h", "é" * 16)),  # bytes count
    ("tcp:" + "h" * 64 + ":1", TcpAddress("h" * 64, "1"), inet_qapi("h" * 64, "1")),
    ("tcp:::1:5", TcpAddress("", ":1:5"), inet_qapi("", ":1:5")),  # ':' form: port is ':1:5'
    ("tcp:a,b:1", TcpAddress("a,b", "1"), inet_qapi("a,b", "1")),
    ("tcp:[[x]:1", TcpAddress("[x", "1"), inet_qapi("[x", "1")),
    # rdma parses like tcp.
    (
        "rdma:192.0.2.1:4446",
        RdmaAddress("192.0.2.1", "4446"),
        {"transport": "rdma", "host": "192.0.2.1", "port": "4446"},
    ),
    (
        "rdma:[::1]:1,ipv6",
        RdmaAddress("::1", "1", ipv6=True),
        {"transport": "rdma", "host": "::1", "port": "1", "ipv6": True},
    ),
    # vsock: two text fields, numbers are checked at use.
    (
        "vsock:3:1234",
        VsockAddress("3", "1234"),
        {"transport": "socket", "type": "vsock", "cid": "3", "port": "1234"},
    ),
    (
        "vsock:1:2:3",
        VsockAddress("1", "2:3"),
        {"transport": "socket", "type": "vsock", "cid": "1", "port": "2:3"},
    ),
    (
        "vsock:any:thing",
        VsockAddress("any", "thing"),
        {"transport": "socket", "type": "vsock", "cid": "any", "port": "thing"},
    ),
    # fd: a number or a name.
    ("fd:3", FdAddress("3"), {"transport": "socket", "type": "fd", "str": "3"}),
    (
        "fd:migration",
        FdAddress("migration"),
        {"transport": "socket", "type": "fd", "str": "migration"},
    ),
    # file: split at the first ',offset=', the rest is qemu_strtosz().
    ("file:/var/lib/vm.state", FileAddress("/var/lib/vm.state"), file_qapi("/var/lib/vm.state")),
    ("file:/x,offset=4096", FileAddress("/x", 4096), file_qapi("/x", 4096)),
    ("file:/x,offset=1K", FileAddress("/x", 1024), file_qapi("/x", 1024)),
    ("file:/x,offset=2m", FileAddress("/x", 2 << 20), file_qapi("/x", 2 << 20)),
    ("file:/x,offset=0x1000", FileAddress("/x", 4096), file_qapi("/x", 4096)),
    ("file:/x,offset=0x1b", FileAddress("/x", 27), file_qapi("/x", 27)),  # b is a hex digit
    ("file:/x,offset=1.5k", FileAddress("/x", 1536), file_qapi("/x", 1536)),
    ("file:/x,offset=.5k", FileAddress("/x", 512), file_qapi("/x", 512)),
    ("file:/x,offset= 8", FileAddress("/x", 8), file_qapi("/x", 8)),
    ("file:/x,offset=010", FileAddress("/x", 10), file_qapi("/x", 10)),  # no octal
    ("file:/x,offset=1.", FileAddress("/x", 1), file_qapi("/x", 1)),
    ("file:/x,offset=1e", FileAddress("/x", 1 << 60), file_qapi("/x", 1 << 60)),  # e is EiB
    ("file:/x,offset=15E", FileAddress("/x", 15 << 60), file_qapi("/x", 15 << 60)),
    ("file:/x,offset=18446744073709551615", FileAddress("/x", U64), file_qapi("/x", U64)),
    # The fraction rounds to 1.0, which QEMU adds to the integer part.
    ("file:/x,offset=1.99999999999999999999B", FileAddress("/x", 2), file_qapi("/x", 2)),
    ("file:/a,b,offset=1", FileAddress("/a,b", 1), file_qapi("/a,b", 1)),
    ("file:/x,offset", FileAddress("/x,offset"), file_qapi("/x,offset")),
    ("file:", FileAddress(""), file_qapi("")),  # accepted; fails when opened
    # exec: /bin/sh -c, the command as is.
    ("exec:cat > /tmp/state", sh("cat > /tmp/state"), sh_qapi("cat > /tmp/state")),
    ("exec:", sh(""), sh_qapi("")),
    ("exec:a,b;c", sh("a,b;c"), sh_qapi("a,b;c")),
    ("exec:printf '\\xff'", sh("printf '\\xff'"), sh_qapi("printf '\\xff'")),
]


@pytest.mark.parametrize(
    ("uri", "expected", "qapi"), ACCEPTED, ids=[row[0][:40] for row in ACCEPTED]
)
def test_accepted(uri: str, expected: Address, qapi: dict[str, Any]) -> None:
    address = parse_address(uri)
    assert address == expected
    assert type(address) is type(expected)
    assert address_to_qapi(address) == qapi
    assert address_from_qapi(qapi) == address
    assert parse_address(str(address)) == address


# (URI, its canonical text): str() normalises what QEMU reads loosely.
CANONICAL = [
    ("tcp:h:1,ipv4", "tcp:h:1,ipv4=on"),
    ("tcp:h:1,foo=bar,to=5,to=x", "tcp:h:1,to=5"),
    ("tcp:h:1,to=65537", "tcp:h:1,to=1"),
    ("tcp:[localhost]:1", "tcp:localhost:1"),
    ("tcp:[[x]:1", "tcp:[[x]:1"),
    ("rdma:[::1]:1,mptcp,ipv6=off", "rdma:[::1]:1,ipv6=off,mptcp=on"),
    ("file:/x,offset=1K", "file:/x,offset=1024"),
    ("file:/x,offset=0", "file:/x"),
    ("unix:/tmp/s,abstract=on", "unix:/tmp/s,abstract=on"),
]


@pytest.mark.parametrize(("uri", "canonical"), CANONICAL)
def test_canonical_text(uri: str, canonical: str) -> None:
    assert str(parse_address(uri)) == canonical


# (URI, a phrase the error must contain besides the input itself)
REJECTED: list[tuple[str, str]] = [
    ("", "unknown migration protocol"),
    ("tcp", "unknown migration protocol"),
    ("TCP:h:1", "unknown migration protocol"),  # prefixes are case-sensitive
    ("Unix:/x", "unknown migration protocol"),
    ("http://example.com/", "unknown migration protocol"),
    (" tcp:h:1", "unknown migration protocol"),
    ("unix:", "path is empty"),
    ("fd:", "name is empty"),
    ("tcp:", "host of 1 to 64 bytes"),
    ("tcp:h", "host of 1 to 64 bytes"),
    ("tcp:h:", "port is missing"),
    ("tcp::", "port is missing"),
    ("tcp:h:,to=5", "port is missing"),
    ("tcp:[::1]", "IPv6 host"),
    ("tcp:[::1]1", "IPv6 host"),
    ("tcp:[]:1", "IPv6 host"),
    ("tcp:" + "h" * 65 + ":1", "host of 1 to 64 bytes"),
    ("tcp:[" + "1" * 65 + "]:1", "IPv6 host"),
    ("tcp:" + "é" * 33 + ":1", "host of 1 to 64 bytes"),  # 33 characters, 66 bytes
    ("rdma:h", "expected rdma:HOST:PORT"),
    ("tcp:h:1,to=", "to= expects a number"),
    ("tcp:h:1,to=x", "to= expects a number"),
    ("tcp:h:1,to=5x", "to= expects a number"),
    ("tcp:h:1,to=+", "to= expects a number"),
    ("tcp:h:1,to=0x10", "to= expects a number"),  # %d reads the 0 and stops at x
    ("tcp:h:1,ipv4=yes", "expected ',ipv4', ',ipv4=on' or ',ipv4=off'"),
    ("tcp:h:1,ipv4x", "bad flag ',ipv4x'"),
    ("tcp:h:1,ipv6=on,,foo", "doubled comma"),
    ("tcp:h:1,keep-alive-count=5", "bad flag ',keep-alive-count=5'"),  # strstr ',keep-alive'
    ("tcp:h:1,mptcp=1", "bad flag ',mptcp=1'"),
    ("tcp:h:1,to=5,ipv4=no", "bad flag ',ipv4=no'"),
    ("vsock:1", "expected vsock:CID:PORT"),
    ("vsock:1:", "port is missing"),
    ("vsock::1", "expected vsock:CID:PORT"),
    ("vsock:1:2,x", "trailing characters"),
    ("vsock:1:" + "2" * 33, "trailing characters"),
    ("vsock:" + "1" * 33 + ":2", "CID of 1 to 32 bytes"),
    ("file:/x,offset=", "bad offset ''"),
    ("file:/x,offset=-1", "bad offset '-1'"),
    ("file:/x,offset=-0", "bad offset '-0'"),
    ("file:/x,offset=0x10k", "hex without suffix"),
    ("file:/x,offset=0x1.8", "bad offset"),
    ("file:/x,offset=0x", "bad offset"),
    ("file:/x,offset=1e3", "bad offset"),  # no exponents: e is a suffix, then junk
    ("file:/x,offset=1.5", "bad offset"),  # a fraction needs a suffix above B
    ("file:/x,offset=1.5B", "bad offset"),
    ("file:/x,offset=16E", "below 2**64"),
    ("file:/x,offset=18446744073709551616", "below 2**64"),
    ("file:/x,offset=5 ", "bad offset '5 '"),
    ("file:/x,offset=1,offset=2", "bad offset '1,offset=2'"),
    ("file:/x,offset=inf", "bad offset"),
    ("file:/x,offset=0b1000", "bad offset"),
    ("unix:/a\x00b", "NUL"),
    ("unix:/\ud800", "lone surrogate"),
]


@pytest.mark.parametrize(("uri", "phrase"), REJECTED, ids=[repr(row[0])[:40] for row in REJECTED])
def test_rejected(uri: str, phrase: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_address(uri)
    message = str(info.value)
    assert repr(uri) in message
    assert phrase in message
    assert info.value.uri == uri
    assert isinstance(info.value, ValueError)


def test_not_text() -> None:
    with pytest.raises(AddressError, match="is not a URI"):
        parse_address(b"unix:/x")  # type: ignore[arg-type]


# (QAPI MigrationAddress, the address, str() of it): forms only JSON/keyval can say
# print as keyval, which parse_address refuses rather than misreads.
FROM_QAPI: list[tuple[dict[str, Any], Address, str]] = [
    (
        unix_qapi("vm", abstract=True),
        UnixAddress("vm", abstract=True),
        "transport=socket,type=unix,path=vm,abstract=on",
    ),
    (
        unix_qapi("/x", tight=False),
        UnixAddress("/x", tight=False),
        "transport=socket,type=unix,path=/x,tight=off",
    ),
    (unix_qapi("/x", abstract=False, tight=True), UnixAddress("/x"), "unix:/x"),
    (unix_qapi(""), UnixAddress(""), "transport=socket,type=unix,path="),
    (
        {"transport": "exec", "args": ["/usr/bin/nc", "-U", "/s"]},
        ExecAddress(("/usr/bin/nc", "-U", "/s")),
        "transport=exec,args.0=/usr/bin/nc,args.1=-U,args.2=/s",
    ),
    (sh_qapi("cat"), sh("cat"), "exec:cat"),
    ({"transport": "exec", "args": []}, ExecAddress(()), "transport=exec"),
    (
        inet_qapi("h", "1", numeric=True),
        TcpAddress("h", "1", numeric=True),
        "transport=socket,type=inet,host=h,port=1,numeric=on",
    ),
    (
        inet_qapi(
            "h",
            "1",
            **{
                "keep-alive": True,
                "keep-alive-count": 3,
                "keep-alive-idle": 60,
                "keep-alive-interval": 5,
            },
        ),
        TcpAddress(
            "h", "1", keep_alive=True, keep_alive_count=3, keep_alive_idle=60, keep_alive_interval=5
        ),
        "transport=socket,type=inet,host=h,port=1,keep-alive=on,keep-alive-count=3,"
        "keep-alive-idle=60,keep-alive-interval=5",
    ),
    (inet_qapi("h", "1", to=65535), TcpAddress("h", "1", to=65535), "tcp:h:1,to=65535"),
    (
        inet_qapi("h", "1" * 40),
        TcpAddress("h", "1" * 40),
        "transport=socket,type=inet,host=h,port=" + "1" * 40,
    ),
    (
        inet_qapi("a]b:c", "1"),
        TcpAddress("a]b:c", "1"),
        "transport=socket,type=inet,host=a]b:c,port=1",
    ),
    ({"transport": "rdma", "host": "h", "port": "1"}, RdmaAddress("h", "1"), "rdma:h:1"),
    (
        {"transport": "socket", "type": "fd", "str": ""},
        FdAddress(""),
        "transport=socket,type=fd,str=",
    ),
    (
        {"transport": "socket", "type": "vsock", "cid": "1", "port": "2,3"},
        VsockAddress("1", "2,3"),
        "transport=socket,type=vsock,cid=1,port=2,,3",
    ),
    (file_qapi("/x", 0), FileAddress("/x"), "file:/x"),
    (
        file_qapi("/a,offset=1", 0),
        FileAddress("/a,offset=1"),
        "transport=file,filename=/a,,offset=1,offset=0",
    ),
    # QEMU's JSON visitor takes a negative integer for an unsigned member and wraps it.
    (file_qapi("/x", -1), FileAddress("/x", U64), f"file:/x,offset={U64}"),
]


@pytest.mark.parametrize(
    ("qapi", "expected", "text"), FROM_QAPI, ids=[row[2][:40] for row in FROM_QAPI]
)
def test_from_qapi(qapi: dict[str, Any], expected: Address, text: str) -> None:
    address = address_from_qapi(qapi)
    assert address == expected
    assert address_from_qapi(address_to_qapi(address)) == address
    assert str(address) == text
    if text.startswith("transport="):
        with pytest.raises(AddressError, match="unknown migration protocol"):
            parse_address(text)
    else:
        assert parse_address(text) == address


# (QAPI MigrationAddress, a phrase the error must contain)
QAPI_REJECTED: list[tuple[Any, str]] = [
    ({}, "'transport' is missing"),
    ({"transport": "tcp"}, "does not accept value 'tcp'"),
    ({"transport": "socket"}, "'type' is missing"),
    (unix_qapi("/x", bogus=1), "'bogus' is unexpected"),
    ({"transport": "socket", "type": "unix"}, "'path' is missing"),
    (unix_qapi(5), "expected string, got integer"),  # type: ignore[arg-type]
    (unix_qapi("/x", abstract="on"), "expected boolean, got string"),
    (inet_qapi("h", 1), "expected string, got integer"),  # type: ignore[arg-type]
    (inet_qapi("h", "1", to=65536), "from 0 to 65535"),
    (inet_qapi("h", "1", to=-1), "from 0 to 65535"),  # wraps to 2**64-1 first
    (inet_qapi("h", "1", to=True), "expected integer, got boolean"),
    (inet_qapi("h", "1", to=1.0), "expected integer, got number"),
    (inet_qapi("h", "1", **{"keep-alive-count": 1 << 32}), "from 0 to 4294967295"),
    ({"transport": "file", "filename": "/x"}, "'offset' is missing"),
    (file_qapi("/x", 1 << 64), "from 0 to 18446744073709551615"),
    (file_qapi("/x", -(1 << 63) - 1), "from 0 to 18446744073709551615"),
    ({"transport": "exec", "args": "cat"}, "expected array, got string"),
    ({"transport": "exec", "args": ["a", 1]}, "'args[1]': expected string"),
    ({"transport": "exec"}, "'args' is missing"),
    (unix_qapi("a\x00b"), "NUL"),
    ("unix:/x", "must be an object"),
]


@pytest.mark.parametrize(("qapi", "phrase"), QAPI_REJECTED, ids=[row[1] for row in QAPI_REJECTED])
def test_from_qapi_rejected(qapi: Any, phrase: str) -> None:
    with pytest.raises(AddressError) as info:
        address_from_qapi(qapi)
    assert repr(qapi) in str(info.value)
    assert phrase in str(info.value)
    assert info.value.uri is qapi


# Addresses check themselves when built by hand.
INVALID_FIELDS: list[tuple[Any, type[Exception], str]] = [
    (lambda: TcpAddress("h", "1", to=65536), AddressError, "to 65536 is out of range"),
    (lambda: TcpAddress("h", "1", keep_alive_idle=-1), AddressError, "out of range"),
    (lambda: FileAddress("/x", -1), AddressError, "out of range"),
    (lambda: UnixAddress("/a\x00"), AddressError, "NUL"),
    (lambda: ExecAddress(("sh", "a\x00")), AddressError, "NUL"),
    (lambda: ExecAddress("cat"), TypeError, "sequence of str"),  # type: ignore[arg-type]
    (lambda: UnixAddress(b"/x"), TypeError, "must be a str"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("build", "error", "phrase"), INVALID_FIELDS)
def test_fields_checked(build: Any, error: type[Exception], phrase: str) -> None:
    with pytest.raises(error, match=phrase):
        build()


def test_fields_normalised() -> None:
    assert TcpAddress("h", 80) == TcpAddress("h", "80")  # type: ignore[arg-type]
    assert FdAddress(3) == FdAddress("3")  # type: ignore[arg-type]
    assert ExecAddress(["a", "b"]).args == ("a", "b")  # type: ignore[arg-type]
