"""Live update of a running QEMU, blocking: as ``fdchannel.update_qemu`` and ``check_qemu``.

The same driver (``fdchannel.protocol.qemu_update``) as the async layer's,
run with ``poll(2)``.  An interruption (KeyboardInterrupt) rolls back
before it goes on.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..protocol.qemu_update import UpdateReport, checking, updating
from ._handoff import drive

__all__ = ["check_qemu", "update_qemu"]


def update_qemu(
    qmp: str,
    command: Sequence[str],
    *,
    mode: str = "cpr-transfer",
    timeout: float = 60.0,
    log: str | None = None,
) -> UpdateReport:
    """As ``fdchannel.update_qemu``: the QEMU behind ``qmp`` replaced by the one
    ``command`` starts, within ``timeout``; the report says what happened."""
    return drive(updating(qmp, command, mode=mode, timeout=timeout, log=log))


def check_qemu(qmp: str, *, mode: str = "cpr-transfer", timeout: float = 10.0) -> UpdateReport:
    """As ``fdchannel.check_qemu``: whether the QEMU behind ``qmp`` can be updated."""
    return drive(checking(qmp, mode=mode, timeout=timeout))
