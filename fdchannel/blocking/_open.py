"""``connect`` and ``listen`` without an event loop: unix, tcp and fd: for now.

Targets are what the async API takes (an address, URI or channel text, a
Channel), and a cpr channel must pass descriptors, as there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

from ..address import Address, FdAddress, RdmaAddress, TcpAddress, UnixAddress
from ..capabilities import Capability
from ..channel import ChannelType, Target, refuse_cpr, resolve_target
from ..errors import CapabilityError, ConnectError, TransportError
from ..registry import refuse_unknown_options
from . import _fd, _tcp, _unix
from ._deadline import Deadline
from ._listener import Listener
from ._stream import Stream

__all__ = ["check_listen_options", "connect", "listen"]

_AVAILABLE = "unix, tcp and fd"


#: Each transport's listen; every one takes its address first, then keyword options.
_LISTEN: dict[type[Address], Callable[..., Listener]] = {
    UnixAddress: _unix.listen,
    TcpAddress: _tcp.listen,
    FdAddress: _fd.listen,
}


def _unavailable(address: Address) -> NoReturn:
    if isinstance(address, RdmaAddress):
        raise TransportError(f"{address}: rdma is not supported by fdchannel", address)
    raise CapabilityError(
        f"{address}: the {address.scheme} transport is not available in fdchannel.blocking "
        f"yet (it has {_AVAILABLE}); use the async API for it"
    )


def check_listen_options(target: Target, options: dict[str, Any]) -> None:
    """AddressError unless ``target``'s blocking ``listen`` takes every one of ``options``."""
    address, _ = _resolve(target)
    refuse_unknown_options("listen", address, _LISTEN[type(address)], options)


def _resolve(target: Target) -> tuple[Address, bool]:
    """The address, and whether it is a cpr channel (which must pass descriptors)."""
    address, kind = resolve_target(target)
    cpr = kind is ChannelType.CPR
    if not isinstance(address, UnixAddress | TcpAddress | FdAddress):
        _unavailable(address)
    if cpr and isinstance(address, TcpAddress):
        refuse_cpr(address)
    return address, cpr


def connect(target: Target, *, timeout: float | None = None) -> Stream:
    """Open the outgoing side of ``target`` and return its stream.

    ``timeout`` bounds the connect itself (a TransportTimeout); a peer that
    is not listening is a ConnectError at once, as on the async side.
    """
    address, cpr = _resolve(target)
    deadline = Deadline(timeout)
    try:
        if isinstance(address, UnixAddress):
            stream = _unix.connect(address, deadline)
        elif isinstance(address, TcpAddress):
            stream = _tcp.connect(address, deadline)
        else:
            assert isinstance(address, FdAddress)
            stream = _fd.connect(address)
    except OSError as exc:  # no socket to be had (EMFILE, ENOBUFS, ...)
        raise ConnectError(f"cannot connect to {address}: {exc.strerror}", address) from exc
    if cpr and Capability.FD_PASSING not in stream.capabilities:
        stream.close()  # an fd: that is no AF_UNIX socket
        refuse_cpr(address)
    return stream


def listen(target: Target, **options: Any) -> Listener:
    """Open the incoming side of ``target``; ``with`` it and ``accept(timeout)`` peers.

    Options as on the async side: ``mode``, ``policy`` and ``backlog`` for
    unix, ``policy`` for an fd: listening socket.
    """
    address, cpr = _resolve(target)
    function = _LISTEN[type(address)]
    refuse_unknown_options("listen", address, function, options)
    try:
        listener = function(address, **options)
    except OSError as exc:  # no socket to be had, or the socket file cannot be set up
        raise TransportError(f"cannot listen on {address}: {exc.strerror}", address) from exc
    if cpr and Capability.FD_PASSING not in listener.stream_capabilities:
        listener.close()
        refuse_cpr(address)
    return listener
