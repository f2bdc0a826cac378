"""Transports: one module per address kind, each offering ``connect`` and ``listen``.

``connect`` is the outgoing side, ``listen`` the incoming one; both accept an
address, a URI or channel text, or a Channel.  A cpr channel must be able to
pass descriptors, so it is refused on any transport that cannot.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any, NoReturn

from ..address import (
    Address,
    ExecAddress,
    FdAddress,
    FileAddress,
    RdmaAddress,
    TcpAddress,
    UnixAddress,
    VsockAddress,
)
from ..capabilities import Capability
from ..channel import Channel, ChannelType, parse_channel
from ..errors import AddressError, CapabilityError, TransportError
from ._base import FdAttribute, Listener, Stream

__all__ = [
    "FdAttribute",
    "Listener",
    "Stream",
    "Target",
    "check_options",
    "connect",
    "listen",
    "resolve_target",
]

Target = Address | Channel | str

_MODULES: dict[type[Any], str] = {
    UnixAddress: "unix",
    TcpAddress: "tcp",
    VsockAddress: "vsock",
    FdAddress: "fd",
    FileAddress: "file",
    ExecAddress: "exec",
}


def resolve_target(target: Target) -> tuple[Address, ChannelType]:
    """The address and channel type of an address, URI or channel text, or Channel."""
    if isinstance(target, str):
        target = parse_channel(target)
    if isinstance(target, Channel):
        return target.addr, target.type
    return target, ChannelType.MAIN


def _module(address: Address) -> Any:
    if isinstance(address, RdmaAddress):
        raise TransportError(f"{address}: rdma is not supported by fdchannel", address)
    return importlib.import_module(f".{_MODULES[type(address)]}", __name__)


def check_options(verb: str, target: Target, options: Mapping[str, object]) -> None:
    """AddressError unless ``target``'s transport takes every one of ``options``
    for ``verb`` ("connect" or "listen"): a wrong option fails before anything opens."""
    if not options:
        return
    address, _ = resolve_target(target)
    taken = [
        name
        for name, parameter in inspect.signature(getattr(_module(address), verb)).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(options) - set(taken))
    if unknown:
        raise AddressError(
            f"{address}: the {type(address).__name__} transport's {verb} takes no option "
            f"{', '.join(map(repr, unknown))} (it takes: {', '.join(taken) or 'none'})",
            str(address),
        )


async def _open(verb: str, target: Target, options: dict[str, Any]) -> Stream | Listener:
    """Open ``target`` with the transport's ``verb``; a cpr channel must pass descriptors."""
    check_options(verb, target, options)
    address, kind = resolve_target(target)
    cpr = kind is ChannelType.CPR
    if cpr and not isinstance(address, UnixAddress | FdAddress):
        _refuse_cpr(address)
    opened: Stream | Listener = await getattr(_module(address), verb)(address, **options)
    can_pass = opened.capabilities if isinstance(opened, Stream) else opened.stream_capabilities
    if cpr and Capability.FD_PASSING not in can_pass:
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
