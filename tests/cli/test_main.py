"""The command line as a whole: help, exit statuses, errors as one line, lazy imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import cli, run


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "probe,relay,send,recv"),
        (["probe"], "--listen"),
        (["relay"], "FROM"),
        (["send"], "NAME=SOURCE"),
        (["recv"], "-- CMD"),
        (["qemu-update"], "--qmp,NEW-QEMU-ARGV"),
    ],
    ids=["top", "probe", "relay", "send", "recv", "qemu-update"],
)
def test_help(args: list[str], expected: str) -> None:
    done = run(cli(*args, "--help"))
    assert done.returncode == 0
    assert done.stdout.startswith("usage: fdchannel")
    assert all(word in done.stdout for word in expected.split(","))
    assert done.stderr == ""


def test_console_script_and_version() -> None:
    script = Path(sys.executable).with_name("fdchannel")
    if not script.exists():
        pytest.skip("the console script is not installed next to this interpreter")
    done = run([str(script), "--version"])
    assert done.returncode == 0
    assert done.stdout.startswith("fdchannel ")


# (args, exit status, words the one stderr line holds)
ERRORS = [
    pytest.param([], 2, "a command is required", id="no-command"),
    pytest.param(["frobnicate"], 2, "invalid choice", id="unknown-command"),
    pytest.param(["probe", "--bogus", "unix:/x"], 2, "unrecognized arguments", id="unknown-option"),
    pytest.param(["probe"], 2, "at least one URI", id="probe-nothing"),
    pytest.param(["probe", "bogus:x"], 2, "unknown migration protocol", id="unknown-scheme"),
    pytest.param(["probe", "TCP:h:1"], 2, "unknown migration protocol", id="scheme-case"),
    pytest.param(["probe", "unix:"], 2, "path is empty", id="empty-unix"),
    pytest.param(["probe", '{"channel-type": "main",'], 2, "invalid JSON", id="malformed-json"),
    pytest.param(
        ["probe", '{"channel-type": "main"}'], 2, "'addr' is missing", id="json-missing-member"
    ),
    pytest.param(["probe", "cpr,addr.transport=socket"], 2, "missing", id="keyval-incomplete"),
    pytest.param(["probe", "--timeout", "-1", "unix:/x"], 2, "positive", id="bad-timeout"),
    pytest.param(["probe", "--listen", "unix:/a", "unix:/b"], 2, "exactly one", id="listen-two"),
    pytest.param(["relay", "unix:/x"], 2, "required: TO", id="relay-missing-to"),
    pytest.param(["send", "unix:/x", "no-equals"], 2, "NAME=SOURCE", id="send-bad-item"),
    pytest.param(["send", "unix:/x", "a:x=/dev/null"], 2, "NAME=SOURCE", id="send-bad-id"),
    pytest.param(["send", "unix:/x", "a=/dev/null", "a=/dev/null", "a:1=/dev/null"], 2,
                 "a:1 is given twice", id="send-duplicate"),
    pytest.param(["send", "--codec", "qemu", "--metadata", "m", "unix:/x"], 2, "no metadata",
                 id="send-qemu-metadata"),
    pytest.param(["send", "unix:/x", "a=/nonexistent/file"], 1, "cannot open", id="send-no-file"),
    pytest.param(["send", "unix:/x", "a=987"], 1, "not open", id="send-closed-fd"),
    pytest.param(["send", "tcp:127.0.0.1:9", "a=/dev/null"], 1, "must pass descriptors",
                 id="send-over-tcp"),
    pytest.param(["recv", "unix:/x"], 2, "needs a command", id="recv-no-command"),
    pytest.param(["recv", "unix:/x", "true"], 2, "after '--'", id="recv-misplaced"),
    pytest.param(["recv", "unix:/x", "--", "/nonexistent/cmd"], 1, "cannot run",
                 id="recv-bad-command"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "status", "words"), ERRORS)
def test_errors_are_one_line(args: list[str], status: int, words: str) -> None:
    done = run(cli(*args))
    assert done.returncode == status, done.stderr
    line = done.error_line()
    assert line.startswith("fdchannel") and ": error: " in line
    assert words in line
    assert done.stdout == ""


def test_error_as_json() -> None:
    done = run(cli("probe", "--json", "bogus:x"))
    assert done.returncode == 2
    assert "unknown migration protocol" in done.error_line()
    assert done.json() == {
        "ok": False,
        "error": {
            "type": "AddressError",
            "message": done.error_line().removeprefix("fdchannel: error: "),
            "exit_status": 2,
        },
    }


def test_debug_shows_the_traceback() -> None:
    done = run(cli("probe", "--debug", "bogus:x"))
    assert done.returncode == 2
    assert "Traceback" in done.stderr
    assert done.stderr.splitlines()[-1].startswith("fdchannel: error: unknown migration protocol")


_IMPORTS = """
import json, sys
baseline = set(sys.modules)
import fdchannel
package = set(sys.modules)
from fdchannel.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
loaded = {"package": sorted(package - baseline), "cli": sorted(set(sys.modules) - package)}
print(json.dumps(loaded), file=sys.stderr)
"""


@pytest.mark.parametrize(
    ("args", "absent"),
    [
        (["--help"], ["fdchannel.cli.probe", "fdchannel.reachability", "fdchannel.address"]),
        (["probe", "unix:/nonexistent"], ["fdchannel.cli._run", "fdchannel.cli.selftest"]),
    ],
    ids=["help", "probe"],
)
def test_fast_start_imports_only_what_it_needs(args: list[str], absent: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _IMPORTS, *args],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    modules = json.loads(done.stderr.splitlines()[-1])
    loaded = set(modules["package"]) | set(modules["cli"])
    # Beyond what "import fdchannel" itself loads, the command adds no event loop.
    assert not {m for m in modules["cli"] if m.split(".")[0] in ("anyio", "trio", "sniffio")}
    if "anyio" not in modules["package"]:
        assert "anyio" not in loaded
    for name in absent:
        if name not in modules["package"]:
            assert name not in loaded, f"{name} was imported"


@pytest.mark.parametrize(
    ("args", "command", "as_json"),
    [
        (["--command", "python", "-c", "x"], ["python", "-c", "x"], False),
        (["--command", "python", "--json", "-c", "x"], ["python", "--json", "-c", "x"], False),
        (["--json", "--command", "--", "python", "-u"], ["--", "python", "-u"], True),
        (["--command", "srv", "--", "--command", "x"], ["srv", "--", "--command", "x"], False),
    ],
)
def test_an_upgrades_command_is_taken_verbatim(
    args: list[str], command: list[str], as_json: bool
) -> None:
    from fdchannel.cli import _flag, _parse

    options = _parse(["upgrade", "/run/app/app.ctl", *args])
    assert (options.command, options.json) == (command, as_json)
    assert _flag(["upgrade", "/run/app/app.ctl", *args], "--json") is as_json
