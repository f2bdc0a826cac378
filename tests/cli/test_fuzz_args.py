"""The argument parser fed arbitrary words: options or a usage error, never a crash."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fdchannel.cli import _parse
from fdchannel.cli._output import UsageError

from ..fuzzing import examples

WORDS = [
    "probe", "relay", "send", "recv", "--listen", "--no-ack", "--json", "--debug", "--help",
    "--timeout", "--mode", "cpr-transfer", "normal", "--codec", "native", "qemu", "--metadata",
    "--quiet", "--self-test", "--no-self-test", "--version", "--", "-", "unix:/tmp/x",
    "tcp:127.0.0.1:0", "fd:3", "exec:true", "ram=/dev/null", "a:1=3", "=", "1", "-1", "nan",
    "qemu-update", "--qmp", "--check", "--log", "cpr-exec",
]  # fmt: skip
ARGV = st.lists(st.one_of(st.sampled_from(WORDS), st.text(max_size=12)), max_size=8)


@settings(
    max_examples=examples(2000),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ARGV)
def test_parser_never_crashes(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code: object = None
    try:
        _parse(argv)
    except SystemExit as exit:  # argparse: --help/--version (0) or a usage error (2)
        code = exit.code
    except UsageError:
        code = 2
    assert code in (None, 0, 2)
    capsys.readouterr()  # argparse wrote help or an error; nobody needs it
