"""Capability flags that every stream reports (QEMU's QIO_CHANNEL_FEATURE_* analogue)."""

from __future__ import annotations

import enum

__all__ = ["Capability"]


class Capability(enum.Flag):
    """What a stream can do beyond moving bytes."""

    NONE = 0
    #: Descriptors can travel with the bytes (SCM_RIGHTS; AF_UNIX only).
    FD_PASSING = enum.auto()
    #: One direction can be shut while the other stays open.
    HALF_CLOSE = enum.auto()
    #: The stream is a regular file with a position.
    SEEKABLE = enum.auto()
    #: The listener can accept more than one peer.
    MULTI_ACCEPT = enum.auto()
