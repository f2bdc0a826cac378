"""QEMU's QObject input visitor: reading one QAPI struct as QEMU does.

The JSON visitor takes values of exactly the schema's type; the keyval
visitor (qapi/qobject-input-visitor.c, ``keyval`` mode) takes every scalar
as a string and converts it on demand: integers with ``qemu_strtou64`` in
base 0, booleans with ``qapi_bool_parse``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NoReturn

from ..errors import AddressError
from .cstring import U64, bounded_int, shown

__all__ = ["QapiReader"]

_MISSING = object()
_TRUE_WORDS = ("on", "yes", "true", "y")  # qapi_bool_parse()
_FALSE_WORDS = ("off", "no", "false", "n")
_KEYVAL_UINT = re.compile(r"[ \t\n\v\f\r]*([+-]?)(?:0[xX]([0-9a-fA-F]+)|(0[0-7]*)|([1-9][0-9]*))\Z")


def _keyval_uint(text: str) -> int | None:
    """qemu_strtou64(text, NULL, 0): base 0 (0x hex, 0 octal), negatives wrap."""
    match = _KEYVAL_UINT.match(text)
    if match is None:
        return None
    sign, hexa, octal, decimal = match.groups()
    if hexa is not None:
        value = bounded_int(hexa, 16)
    elif octal is not None:
        value = bounded_int(octal, 8)
    else:
        value = bounded_int(decimal)
    if value > U64:
        return None
    return (-value if sign == "-" else value) & U64


class QapiReader:
    """Reads one QAPI struct as QEMU's QObject input visitor does.

    ``keyval`` selects the keyval visitor (every scalar is a string, converted
    on demand: integers in base 0, booleans on/off/yes/no/true/false/y/n);
    otherwise the JSON visitor, where types must match exactly.  Errors are
    AddressError naming the whole input (``source``) and the parameter.
    """

    def __init__(
        self, data: object, *, keyval: bool, source: object, what: str, path: str = ""
    ) -> None:
        self.keyval, self.source, self.what, self.path = keyval, source, what, path
        if not isinstance(data, Mapping):
            where = f"'{path}'" if path else "the input"
            self.fail(f"{where} must be an object, not {_kind(data)}")
        self.data: Mapping[Any, Any] = data
        self.unvisited: dict[Any, None] = dict.fromkeys(data)

    def fail(self, detail: str) -> NoReturn:
        raise AddressError(f"invalid {self.what} {shown(self.source)}: {detail}", self.source)

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, *, optional: bool = False) -> Any:
        if key not in self.data:
            if optional:
                return _MISSING
            self.fail(f"parameter '{self.name(key)}' is missing")
        self.unvisited.pop(key, None)
        return self.data[key]

    def _scalar(self, key: str, value: object, expected: str) -> None:
        if self.keyval and isinstance(value, Mapping | list):
            self.fail(f"parameters '{self.name(key)}.*' are unexpected")
        if not self.keyval and not _is_json_kind(value, expected):
            self.fail(
                f"invalid type for '{self.name(key)}': expected {expected}, got {_kind(value)}"
            )

    def _text_value(self, name: str, value: object) -> str:
        if not isinstance(value, str):
            self.fail(f"invalid type for '{name}': expected string, got {_kind(value)}")
        if "\0" in value:
            self.fail(f"'{name}' contains a NUL character, which a C string cannot hold")
        try:
            value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            self.fail(f"'{name}' contains a lone surrogate")
        return value

    def string(self, key: str) -> str:
        value = self.get(key)
        self._scalar(key, value, "string")
        return self._text_value(self.name(key), value)

    def enum(self, key: str, choices: tuple[str, ...]) -> str:
        value = self.string(key)
        if value not in choices:
            self.fail(
                f"parameter '{self.name(key)}' does not accept value {shown(value)}: expected "
                + " or ".join(repr(choice) for choice in choices)
            )
        return value

    def boolean(self, key: str) -> bool | None:
        value = self.get(key, optional=True)
        if value is _MISSING:
            return None
        self._scalar(key, value, "boolean")
        if not self.keyval:
            return bool(value)
        if value in _TRUE_WORDS:
            return True
        if value in _FALSE_WORDS:
            return False
        self.fail(f"parameter '{self.name(key)}' expects 'on' or 'off', got {shown(value)}")

    def uint(self, key: str, bits: int, *, optional: bool = False) -> int | None:
        value = self.get(key, optional=optional)
        if value is _MISSING:
            return None
        self._scalar(key, value, "integer")
        limit = (1 << bits) - 1
        expects = f"parameter '{self.name(key)}' expects an integer from 0 to {limit}"
        number: int | None
        if self.keyval:
            number = _keyval_uint(value)
        elif -(1 << 63) <= value < 0:
            # QEMU's JSON visitor takes negative integers for unsigned members
            # ("backward compatibility") and wraps them modulo 2**64.
            number = value & U64
        else:
            # Beyond 64 bits QEMU's JSON parser holds a double, never an integer.
            number = value if 0 <= value <= U64 else None
        if number is None or number > limit:
            self.fail(f"{expects}, got {shown(value)}")
        return number

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.get(key)
        if not isinstance(value, list | tuple):
            self.fail(f"invalid type for '{self.name(key)}': expected array, got {_kind(value)}")
        items = []
        for index, item in enumerate(value):
            name = f"{self.name(key)}.{index}" if self.keyval else f"{self.name(key)}[{index}]"
            if self.keyval and isinstance(item, Mapping | list):
                self.fail(f"parameters '{name}.*' are unexpected")
            items.append(self._text_value(name, item))
        return tuple(items)

    def struct(self, key: str) -> QapiReader:
        return QapiReader(
            self.get(key),
            keyval=self.keyval,
            source=self.source,
            what=self.what,
            path=self.name(key),
        )

    def finish(self) -> None:
        """visit_check_struct(): every member must have been visited."""
        for key in self.unvisited:
            self.fail(f"parameter '{self.name(str(key))}' is unexpected")


def _is_json_kind(value: object, expected: str) -> bool:
    if expected == "boolean":
        return isinstance(value, bool)
    if expected == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, str)


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return "null" if value is None else type(value).__name__
