"""QEMU's keyval syntax (util/keyval.c): parsing, and printing QAPI members.

``a.b=1,a.c=x,,y`` is ``{"a": {"b": "1", "c": "x,y"}}``; a leading bare
word is the value of an implied key; keys made of digits become lists.
Every value is a string: the keyval input visitor converts it later.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from ..errors import AddressError
from .cstring import bounded_int

__all__ = ["keyval_members", "keyval_parse"]

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


def keyval_parse(text: str, implied_key: str) -> dict[str, Any]:
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


def _flag(value: bool) -> str:
    return "on" if value else "off"


def keyval_members(members: Mapping[str, Any], prefix: str = "") -> list[str]:
    """QAPI members as keyval ``key=value`` items (commas in values doubled)."""
    items: list[str] = []
    for key, value in members.items():
        name = prefix + key
        if isinstance(value, Mapping):
            items += keyval_members(value, name + ".")
        elif isinstance(value, list | tuple):
            items += keyval_members({str(i): item for i, item in enumerate(value)}, name + ".")
        elif isinstance(value, bool):
            items.append(f"{name}={_flag(value)}")
        else:
            items.append(f"{name}={str(value).replace(',', ',,')}")
    return items
