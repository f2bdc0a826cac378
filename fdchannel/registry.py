"""The transports, one registered object each: what every layer asks of a transport.

A ``Transport`` supplies ``connect`` and ``listen`` (from its module in
``fdchannel.transports``, imported on first use so that parsing and the
command line's start-up do not load the event-loop layer), what its
streams and listeners can do (the spec's capability table), whether it
passes descriptors, and whether it is a stream (cpr-transfer refuses a
``file:`` main channel, as QEMU does).  Channel validation, the cpr rule
in ``connect``/``listen`` and the command line's checks are lookups here,
not switches over address classes; ``fdchannel.reachability`` holds each
transport's check of an address, by name.
"""

from __future__ import annotations

import enum
import importlib
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from .address import (
    ADDRESS_TYPES,
    Address,
    ExecAddress,
    FdAddress,
    FileAddress,
    RdmaAddress,
    TcpAddress,
    UnixAddress,
    VsockAddress,
)
from .capabilities import Capability
from .errors import AddressError, TransportError

__all__ = [
    "TRANSPORTS",
    "FdPassing",
    "Transport",
    "load_transports",
    "refuse_unknown_options",
    "transport_for",
]


class FdPassing(enum.Enum):
    """Whether a transport's streams pass descriptors."""

    ALWAYS = "always"
    NEVER = "never"
    #: fd: follows the descriptor (an AF_UNIX socket does), known once opened.
    BY_DESCRIPTOR = "by descriptor"


@dataclass(frozen=True)
class Transport:
    """One transport: its name, its address class, and what it can do."""

    name: str
    address_type: type[Address]
    #: Module under fdchannel.transports with ``connect`` and ``listen``; None:
    #: parsed (QEMU knows it) but not supported here.
    module: str | None
    #: What its streams can do (fd: the most; the descriptor decides).
    capabilities: Capability
    #: Whether its listener accepts more than one peer.
    multi_accept: bool
    fd_passing: FdPassing
    #: A byte stream that can carry a main channel in cpr-transfer.
    stream: bool = True

    def load(self, address: Address) -> ModuleType:
        """The transport's module; TransportError if fdchannel does not support it."""
        if self.module is None:
            raise TransportError(f"{address}: {self.name} is not supported by fdchannel", address)
        return importlib.import_module(f"fdchannel.transports.{self.module}")

    def capabilities_for(self, facts: Mapping[str, Any]) -> Capability:
        """What a stream on this transport can do, given what ``reach`` found
        (fd: follows the descriptor; a file: path may be a FIFO)."""
        if self.fd_passing is FdPassing.BY_DESCRIPTOR:
            found = facts.get("descriptor", {})
            kind = found.get("kind")
            if kind == "socket":
                caps = Capability.HALF_CLOSE
                if found.get("family") == "AF_UNIX":
                    caps |= Capability.FD_PASSING
                if found.get("listening"):
                    caps |= Capability.MULTI_ACCEPT
                return caps
            if kind in ("pipe", "fifo"):
                return Capability.HALF_CLOSE
            return Capability.SEEKABLE if kind == "file" else Capability.NONE
        if facts.get("type") == "fifo":  # a file: path that is a FIFO
            return Capability.HALF_CLOSE
        caps = self.capabilities
        return caps | Capability.MULTI_ACCEPT if self.multi_accept else caps

    def verb(self, name: str, address: Address) -> Callable[..., Awaitable[Any]]:
        """``connect`` or ``listen`` of this transport."""
        function: Callable[..., Awaitable[Any]] = getattr(self.load(address), name)
        return function


_SOCKET = Capability.HALF_CLOSE

TRANSPORTS: tuple[Transport, ...] = (
    Transport(
        "unix",
        UnixAddress,
        "unix",
        _SOCKET | Capability.FD_PASSING,
        multi_accept=True,
        fd_passing=FdPassing.ALWAYS,
    ),
    Transport("tcp", TcpAddress, "tcp", _SOCKET, multi_accept=True, fd_passing=FdPassing.NEVER),
    Transport(
        "vsock", VsockAddress, "vsock", _SOCKET, multi_accept=True, fd_passing=FdPassing.NEVER
    ),
    Transport(
        "fd",
        FdAddress,
        "fd",
        _SOCKET | Capability.FD_PASSING | Capability.SEEKABLE,
        multi_accept=True,
        fd_passing=FdPassing.BY_DESCRIPTOR,
    ),
    Transport(
        "file",
        FileAddress,
        "file",
        Capability.SEEKABLE,
        multi_accept=False,
        fd_passing=FdPassing.NEVER,
        stream=False,
    ),
    Transport(
        "exec",
        ExecAddress,
        "exec",
        Capability.HALF_CLOSE,
        multi_accept=False,
        fd_passing=FdPassing.NEVER,
    ),
    Transport(
        "rdma", RdmaAddress, None, Capability.NONE, multi_accept=False, fd_passing=FdPassing.NEVER
    ),
)

_BY_TYPE = {transport.address_type: transport for transport in TRANSPORTS}
assert set(_BY_TYPE) == set(ADDRESS_TYPES), "every address class has its transport"


def transport_for(address: Address) -> Transport:
    """The transport of ``address``."""
    return _BY_TYPE[type(address)]


def load_transports(*addresses: Address) -> None:
    """Import each address's transport module now, not at its first connect or
    listen: that one happens inside a handoff, while the service is paused.

    A transport fdchannel does not support is left for that connect or
    listen to report.
    """
    for address in addresses:
        transport = transport_for(address)
        if transport.module is not None:
            transport.load(address)


def refuse_unknown_options(
    verb: str, address: Address, function: Callable[..., Any], options: Mapping[str, object]
) -> None:
    """AddressError unless ``function`` (a transport's ``verb``) takes every one of
    ``options`` as a keyword: a wrong option fails before anything opens."""
    taken = [
        name
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(options) - set(taken))
    if unknown:
        raise AddressError(
            f"{address}: the {type(address).__name__} transport's {verb} takes no option "
            f"{', '.join(map(repr, unknown))} (it takes: {', '.join(taken) or 'none'})",
            str(address),
        )
