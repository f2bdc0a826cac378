"""Run an example server whose first new generation crashes some time after ready().

    python crashing.py --after SECONDS --once FLAG --held FILE -- PYTHON SCRIPT ARGS...

SCRIPT runs in this process, with ARGS, as if started by PYTHON itself; the
upgrader's next generation is started with this very command line, so every
generation goes through here.  The first generation started by an upgrade
that creates FLAG (``O_EXCL``) crashes SECONDS after its ``ready()``
returned: from its event loop, in one go, it writes the peer address of
every connection it holds (accepted on its listeners: the requests it takes
with it) as a JSON list to FILE, says so on stderr and exits with status 3.
The examples need no option for it (tests/upgrade/test_probation.py).
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
from pathlib import Path

import anyio

from fdchannel.state import FdState
from fdchannel.upgrade import Upgrader
from fdchannel.upgrade.connections import accepted_peers

STATUS = 3


def first_to(flag: str) -> bool:
    try:
        os.close(os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    return True


def crash_later(options: argparse.Namespace) -> None:
    """Make Upgrader.ready() of the first new generation schedule its crash."""
    ready = Upgrader.ready

    async def crash(up: Upgrader) -> None:
        await anyio.sleep(options.after)
        # No await from here on: nothing is accepted between the count and the end.
        held = json.dumps(accepted_peers(up.listening().values())).encode()
        fd = os.open(options.held, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, held)
        os.close(fd)
        os.write(2, f"crashing on purpose, {options.after} s after ready()\n".encode())
        os._exit(STATUS)

    async def ready_then_crash(up: Upgrader) -> FdState:
        state = await ready(up)
        if up.inherited and first_to(options.once):
            # In the upgrader's own task group: the crash is no task of the app's.
            assert up._tasks is not None
            up._tasks.start_soon(crash, up)
        return state

    Upgrader.ready = ready_then_crash  # type: ignore[method-assign,assignment]


def main() -> None:
    cut = sys.argv.index("--")
    parser = argparse.ArgumentParser()
    parser.add_argument("--after", type=float, required=True)
    parser.add_argument("--once", required=True)
    parser.add_argument("--held", required=True)
    options = parser.parse_args(sys.argv[1:cut])
    _python, script, *args = sys.argv[cut + 1 :]
    crash_later(options)
    sys.argv = [script, *args]
    sys.path.insert(0, str(Path(script).parent))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
