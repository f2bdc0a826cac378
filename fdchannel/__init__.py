"""fdchannel: hand a running service's descriptors and state to a new process."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .address import (
        Address,
        ExecAddress,
        FdAddress,
        FileAddress,
        RdmaAddress,
        TcpAddress,
        UnixAddress,
        VsockAddress,
        parse_address,
    )
    from .capabilities import Capability
    from .channel import Channel, ChannelType, parse_channel, validate_channels
    from .cpr_exec import CprExecState, InheritedFdState, read_cpr_exec_state
    from .errors import (
        AddressError,
        CapabilityError,
        ChannelError,
        ConnectError,
        ConnectionLostError,
        FdChannelError,
        FdPassingError,
        HandoffError,
        HandoffTimeout,
        PeerCredentialsError,
        ProtocolError,
        StateError,
        TransportError,
        TruncatedFdsError,
    )
    from .handoff import Ack, Incoming, Outgoing
    from .relaying import RelayStats, relay
    from .state import FdState, Limits, NamedFd
    from .transfer import receive_state, send_state
    from .transports import Listener, Stream, connect, listen

__version__ = "0.1.0.dev0"

#: Where each public name lives: imported on first use (PEP 562), so that
#: ``import fdchannel.cli`` and ``fdchannel --help`` do not load the event loop.
_LAZY = {
    "Address": ".address",
    "ExecAddress": ".address",
    "FdAddress": ".address",
    "FileAddress": ".address",
    "RdmaAddress": ".address",
    "TcpAddress": ".address",
    "UnixAddress": ".address",
    "VsockAddress": ".address",
    "parse_address": ".address",
    "Capability": ".capabilities",
    "Channel": ".channel",
    "ChannelType": ".channel",
    "parse_channel": ".channel",
    "validate_channels": ".channel",
    "CprExecState": ".cpr_exec",
    "InheritedFdState": ".cpr_exec",
    "read_cpr_exec_state": ".cpr_exec",
    "AddressError": ".errors",
    "CapabilityError": ".errors",
    "ChannelError": ".errors",
    "ConnectError": ".errors",
    "ConnectionLostError": ".errors",
    "FdChannelError": ".errors",
    "FdPassingError": ".errors",
    "HandoffError": ".errors",
    "HandoffTimeout": ".errors",
    "PeerCredentialsError": ".errors",
    "ProtocolError": ".errors",
    "StateError": ".errors",
    "TransportError": ".errors",
    "TruncatedFdsError": ".errors",
    "Ack": ".handoff",
    "Incoming": ".handoff",
    "Outgoing": ".handoff",
    "RelayStats": ".relaying",
    "relay": ".relaying",
    "FdState": ".state",
    "Limits": ".state",
    "NamedFd": ".state",
    "receive_state": ".transfer",
    "send_state": ".transfer",
    "Listener": ".transports",
    "Stream": ".transports",
    "connect": ".transports",
    "listen": ".transports",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fdchannel' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "RelayStats",
    "relay",
    "Ack",
    "Incoming",
    "Outgoing",
    "FdState",
    "Limits",
    "Listener",
    "NamedFd",
    "Stream",
    "connect",
    "listen",
    "receive_state",
    "send_state",
    "Address",
    "AddressError",
    "Capability",
    "CapabilityError",
    "Channel",
    "ChannelError",
    "ChannelType",
    "ConnectError",
    "ConnectionLostError",
    "CprExecState",
    "ExecAddress",
    "FdAddress",
    "FdChannelError",
    "FdPassingError",
    "FileAddress",
    "HandoffError",
    "HandoffTimeout",
    "InheritedFdState",
    "PeerCredentialsError",
    "ProtocolError",
    "StateError",
    "RdmaAddress",
    "TcpAddress",
    "TransportError",
    "TruncatedFdsError",
    "UnixAddress",
    "VsockAddress",
    "__version__",
    "parse_address",
    "parse_channel",
    "read_cpr_exec_state",
    "validate_channels",
]
