"""Each untyped error the hostile review found is now in the FdChannelError tree.

One row per input: the library call raises the named class, and the
command line reports it as exit status 2 (bad input) or 1 (a problem
found), never as "unexpected".
"""

from __future__ import annotations

import json
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

import fdchannel
from fdchannel.cli import main
from fdchannel.errors import AddressError, ConnectError, TransportError

pytestmark = pytest.mark.anyio

LONG = "1" * 5000  # past Python's 4300-digit limit for int()

#: (text, the error parse_channel raises, or None if it parses)
PARSED = [
    pytest.param(f"tcp:127.0.0.1:1,to={LONG}", None, id="uri-sscanf-int"),
    pytest.param(f"file:/x,offset={LONG}", AddressError, id="uri-size"),
    pytest.param(
        f"main,addr.transport=socket,addr.type=inet,addr.host=h,addr.port=1,addr.to={LONG}",
        AddressError,
        id="keyval-uint",
    ),
    pytest.param(f"main,addr.transport=exec,addr.args.{LONG}=x", AddressError, id="keyval-index"),
    pytest.param(
        '{"channel-type": "main", "addr": {"transport": "file", "filename": "/x", "offset": '
        f"{LONG}}}}}",
        AddressError,
        id="json-number",
    ),
    pytest.param(f"vsock:{LONG}:1", AddressError, id="vsock"),
]


@pytest.mark.parametrize(("text", "error"), PARSED)
def test_long_integers_parse_or_fail_typed(text: str, error: type[Exception] | None) -> None:
    if error is None:
        fdchannel.parse_channel(text)
    else:
        with pytest.raises(error):
            fdchannel.parse_channel(text)


def _dgram(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    return sock


#: (URI, verb, the error, the CLI's exit status for ``probe --listen`` or ``send``)
OPENED = [
    pytest.param("fd:99999999999999999999", "connect", ConnectError, id="fd-overflow-connect"),
    pytest.param("fd:99999999999999999999", "listen", TransportError, id="fd-overflow-listen"),
    pytest.param(f"fd:{LONG}", "listen", TransportError, id="fd-long"),
    pytest.param("tcp:127.0.0.1:\u0661\u0662", "listen", AddressError, id="unicode-port"),
    pytest.param("tcp:\udcff:1", "connect", AddressError, id="idna-host"),
    pytest.param("unix:{dir}/dgram", "connect", ConnectError, id="eprototype-connect"),
    pytest.param("unix:{dir}/dgram", "listen", TransportError, id="eprototype-listen"),
]


@pytest.mark.parametrize(("uri", "verb", "error"), OPENED)
async def test_opening_fails_typed(
    sockdir: Path, uri: str, verb: str, error: type[Exception]
) -> None:
    uri = uri.format(dir=sockdir)
    dgram = _dgram(sockdir / "dgram")
    try:
        opener: Callable[[str], Awaitable[object]] = getattr(fdchannel, verb)
        with pytest.raises(error):
            await opener(uri)
    finally:
        dgram.close()


@pytest.mark.parametrize(("uri", "verb", "error"), OPENED)
def test_command_line_reports_them(
    capsys: pytest.CaptureFixture[str], sockdir: Path, uri: str, verb: str, error: type[Exception]
) -> None:
    uri = uri.format(dir=sockdir)
    dgram = _dgram(sockdir / "dgram")
    try:
        argv = ["probe", "--listen", uri] if verb == "listen" else ["send", uri]
        status = main([*argv[:1], "--timeout", "0.5", *argv[1:]])
    finally:
        dgram.close()
    err = capsys.readouterr().err
    assert status == (2 if error is AddressError else 1), err
    assert "unexpected" not in err


@pytest.mark.parametrize("name", ["4294967296", "1" * 5000, "\u0661"])
def test_probe_reach_of_hostile_descriptor_numbers(
    capsys: pytest.CaptureFixture[str], name: str
) -> None:
    assert main(["probe", "--json", f"fd:{name}"]) == 1
    captured = capsys.readouterr()
    assert "unexpected" not in captured.err
    assert json.loads(captured.out)["channels"][0]["reachable"]["ok"] is False


@pytest.mark.parametrize(
    "item", ["0=4294967296", "x=" + "1" * 5000, "x:" + "9" * 5000 + "=/", "x=\u0661\u0662"]
)
def test_send_sources_with_hostile_numbers(capsys: pytest.CaptureFixture[str], item: str) -> None:
    assert main(["send", "--timeout", "0.1", "unix:/nonexistent/cpr", item]) in (1, 2)
    err = capsys.readouterr().err
    assert "unexpected" not in err
    assert len(err) < 400
