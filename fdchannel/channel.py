"""Channels: a type (main or cpr) plus an address, and the rules for lists of them.

``parse_channel`` takes the three spellings QEMU 10.0 accepts for ``-incoming``
(``incoming_option_parse`` in system/vl.c):

* a URI (``migrate_is_uri``: letters then ``:``), which names a main channel;
* JSON text starting with ``{`` in QAPI ``MigrationChannel`` form, read with
  QEMU's JSON dialect (single-quoted strings allowed, duplicate keys refused);
* keyval text (util/keyval.c) such as
  ``cpr,addr.transport=socket,addr.type=unix,addr.path=/x``, where a leading
  bare word is the implied ``channel-type`` and every value is a string that
  QEMU's keyval input visitor converts (integers in base 0, booleans
  on/off/yes/no/true/false/y/n).

It also takes a mapping (QAPI form with JSON types), a Channel (returned as
is) or an Address (a main channel).  Every malformed input raises
AddressError (a ValueError carrying the input as ``.uri``): unknown or missing
members, wrong types, out-of-range integers, syntax.  ChannelError is kept for
``validate_channels``, which judges a list of channels as a whole.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from .address import (
    ADDRESS_TYPES,
    Address,
    FdAddress,
    FileAddress,
    QapiReader,
    UnixAddress,
    address_to_qapi,
    address_uri,
    bounded_int,
    keyval_members,
    parse_address,
    read_address,
    shown,
)
from .errors import AddressError, ChannelError

__all__ = ["Channel", "ChannelType", "parse_channel", "validate_channels"]


class ChannelType(enum.StrEnum):
    """QAPI ``MigrationChannelType``."""

    MAIN = "main"
    CPR = "cpr"


@dataclass(frozen=True)
class Channel:
    """One migration channel: what it carries (``type``) and where (``addr``)."""

    type: ChannelType
    addr: Address

    def __post_init__(self) -> None:
        object.__setattr__(self, "type", ChannelType(self.type))
        if not isinstance(self.addr, ADDRESS_TYPES):
            raise TypeError(f"a channel needs an address, not {self.addr!r}")

    def to_qapi(self) -> dict[str, Any]:
        """The QAPI ``MigrationChannel``, spelled as QEMU spells it."""
        return {"channel-type": self.type.value, "addr": address_to_qapi(self.addr)}

    @classmethod
    def from_qapi(cls, data: Mapping[str, Any]) -> Channel:
        """The channel a QAPI ``MigrationChannel`` mapping names (JSON typing)."""
        return _read_channel(data, keyval=False, source=data, what="QAPI channel")

    def __str__(self) -> str:
        """The URI for a main channel that has one, else the keyval form."""
        if self.type is ChannelType.MAIN and (uri := address_uri(self.addr)) is not None:
            return uri
        return ",".join([self.type.value, *keyval_members(address_to_qapi(self.addr), "addr.")])


def _read_channel(data: object, *, keyval: bool, source: object, what: str) -> Channel:
    reader = QapiReader(data, keyval=keyval, source=source, what=what)
    kind = reader.enum("channel-type", tuple(kind.value for kind in ChannelType))
    addr = read_address(reader.struct("addr"))
    reader.finish()
    return Channel(ChannelType(kind), addr)


def _is_uri(text: str) -> bool:
    """migrate_is_uri(): ASCII letters (none is enough), then a colon."""
    return re.match(r"[A-Za-z]*:", text) is not None


def parse_channel(spec: str | Mapping[str, Any] | Channel | Address) -> Channel:
    """A Channel from a URI, JSON or keyval text, a QAPI mapping, a Channel or an Address.

    Raises AddressError naming the input for anything QEMU would refuse.
    """
    if isinstance(spec, Channel):
        return spec
    if isinstance(spec, ADDRESS_TYPES):
        return Channel(ChannelType.MAIN, spec)
    if isinstance(spec, Mapping):
        return _read_channel(spec, keyval=False, source=spec, what="QAPI channel")
    if not isinstance(spec, str):
        raise AddressError(
            f"{shown(spec)} is not a channel: expected URI, JSON or keyval text, or a mapping", spec
        )
    if spec.startswith("{"):
        return _read_channel(_Json(spec).document(), keyval=False, source=spec, what="JSON channel")
    if _is_uri(spec):
        return Channel(ChannelType.MAIN, parse_address(spec))
    members = _keyval_parse(spec, "channel-type")
    return _read_channel(members, keyval=True, source=spec, what="keyval channel")


# --------------------------------------------------------------------------
# QEMU's JSON dialect (qobject/json-lexer.c, json-parser.c).

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


# --------------------------------------------------------------------------
# QEMU's keyval syntax (util/keyval.c).

_INT_MAX = (1 << 31) - 1
_KEY_END = re.compile(r"[=,]")
_DOWNSTREAM_PREFIX = re.compile(r"__[A-Za-z0-9.-]*_")
_QAPI_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_ASCII_DIGITS = "0123456789"
_Fail = Callable[[str], NoReturn]


def _span(text: str, start: int, chars: str) -> int:
    """Where the run of ``chars`` starting at ``start`` ends (strspn)."""
    end = start
    while end < len(text) and text[end] in chars:
        end += 1
    return end


def _qapi_name_length(text: str, start: int) -> int:
    """parse_qapi_name(complete=false): letters, digits, '-', '_'; '__RFQDN_' prefix."""
    pos = start
    if text.startswith("_", pos):
        match = _DOWNSTREAM_PREFIX.match(text, pos)
        if match is None:
            return 0
        pos = match.end()
    match = _QAPI_NAME.match(text, pos)
    return match.end() - start if match else 0


def _tdb_hash(key: str) -> int:
    """tdb_hash() (qobject/qdict.c), which orders a QDict's buckets."""
    data = key.encode("utf-8", "surrogateescape")
    value = (0x238F13AF * len(data)) & 0xFFFFFFFF
    for i, byte in enumerate(data):
        value = (value + (byte << (i * 5 % 24))) & 0xFFFFFFFF
    return (1103515243 * value + 12345) & 0xFFFFFFFF


def _qdict_order(node: dict[str, Any]) -> list[str]:
    """The keys in QDict iteration order: bucket by bucket, newest first in each."""
    keys = list(node)
    return sorted(keys, key=lambda k: (_tdb_hash(k) % 512, -keys.index(k)))


def _keyval_parse(text: str, implied_key: str) -> dict[str, Any]:
    """keyval_parse(text, implied_key, NULL): a tree of dicts, lists and strings."""

    def fail(detail: str) -> NoReturn:
        raise AddressError(f"invalid keyval channel {text!r}: {detail}", text)

    if "\0" in text:
        fail("it contains a NUL character, which a C string cannot hold")
    root: dict[str, Any] = {}
    help_requested = False
    implied: str | None = implied_key
    pos = 0
    while pos < len(text):
        found = _KEY_END.search(text, pos)
        key_end = len(text) if found is None else found.start()
        if key_end > pos and not text.startswith("=", key_end):
            word = text[pos:key_end]
            if word in ("help", "?"):
                help_requested = True
            elif implied is not None:
                _keyval_put(root, [implied], word, fail)
            if word in ("help", "?") or implied is not None:
                pos = key_end + 1 if key_end < len(text) else key_end
                implied = None
                continue
        implied = None
        fragments: list[str] = []
        cursor = pos
        while True:
            if fragments and text[cursor : cursor + 1] in tuple(_ASCII_DIGITS):
                length = _span(text, cursor, _ASCII_DIGITS) - cursor  # key_to_index()
            else:
                length = _qapi_name_length(text, cursor)
            follows = text[cursor + length : cursor + length + 1]
            if not length or (cursor + length < key_end and follows != "."):
                fail(f"invalid parameter {text[pos:key_end]!r}")
            if length >= 128:
                fail(f"parameter {text[cursor : cursor + length]!r} is too long")
            fragments.append(text[cursor : cursor + length])
            cursor += length
            if follows != ".":
                break
            cursor += 1
        if not text.startswith("=", cursor):
            fail(f"expected '=' after parameter {text[pos:cursor]!r}")
        cursor += 1
        value: list[str] = []
        while cursor < len(text):
            if text[cursor] == ",":
                cursor += 1
                if not text.startswith(",", cursor):
                    break  # a single comma ends the value; ',,' is a comma in it
            value.append(text[cursor])
            cursor += 1
        _keyval_put(root, fragments, "".join(value), fail)
        pos = cursor
    if help_requested:
        fail("help is not available for channels")
    listified = _keyval_listify(root, "", fail)
    assert isinstance(listified, dict)
    return listified


def _keyval_put(root: dict[str, Any], fragments: list[str], value: str, fail: _Fail) -> None:
    """keyval_parse_put(): inner nodes are dicts; the last one wins for a leaf."""
    node = root
    for depth, fragment in enumerate(fragments[:-1]):
        child = node.setdefault(fragment, {})
        if not isinstance(child, dict):
            fail(f"parameters '{'.'.join(fragments[: depth + 1])}.*' used inconsistently")
        node = child
    if isinstance(node.get(fragments[-1]), dict):
        fail(f"parameters '{'.'.join(fragments)}.*' used inconsistently")
    node[fragments[-1]] = value


def _keyval_listify(node: dict[str, Any], prefix: str, fail: _Fail) -> dict[str, Any] | list[Any]:
    """keyval_listify(): a dict whose keys are all indexes becomes a list without gaps."""
    for key in _qdict_order(node):
        if isinstance(node[key], dict):
            node[key] = _keyval_listify(node[key], f"{prefix}{key}.", fail)
    indexes = [key for key in node if key[:1] in tuple(_ASCII_DIGITS)]
    if not indexes:
        return node
    if len(indexes) != len(node):
        fail(f"parameters '{prefix}*' used inconsistently")
    # Like QEMU: an index caps at INT_MAX; "0" and "00" are both index 0 and
    # the one QDict iterates last wins; indexes past the count are gaps.
    slots: list[Any] = [None] * len(node)
    highest = -1
    for key in _qdict_order(node):
        index = bounded_int(key, 10, _INT_MAX)
        highest = max(highest, index)
        if index < len(slots):
            slots[index] = node[key]
    count = len(slots) + 1 if highest == _INT_MAX else min(len(slots) + 1, highest + 1)
    for index in range(count):
        if index >= len(slots) or slots[index] is None:
            fail(f"parameter '{prefix}{index}' missing")
    return slots[:count]


# --------------------------------------------------------------------------
# Channel lists.

MODES = ("normal", "cpr-transfer")


def validate_channels(
    channels: Iterable[Channel], mode: str = "normal"
) -> tuple[Channel, Channel | None]:
    """Check a channel list as QEMU's ``migrate`` does; return (main, cpr).

    At most one channel of each type; a main channel; in ``cpr-transfer`` mode
    a cpr channel that can pass descriptors (a unix socket, or an ``fd:`` that
    the fd transport checks when it opens it) and a main channel that is a
    stream (not ``file:``).  In ``normal`` mode a cpr channel is accepted and
    ignored: the second item returned is then None.  Raises ChannelError.
    """
    if mode not in MODES:
        raise ChannelError(f"unknown migration mode {mode!r}: expected 'normal' or 'cpr-transfer'")
    found: dict[ChannelType, Channel] = {}
    for channel in channels:
        if not isinstance(channel, Channel):
            raise ChannelError(f"{shown(channel)} is not a Channel (parse it with parse_channel)")
        if channel.type in found:
            raise ChannelError(
                f"channel list has more than one {channel.type.value} entry: "
                f"{found[channel.type]} and {channel}"
            )
        found[channel.type] = channel
    main, cpr = found.get(ChannelType.MAIN), found.get(ChannelType.CPR)
    if main is None:
        # QEMU 10.0 dereferences the missing entry here and crashes.
        raise ChannelError("channel list has no main entry: expected one 'main' channel")
    if mode == "normal":
        return main, None
    if isinstance(main.addr, FileAddress):
        raise ChannelError(
            f"main channel {main} is a file: cpr-transfer needs a stream transport (e.g. unix)"
        )
    if cpr is None:
        raise ChannelError("missing 'cpr' migration channel: cpr-transfer mode needs one")
    if not isinstance(cpr.addr, UnixAddress | FdAddress):
        raise ChannelError(
            f"cpr channel {cpr} cannot pass descriptors over the {cpr.addr.scheme} transport: "
            "expected a unix socket, or an fd: that is an AF_UNIX socket"
        )
    return main, cpr
