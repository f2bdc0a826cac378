"""QEMU's JSON dialect (qobject/json-lexer.c, json-parser.c).

Single-quoted strings are allowed, duplicate keys refused, ``\\u`` escapes
must name valid characters, and numbers are int64, then uint64, then
double, as ``parse_literal`` decides.
"""

from __future__ import annotations

import re
from typing import Any, NoReturn

from ..errors import AddressError
from .cstring import bounded_int

__all__ = ["parse_json"]

_JSON_SPACE = " \t\r\n"
_JSON_NUMBER = re.compile(
    r"-?(?:0(?:\.[0-9]+(?:[eE][+-]?[0-9]+)?)?|[1-9][0-9]*(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)"
)
_JSON_ESCAPES = dict(zip("\"'\\/bfnrt", "\"'\\/\b\f\n\r\t", strict=True))
#: Deeper than the MigrationChannel schema goes, so QEMU's visitor would refuse it anyway.
_JSON_MAX_DEPTH = 32


def _valid_codepoint(cp: int) -> bool:
    """is_valid_codepoint() (util/unicode.c): no surrogates, no noncharacters."""
    if not 0 <= cp <= 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
        return False
    return not (0xFDD0 <= cp <= 0xFDEF or (cp & 0xFFFE) == 0xFFFE)


class _Json:
    """A parser for one JSON object as ``qobject_from_json`` accepts it.

    Beyond RFC 8259: strings may be single-quoted and ``\\'`` is an escape.
    Stricter: duplicate keys and invalid code points are refused, and so is
    ``0e5`` (an exponent needs a fraction after a leading zero).  Integers keep
    QEMU's classes: int64, else uint64, else a double.
    """

    def __init__(self, text: str) -> None:
        self.text, self.pos = text, 0

    def fail(self, detail: str) -> NoReturn:
        raise AddressError(
            f"invalid JSON channel {self.text!r}: {detail} at offset {self.pos}", self.text
        )

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in _JSON_SPACE:
            self.pos += 1

    def document(self) -> object:
        value = self.value(0)
        self.skip_space()
        if self.pos < len(self.text):
            self.fail("expected the end after the JSON object")
        return value

    def value(self, depth: int) -> object:
        if depth > _JSON_MAX_DEPTH:
            self.fail("nesting too deep")
        self.skip_space()
        char = self.text[self.pos : self.pos + 1]
        if char == "{":
            return self.members(depth)
        if char == "[":
            return self.items(depth)
        if char in ('"', "'"):
            return self.string()
        match = _JSON_NUMBER.match(self.text, self.pos)
        if match:
            self.pos = match.end()
            return _json_number(match.group())
        keyword = re.match(r"[a-z]+", self.text[self.pos :])
        if keyword:
            self.pos += keyword.end()
            words: dict[str, object] = {"true": True, "false": False, "null": None}
            if keyword.group() not in words:
                self.fail(f"invalid keyword {keyword.group()!r}")
            return words[keyword.group()]
        self.fail("expected a value" if char else "premature end of input")

    def expect(self, chars: str) -> str:
        self.skip_space()
        char = self.text[self.pos : self.pos + 1]
        if not char or char not in chars:
            self.fail(f"expected one of {chars!r}" if char else "premature end of input")
        self.pos += 1
        return char

    def members(self, depth: int) -> dict[str, object]:
        self.pos += 1
        members: dict[str, object] = {}
        self.skip_space()
        if self.text.startswith("}", self.pos):
            self.pos += 1
            return members
        while True:
            self.skip_space()
            if self.text[self.pos : self.pos + 1] not in ('"', "'"):
                self.fail("expected a string key")
            key = self.string()
            self.expect(":")
            value = self.value(depth + 1)
            if key in members:
                self.fail(f"duplicate key {key!r}")
            members[key] = value
            if self.expect(",}") == "}":
                return members

    def items(self, depth: int) -> list[object]:
        self.pos += 1
        items: list[object] = []
        self.skip_space()
        if self.text.startswith("]", self.pos):
            self.pos += 1
            return items
        while True:
            items.append(self.value(depth + 1))
            if self.expect(",]") == "]":
                return items

    def string(self) -> str:
        quote = self.text[self.pos]
        self.pos += 1
        out: list[str] = []
        while True:
            if self.pos >= len(self.text):
                self.fail("unterminated string")
            char = self.text[self.pos]
            self.pos += 1
            if char == quote:
                return "".join(out)
            if char == "\\":
                out.append(self.escape())
            elif ord(char) < 0x20:
                self.fail("control character in string")
            elif not _valid_codepoint(ord(char)):
                self.fail(f"invalid character {char!r} in string")
            else:
                out.append(char)

    def escape(self) -> str:
        char = self.text[self.pos : self.pos + 1]
        self.pos += 1
        if char in _JSON_ESCAPES:
            return _JSON_ESCAPES[char]
        if char != "u":
            self.fail(f"invalid escape sequence '\\{char}' in string")
        cp = self.hex4()
        if 0xD800 <= cp <= 0xDBFF and self.text.startswith("\\u", self.pos):
            self.pos += 2
            low = self.hex4()
            cp = 0x10000 + ((cp & 0x3FF) << 10) + (low & 0x3FF) if 0xDC00 <= low <= 0xDFFF else -1
        if not _valid_codepoint(cp):
            self.fail("\\u escape is not a valid Unicode character")
        if cp == 0:
            self.fail("\\u0000 (NUL) cannot be part of a C string")
        return chr(cp)

    def hex4(self) -> int:
        digits = self.text[self.pos : self.pos + 4]
        self.pos += 4
        if not re.fullmatch(r"[0-9a-fA-F]{4}", digits):
            return -1
        return int(digits, 16)


def _json_number(token: str) -> int | float:
    """parse_literal(): int64 if it fits, else uint64, else a double."""
    if re.fullmatch(r"-?[0-9]+", token):
        magnitude = bounded_int(token.lstrip("-"))
        value = -magnitude if token.startswith("-") else magnitude
        if -(1 << 63) <= value < 1 << 64:
            return value
    return float(token)


def parse_json(text: str) -> Any:
    """The document ``text`` holds, as QEMU's parser reads it (AddressError if none)."""
    return _Json(text).document()
