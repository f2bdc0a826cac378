"""State codecs, pure encode/decode without I/O: ``native`` and ``qemu``.

``Encoder`` (``fdchannel.codecs.encoder``) gives a state's messages and
reads the receiver's answers; ``Decoder`` (``fdchannel.codecs.decoder``)
detects the codec from the stream's magic and parses what a stream
delivers.  Both are re-exported here.

Which codec a state is sent in (``Codec``, ``CODECS``) and the checks on
that choice are ``fdchannel.codec_choice``'s; the parsers' byte buffer and
descriptor queue ``fdchannel.parsing``'s.  The qemu codec
(``fdchannel.codecs.qemu``) is imported when first used: a program that
only speaks the native codec never loads it, nor QEMU's VMState.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..codec_choice import CODECS
from . import native
from .decoder import Decoder

if TYPE_CHECKING:
    from . import qemu as qemu

__all__ = ["CODECS", "Decoder", "native", "qemu"]


def __getattr__(name: str) -> object:
    """``fdchannel.codecs.qemu`` on first use (PEP 562)."""
    if name == "qemu":
        return importlib.import_module(f"{__name__}.qemu")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
