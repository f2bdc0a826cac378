"""Transports: one module per address kind, each offering ``connect`` and ``listen``.

``connect`` is the outgoing side, ``listen`` the incoming one; both accept an
address, a URI or channel text, or a Channel.  A cpr channel must be able to
pass descriptors, so it is refused on any transport that cannot.  This is
the async layer: the steps that never wait are the loop-free modules'
(``fdchannel.sockets``, ``unix_sockets``, ``tcp_sockets``, ``fd_names``),
which ``fdchannel.blocking`` shares; ``retrying`` connects to a peer that
is still starting and accepts past refused ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..capabilities import Capability
from ..channel import ChannelType, Target, refuse_cpr, resolve_target
from ..registry import FdPassing, refuse_unknown_options, transport_for

# Stream.from_fd and Listener.from_fd call the fd transport, which registers
# itself with them when loaded: it is loaded with them, not at their first
# call, which a process taking descriptors over makes in the middle of its
# handoff.
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
        refuse_cpr(address)
    opened: Stream | Listener = await transport.verb(verb, address)(address, **options)
    can_pass = opened.capabilities if isinstance(opened, Stream) else opened.stream_capabilities
    if cpr and Capability.FD_PASSING not in can_pass:  # an fd: that is no AF_UNIX socket
        await opened.aclose()
        refuse_cpr(address)
    return opened


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
