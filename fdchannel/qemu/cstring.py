"""C string functions as QEMU's parsers use them, on the bytes QEMU would see.

QEMU reads URIs with ``sscanf``, ``strstr``, ``strtoull`` and
``qemu_strtosz`` (util/cutils.c); these redo those calls on the UTF-8 bytes
of the text, because the field widths QEMU uses count bytes.  Numbers are
never converted past what a C integer holds (Python refuses over 4300
digits), and error messages never print one that long.
"""

from __future__ import annotations

import re

from ..errors import AddressError

__all__ = [
    "U64",
    "bounded_int",
    "c_string",
    "c_text",
    "scan_int",
    "scanset",
    "shown",
    "strtosz",
    "strtoull",
]

U64 = (1 << 64) - 1
#: Significant digits past which a number exceeds every C integer QEMU reads
#: (2**64 has 20 decimal digits, 16 hex, 22 octal).
_MAX_DIGITS = 24


def shown(value: object, limit: int = 200) -> str:
    """``repr(value)`` for an error message, cut at ``limit`` characters.

    Never raises: repr() of an integer over 4300 digits does (ValueError).
    """
    try:
        text = repr(value)
    except ValueError:
        return f"<{type(value).__name__} holding a number too long to print>"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def bounded_int(digits: str | bytes, base: int = 10, ceiling: int = 1 << 64) -> int:
    """``int(digits, base)`` (ASCII digits only), or ``ceiling`` if the value is larger.

    Python refuses to convert more than 4300 digits (a ValueError); a value
    that long is past every C integer QEMU reads, which is all callers need
    to know, so it is never converted.
    """
    significant = digits.lstrip(b"0") if isinstance(digits, bytes) else digits.lstrip("0")
    if len(significant) > _MAX_DIGITS:
        return ceiling
    return min(int(digits, base), ceiling)


_C_SPACE = b" \t\n\v\f\r"  # isspace() in the C locale
_DIGITS = b"0123456789"
_HEX = b"0123456789abcdefABCDEF"


def c_string(text: str, source: object) -> bytes:
    """The bytes QEMU would see; a NUL or an unencodable character is an error."""
    if "\0" in text:
        raise AddressError(
            f"{source!r} contains a NUL character, which a C string cannot hold", source
        )
    try:
        # surrogateescape carries bytes that are not UTF-8 (os.fsdecode's convention).
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise AddressError(
            f"{source!r} contains a lone surrogate: not encodable text", source
        ) from None


def c_text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def scanset(buf: bytes, start: int, width: int, stop: bytes) -> int | None:
    """sscanf's ``%<width>[^<stop>]``: where the match ends, None if it is empty.

    The conversion needs at least one byte and stops silently at its width: the
    rest of a longer field is left for the next directive (a QEMU quirk we keep).
    """
    end, limit = start, min(len(buf), start + width)
    while end < limit and buf[end] not in stop:
        end += 1
    return end if end > start else None


def scan_int(buf: bytes, start: int) -> tuple[int, int] | None:
    """sscanf's ``%d``: the value glibc stores in the int, and where it stopped."""
    i = start
    while i < len(buf) and buf[i] in _C_SPACE:
        i += 1
    j = i + 1 if i < len(buf) and buf[i] in b"+-" else i
    k = j
    while k < len(buf) and buf[k] in _DIGITS:
        k += 1
    if k == j:
        return None
    # glibc converts with strtol (saturating at the long range), then stores an int.
    magnitude = bounded_int(buf[j:k], 10, 1 << 63)
    value = max(-(1 << 63), min((1 << 63) - 1, -magnitude if buf[i:j] == b"-" else magnitude))
    return (value + (1 << 31)) % (1 << 32) - (1 << 31), k


def strtoull(buf: bytes, base: int) -> tuple[int, int] | None:
    """glibc strtoull in base 10 or 16: (value, end); end 0 when nothing converts.

    None means ERANGE.  Like strtoull, a leading minus negates modulo 2**64.
    """
    i = 0
    while i < len(buf) and buf[i] in _C_SPACE:
        i += 1
    negative = i < len(buf) and buf[i] == ord("-")
    if i < len(buf) and buf[i] in b"+-":
        i += 1
    digits = _HEX if base == 16 else _DIGITS
    if base == 16 and buf[i : i + 2] in (b"0x", b"0X") and i + 2 < len(buf) and buf[i + 2] in _HEX:
        i += 2  # without a hex digit after it, "0x" converts as "0" and stops at the x
    j = i
    while j < len(buf) and buf[j] in digits:
        j += 1
    if j == i:
        return 0, 0
    value = bounded_int(buf[i:j], base)
    if value > U64:
        return None
    return (-value if negative else value) & U64, j


def _suffix_mul(char: int) -> int:
    """suffix_mul() with unit 1024: B K M G T P E, case-insensitive; 0 if none."""
    index = b"BKMGTPE".find(bytes([char]).upper())
    return 1024**index if index >= 0 else 0


def strtosz(buf: bytes) -> int | None:
    """qemu_strtosz(buf, NULL, ...): the size in bytes, or None where QEMU fails.

    Decimal with an optional B/K/M/G/T/P/E suffix (binary multiples) and an
    optional fraction when a suffix above B scales it; hex only without suffix
    or fraction; no octal, no exponent, nothing negative (not even -0), nothing
    of 2**64 or more, nothing after the number.  Leading white space is fine.
    """
    n = len(buf)

    def at(k: int) -> int:
        return buf[k] if k < n else 0  # the C string's terminating NUL

    # parse_uint(): strtoull in base 10, then negatives refused.
    scanned = strtoull(buf, 10)
    if scanned is None:
        return None
    val, end = scanned
    converted = end > 0
    if converted and buf.lstrip(_C_SPACE)[:1] == b"-":
        return None
    valf = 0  # the fraction as 0.64 fixed point
    if converted and val == 0 and at(end) in b"xX":
        hexed = strtoull(buf, 16)
        if hexed is None:
            return None
        val, end = hexed
        if at(end) == ord(".") or _suffix_mul(at(end)) > 0:
            return None  # hex takes neither a fraction nor a suffix
    elif at(end) == ord(".") or (not converted and b"." in buf):
        if converted and at(end + 1) not in _DIGITS:
            end += 1  # "1." and "1.k" need no fraction digits
        else:
            # strtod on a copy cut at the first 'e'/'E' (a suffix, not an exponent):
            # only [space][sign].digits can convert here; inf and nan are refused.
            copy = re.split(rb"[eE]", buf[end:], maxsplit=1)[0]
            match = re.match(rb"[ \t\n\v\f\r]*([+-]?)\.([0-9]+)", copy)
            if match is None:
                return None
            if match.group(1) == b"-":
                return None  # a negative fraction, -0.0 included
            digits = match.group(2)
            end += match.end()
            fraction = float(b"0." + digits)
            if fraction == 1.0:
                if val == U64:
                    return None
                val += 1
            else:
                valf = int(fraction * 2.0**64)
                if valf == 0 and digits.strip(b"0"):
                    valf = 1  # an underflowing fraction still counts as one
    elif not converted:
        return None
    mul = _suffix_mul(at(end))
    if mul:
        end += 1
    else:
        mul = 1
    if mul == 1:
        if valf:
            return None  # a fraction needs a suffix larger than a byte
    else:
        product = valf * mul
        val = val * mul + (product >> 64) + ((product >> 63) & 1)  # rounds half up
        if val > U64:
            return None
    if end < n:
        return None
    return val
