"""A Debian 13 (trixie) root with QEMU 10.0, for the cpr-transfer interop test.

A thin front for ``qemu_root.py`` (which also builds a QEMU 11.1 root), kept
for ``make interop-qemu10`` and ``test_qemu10.py``.  Run as a script (root
only) it builds the root if it is missing, or removes it::

    python tests/interop/qemu10_root.py [DIR]            # DIR defaults to .qemu10/root
    python tests/interop/qemu10_root.py --remove [DIR]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

if not __package__:  # run as a script: make the ``tests`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.interop import qemu_root
from tests.interop.qemu_root import QEMU_IN_ROOT, bind_mounts, remove_root

__all__ = [
    "DEFAULT_ROOT",
    "QEMU_IN_ROOT",
    "bind_mounts",
    "ensure_root",
    "is_complete",
    "main",
    "remove_root",
]

VERSION = "10"
#: Where ``make interop-qemu10`` keeps the root (ignored by git).
DEFAULT_ROOT = qemu_root.FLAVOURS[VERSION].default_root


def is_complete(root: Path) -> bool:
    """Whether ``root`` is a finished root with QEMU 10."""
    return qemu_root.is_complete(root, VERSION)


def ensure_root(root: Path) -> bool:
    """Build the QEMU 10 root at ``root`` unless it is there; True if it was built now."""
    return qemu_root.ensure_root(root, VERSION)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: build the root if it is missing (or remove it)."""
    return qemu_root.main(argv, version=VERSION)


if __name__ == "__main__":
    sys.exit(main())
