"""Transports: one module per address kind, each offering ``connect`` and ``listen``.

``connect`` is the outgoing side, ``listen`` the incoming one; both accept an
address, a URI or channel text, or a Channel.  A cpr channel must be able to
pass descriptors, so it is refused on any transport that cannot.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

from ..address import Address
from ..capabilities import Capability
from ..channel import Channel, ChannelType, parse_channel
from ..errors import CapabilityError
from ..registry import FdPassing, refuse_unknown_options, transport_for

# Stream.from_fd and Listener.from_fd are the fd transport's: it is loaded with
# them, not at their first call, which a process taking descriptors over makes
# in the middle of its handoff.
from . import fd as _fd  # noqa: F401
from ._base import FdAttribute, Listener, Stream
from ._socket import SocketListener, SocketStream, UnixSocketStream

__all__ = [
    "FdAttribute",
    "Listener",
    "SocketListener",
    "SocketStream",
    "Stream",
    "Target",
    "UnixSocketStream",
    "check_options",
    "connect",
    "listen",
    "resolve_target",
]

Target = Address | Channel | str


def resolve_target(target: Target) -> tuple[Address, ChannelType]:
    """The address and channel type of an address, URI or channel text, or Channel."""
    if isinstance(target, str):
        target = parse_channel(target)
    if isinstance(target, Channel):
        return target.addr, target.type
    return target, ChannelType.MAIN


def check_options(verb: str, target: Target, options: Mapping[str, object]) -> None:
    """AddressError unless ``target``'s transport takes every one of ``options``
    for ``verb`` ("connect" or "listen"): a wrong option fails before anything opens."""
    if not options:
        return
    address, _ = resolve_target(target)
    refuse_unknown_options(verb, address, transport_for(address).verb(verb, address), options)


async def _open(verb: str, target: Target, options: dict[str, Any]) -> Stream | Listener:
    """Open ``target`` with the transport's ``verb``; a cpr channel must pass descriptors."""
    check_options(verb, target, options)
    address, kind = resolve_target(target)
    transport = transport_for(address)
    cpr = kind is ChannelType.CPR
    if cpr and transport.fd_passing is FdPassing.NEVER:
        _refuse_cpr(address)
    opened: Stream | Listener = await transport.verb(verb, address)(address, **options)
    can_pass = opened.capabilities if isinstance(opened, Stream) else opened.stream_capabilities
    if cpr and Capability.FD_PASSING not in can_pass:  # an fd: that is no AF_UNIX socket
        await opened.aclose()
        _refuse_cpr(address)
    return opened


def _refuse_cpr(address: Address) -> NoReturn:
    raise CapabilityError(
        f"a cpr channel must pass descriptors, and the {address.scheme} transport "
        f"({address}) cannot: use a unix socket, or an fd: that is an AF_UNIX socket"
    )


async def connect(target: Target, **options: Any) -> Stream:
    """Open the outgoing side of ``target`` and return its stream."""
    stream = await _open("connect", target, options)
    assert isinstance(stream, Stream)
    return stream


async def listen(target: Target, **options: Any) -> Listener:
    """Open the incoming side of ``target``; ``async with`` it and ``accept()`` peers."""
    listener = await _open("listen", target, options)
    assert isinstance(listener, Listener)
    return listener
