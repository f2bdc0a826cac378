"""Which codec a state travels in, and the checks on that choice: the one place for both.

``Codec`` names the two (``CODECS``: ``native`` and ``qemu``) and
``check_codec`` refuses any other; a qemu state may be encoded for a QEMU
version (``qemu_target``), which ``check_qemu_target`` checks before
anything is connected.  Both layers, the ``Encoder``, the qemu codec and
the command line take the choice from here; it imports nothing else of
fdchannel but its errors, so the command line's start-up stays quick.
"""

from __future__ import annotations

import re
from typing import Literal

from .errors import StateError

__all__ = ["CODECS", "Codec", "check_codec", "check_qemu_target", "qemu_version"]

Codec = Literal["native", "qemu"]
#: Every codec, in the order the command line lists them.
CODECS: tuple[Codec, ...] = ("native", "qemu")


def check_codec(codec: str) -> Codec:
    """``codec`` if it names one; a ValueError for anything else."""
    if codec in CODECS:
        return codec  # narrowed to a Codec by the test
    raise ValueError(f"unknown codec {codec!r}: expected 'native' or 'qemu'")


def qemu_version(target: str) -> tuple[int, int]:
    """``"11"``, ``"10.1"``, ``"11.1.3"`` -> (major, minor); a StateError for text
    that is no QEMU version, or one before cpr-transfer (10.0)."""
    match = re.fullmatch(r"(\d+)(?:\.(\d+))?(?:\.\d+)?", target)
    if match is None:
        raise StateError(f"qemu target {target!r} is not a QEMU version like '10.0' or '11.1'")
    version = (int(match[1]), int(match[2] or 0))
    if version < (10, 0):
        raise StateError(f"QEMU {target} has no cpr-transfer (it came with 10.0)")
    return version


def check_qemu_target(codec: Codec, target: str | None) -> str | None:
    """``target`` if the encoder takes it; a StateError for an unknown version,
    or for a target given with another codec than qemu."""
    if target is None:
        return None
    if codec != "qemu":
        raise StateError(f"qemu_target {target!r} applies to the qemu codec, not {codec!r}")
    if not isinstance(target, str):
        raise StateError(f"qemu_target must be a QEMU version string, not {target!r}")
    qemu_version(target)
    return target
