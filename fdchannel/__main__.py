"""``python -m fdchannel`` and the ``fdchannel`` console script: see fdchannel.cli."""

from __future__ import annotations

import os
import sys

from . import cli
from .procfs import started_environment

__all__ = ["main"]


def main() -> int:
    """The command line as a program: with the environment it was started with."""
    # Python changed os.environ at start-up (without a locale it adds
    # LC_CTYPE=C.UTF-8, PEP 538); every command we run or exec in our stead
    # (exec:, recv -- CMD, probe --cpr-exec -- CMD) is owed what we were given.
    started = started_environment()
    for name in set(os.environb) - set(started):
        del os.environb[name]
    os.environb.update(started)
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
