"""Live update of a running QEMU, on an event loop: ``update_qemu`` and ``check_qemu``.

The sequence, its checks and its rollback are written once, without I/O,
in ``fdchannel.protocol.qemu_update`` (``fdchannel.blocking`` runs the
same); this module only runs them on anyio.  A cancelled update rolls back
before the cancellation goes on: the guest keeps running on the old QEMU.
"""

from __future__ import annotations

from collections.abc import Sequence

from .handoff.steps import drive
from .protocol.qemu_update import UpdateReport, checking, updating

__all__ = ["UpdateReport", "check_qemu", "update_qemu"]


async def update_qemu(
    qmp: str,
    command: Sequence[str],
    *,
    mode: str = "cpr-transfer",
    timeout: float = 60.0,
    log: str | None = None,
) -> UpdateReport:
    """Replace the QEMU behind the QMP socket ``qmp`` with the one ``command`` starts,
    the guest running on the same memory (never copied).

    fdchannel appends to ``command`` the new QEMU's incoming channels and a
    monitor of its own; the new QEMU's output goes to ``log`` (a temporary
    file if None).  The report says what happened ("updated", "rolled-back"
    or "failed", and why); ``timeout`` bounds the whole update.
    """
    return await drive(updating(qmp, command, mode=mode, timeout=timeout, log=log))


async def check_qemu(
    qmp: str, *, mode: str = "cpr-transfer", timeout: float = 10.0
) -> UpdateReport:
    """Whether the QEMU behind ``qmp`` can be updated in ``mode`` ("ready" or
    "not-ready", with the problems), changing nothing."""
    return await drive(checking(qmp, mode=mode, timeout=timeout))
