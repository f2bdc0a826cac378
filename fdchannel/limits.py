"""Bounds on everything a peer controls, so it cannot make us allocate or wait without end.

One ``Limits`` value travels with every decoder (both layers', the qemu
codec's subsections included); ``DEFAULT_LIMITS`` is what the receiving
calls use unless told otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_LIMITS", "Limits"]


@dataclass(frozen=True)
class Limits:
    """Bounds on everything a peer controls, so it cannot make us allocate or wait without end."""

    #: Longest name in bytes (QEMU's names are a few dozen).
    max_name: int = 4096
    #: Most entries (descriptors) in one state.
    max_entries: int = 1_000_000
    #: Largest metadata in bytes.
    max_metadata: int = 1 << 30
    #: Largest single native frame in bytes.
    max_frame: int = 64 << 20
    #: Most VMState subsections after a qemu state's descriptor list (QEMU 11.1 sends one).
    max_subsections: int = 64
    #: Largest subsection body in bytes (QEMU 11.1's is one byte; each vfio device adds its name).
    max_subsection: int = 1 << 20
    #: A qemu subsection this version cannot parse is a ProtocolError, not kept raw.
    qemu_strict: bool = False

    def __post_init__(self) -> None:
        for name in (
            "max_name",
            "max_entries",
            "max_metadata",
            "max_frame",
            "max_subsections",
            "max_subsection",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"Limits.{name} must not be negative")


DEFAULT_LIMITS = Limits()
