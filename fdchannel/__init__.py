"""fdchannel: hand a running service's descriptors and state to a new process."""

from __future__ import annotations

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
from .errors import (
    AddressError,
    CapabilityError,
    ChannelError,
    ConnectError,
    FdChannelError,
    FdPassingError,
    HandoffError,
    HandoffTimeout,
    PeerCredentialsError,
    ProtocolError,
    TransportError,
    TruncatedFdsError,
)
from .handoff import Ack, Incoming, Outgoing
from .relay import RelayStats, relay
from .state import FdState, Limits, NamedFd
from .transfer import receive_state, send_state
from .transports import Listener, Stream, connect, listen

__version__ = "0.1.0.dev0"

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
    "ExecAddress",
    "FdAddress",
    "FdChannelError",
    "FdPassingError",
    "FileAddress",
    "HandoffError",
    "HandoffTimeout",
    "PeerCredentialsError",
    "ProtocolError",
    "RdmaAddress",
    "TcpAddress",
    "TransportError",
    "TruncatedFdsError",
    "UnixAddress",
    "VsockAddress",
    "__version__",
    "parse_address",
    "parse_channel",
    "validate_channels",
]
