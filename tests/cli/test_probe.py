"""``fdchannel probe``: addresses, QAPI, capabilities, sets, the self-test."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .helpers import Child, cli, run, unix_listening


@pytest.fixture
def stack() -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as stack:
        yield stack


def test_probe_json_document(sockdir: Path) -> None:
    uri = f"tcp:[::1]:{4446},keep-alive=on"
    done = run(cli("probe", "--json", "--timeout", "2", uri))
    assert done.returncode == 1
    document = done.json()
    assert document["ok"] is False and document["problems"] == 1
    (channel,) = document["channels"]
    assert channel["channel"] == "tcp:[::1]:4446,keep-alive=on"
    assert channel["address"] == {
        "class": "TcpAddress",
        "host": "::1",
        "port": "4446",
        "to": None,
        "ipv4": None,
        "ipv6": None,
        "keep_alive": True,
        "numeric": None,
        "keep_alive_count": None,
        "keep_alive_idle": None,
        "keep_alive_interval": None,
        "mptcp": None,
    }
    assert channel["qapi"] == {
        "channel-type": "main",
        "addr": {
            "transport": "socket",
            "type": "inet",
            "host": "::1",
            "port": "4446",
            "keep-alive": True,
        },
    }
    assert channel["capabilities"] == ["HALF_CLOSE", "MULTI_ACCEPT"]
    assert channel["reachable"]["ok"] is False
    assert channel["self_test"] == {
        "ran": False,
        "ok": None,
        "detail": "skipped: only unix sockets pass descriptors",
    }
    assert set(channel["timings_ms"]) == {"parse", "reach"}
    assert document["validation"] is None


def test_probe_human_text(sockdir: Path) -> None:
    cpr = "cpr,addr.transport=socket,addr.type=unix,addr.path=" + str(sockdir / "cpr.sock")
    done = run(cli("probe", cpr))
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[0] == f"{cpr}  (cpr channel)"
    assert (
        lines[1]
        == f"  address       UnixAddress(path='{sockdir}/cpr.sock', abstract=False, tight=True)"
    )
    assert lines[2] == (
        '  qapi          {"channel-type": "cpr", "addr": {"transport": "socket", "type": "unix", '
        f'"path": "{sockdir}/cpr.sock"}}}}'
    )
    assert lines[5] == "  self-test     skipped: nobody listens"
    assert lines[6].startswith("  timing        parse ") and lines[6].endswith(" ms")


def _validation(args: list[str]) -> tuple[int, dict[str, Any]]:
    done = run(cli("probe", "--json", *args))
    return done.returncode, done.json()["validation"]


@pytest.mark.parametrize(
    ("args", "valid", "mode", "words"),
    [
        (["unix:/a", "cpr,addr.transport=socket,addr.type=unix,addr.path=/b"], True,
         "cpr-transfer", "main unix:/a, cpr cpr,addr.transport=socket"),
        (["unix:/a", "unix:/b"], False, "normal", "more than one main entry"),
        (["--mode", "cpr-transfer", "unix:/a"], False, "cpr-transfer", "missing 'cpr'"),
        (["file:/a", '{"channel-type": "cpr", "addr": {"transport": "socket", "type": "unix", '
                     '"path": "/b"}}'], False, "cpr-transfer", "needs a stream"),
        (["unix:/a", "cpr,addr.transport=socket,addr.type=inet,addr.host=h,addr.port=1"], False,
         "cpr-transfer", "cannot pass descriptors"),
        (["cpr,addr.transport=socket,addr.type=unix,addr.path=/b", "--mode", "normal"], False,
         "normal", "no main entry"),
    ],
    ids=["ok", "two-main", "no-cpr", "file-main", "tcp-cpr", "no-main"],
)  # fmt: skip
def test_channel_set(args: list[str], valid: bool, mode: str, words: str) -> None:
    status, validation = _validation(args)
    assert status == 1  # nothing here is reachable, whatever the verdict on the set
    assert validation["ok"] is valid
    assert validation["mode"] == mode
    assert words in validation["detail"]


def test_self_test_against_probe_listen(sockdir: Path) -> None:
    uri = f"unix:{sockdir}/cpr.sock"
    with Child(cli("probe", "--listen", "--json", "--timeout", "20", uri)) as listener:
        listener.wait_for("listening on")
        done = run(cli("probe", "--json", uri))
        heard = listener.finish()
    assert done.returncode == 0, done.stdout
    (channel,) = done.json()["channels"]
    assert channel["reachable"]["listeners"][0]["pid"] == listener.popen.pid
    test = channel["self_test"]
    assert test["ran"] and test["ok"], test
    assert {"connect_ms", "send_ms", "ack_ms"} <= set(test)
    assert "self_test" in channel["timings_ms"]
    assert heard.returncode == 0
    received = heard.json()
    (entry,) = received["descriptors"]
    assert entry["name"] == "fdchannel-probe" and entry["id"] == 0
    memfd = entry["description"]
    assert memfd["kind"] == "memfd" and memfd["name"] == "fdchannel-probe"
    assert memfd["seals"] == ["seal", "shrink", "grow", "write"]
    assert received["peer"]["pid"] != listener.popen.pid
    assert received["metadata"]["text"].startswith("fdchannel probe self-test from pid ")


def test_self_test_is_not_forced_on_others(sockdir: Path, stack: contextlib.ExitStack) -> None:
    uri, _ = unix_listening(sockdir, stack)
    done = run(cli("probe", "--json", uri))
    (channel,) = done.json()["channels"]
    assert done.returncode == 0
    assert "not 'fdchannel probe --listen'" in channel["self_test"]["detail"]
    forced = run(cli("probe", "--json", "--self-test", "--timeout", "0.5", uri))
    (channel,) = forced.json()["channels"]
    assert forced.returncode == 1
    assert channel["self_test"]["ok"] is False
    assert "timed out" in channel["self_test"]["detail"]
