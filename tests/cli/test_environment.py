"""The commands the ``fdchannel`` program runs get the environment it was started
with: an ``exec:`` channel too, not only ``recv -- CMD`` and ``probe --cpr-exec -- CMD``
(tests/cli/test_recv_exec.py, tests/test_cpr_exec.py)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from .helpers import Child, cli

#: Writes the environment it was given, exactly as the kernel keeps it, to argv[1].
_ENVIRON = "import sys; open(sys.argv[1], 'wb').write(open('/proc/self/environ', 'rb').read())"


@pytest.mark.parametrize("locale", [{}, {"LC_CTYPE": "C"}, {"LANG": "C.UTF-8"}])
def test_an_exec_channel_gets_the_programs_environment(
    sockdir: Path, locale: dict[str, str]
) -> None:
    """Without a locale Python sets LC_CTYPE=C.UTF-8 in its own os.environ (PEP 538)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GUEST": "x", **locale}
    shown = sockdir / "environ"
    command = f'exec:{sys.executable} -c "{_ENVIRON}" {shown}'
    with Child(cli("relay", "--timeout", "20", f"unix:{sockdir}/in", command), env=env) as relay:
        relay.wait_for("listening on")
        with socket.socket(socket.AF_UNIX) as sender:
            sender.connect(str(sockdir / "in"))
            sender.shutdown(socket.SHUT_WR)
        done = relay.finish()
    assert done.returncode == 0, done.stderr
    entries = dict(e.partition(b"=")[::2] for e in shown.read_bytes().split(b"\0")[:-1])
    entries.pop(b"PWD", None)  # the shell that runs an exec: command sets it
    assert entries == {k.encode(): v.encode() for k, v in env.items()}
