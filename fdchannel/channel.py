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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from .address import (
    ADDRESS_TYPES,
    Address,
    address_to_qapi,
    address_uri,
    parse_address,
    read_address,
)
from .errors import AddressError, CapabilityError, ChannelError
from .qemu.cstring import shown
from .qemu.json import parse_json
from .qemu.keyval import keyval_members, keyval_parse
from .qemu.qapi import QapiReader
from .registry import FdPassing, transport_for

__all__ = [
    "Channel",
    "ChannelType",
    "Target",
    "parse_channel",
    "refuse_cpr",
    "resolve_target",
    "validate_channels",
]


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
        return _read_channel(parse_json(spec), keyval=False, source=spec, what="JSON channel")
    if _is_uri(spec):
        return Channel(ChannelType.MAIN, parse_address(spec))
    members = keyval_parse(spec, "channel-type")
    return _read_channel(members, keyval=True, source=spec, what="keyval channel")


#: What connect and listen take, in either layer: an address, a URI or channel
#: text, or a Channel.
Target = Address | Channel | str


def resolve_target(target: Target) -> tuple[Address, ChannelType]:
    """The address and channel type of an address, URI or channel text, or Channel."""
    if isinstance(target, str):
        target = parse_channel(target)
    if isinstance(target, Channel):
        return target.addr, target.type
    return target, ChannelType.MAIN


def refuse_cpr(address: Address) -> NoReturn:
    """CapabilityError: a cpr channel on ``address``, whose transport (or descriptor)
    cannot pass descriptors."""
    raise CapabilityError(
        f"a cpr channel must pass descriptors, and the {address.scheme} transport "
        f"({address}) cannot: use a unix socket, or an fd: that is an AF_UNIX socket"
    )


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
    if not transport_for(main.addr).stream:
        raise ChannelError(
            f"main channel {main} is a file: cpr-transfer needs a stream transport (e.g. unix)"
        )
    if cpr is None:
        raise ChannelError("missing 'cpr' migration channel: cpr-transfer mode needs one")
    if transport_for(cpr.addr).fd_passing is FdPassing.NEVER:
        raise ChannelError(
            f"cpr channel {cpr} cannot pass descriptors over the {cpr.addr.scheme} transport: "
            "expected a unix socket, or an fd: that is an AF_UNIX socket"
        )
    return main, cpr
