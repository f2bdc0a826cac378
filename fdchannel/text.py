"""Text for a person: sizes in binary units, and escaping what a peer controls."""

from __future__ import annotations

import re

__all__ = ["UNSAFE_BUT_NEWLINE", "escape", "format_size", "printable"]

#: What a terminal would act on or a reader mistake for layout: C0 and C1
#: controls (ESC starts terminal sequences), DEL, lone surrogates (bytes that
#: were not UTF-8), line and paragraph separators, and bidirectional overrides.
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)
UNSAFE_BUT_NEWLINE = re.compile(_UNSAFE.pattern.replace("\x00-\x1f", "\x00-\x09\x0b-\x1f"))
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def printable(text: str) -> str:
    """``text`` with everything a terminal would act on escaped, newlines included.

    For text a peer controls (descriptor names, its command line, paths) in
    human output; ``--json`` keeps the exact value.
    """
    return _UNSAFE.sub(escape, text)


def format_size(value: int) -> str:
    """Bytes in the largest binary unit that keeps three digits: ``4 KiB``, ``1.5 MiB``."""
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{value} B" if unit == "B" else f"{size:.3g} {unit}"
        size /= 1024
    raise AssertionError  # pragma: no cover
