"""AF_VSOCK stream sockets between a virtual machine and its host: ``vsock:CID:PORT``.

The CID and port stay text in the address and are checked here, at use, as
QEMU's util/qemu-sockets.c does: each must be an unsigned 32-bit decimal
number.  "-1" is refused like QEMU refuses it; "any CID" is written
4294967295 (VMADDR_CID_ANY).
"""

from __future__ import annotations

import errno
import re
import socket

import anyio.lowlevel

from ..address import VsockAddress
from ..errors import AddressError, ConnectError, TransportError
from ._socket import SocketListener, SocketStream, async_connect

__all__ = ["VMADDR_CID_ANY", "VMADDR_PORT_ANY", "connect", "listen", "sockaddr"]

#: <linux/vm_sockets.h>: bind to every CID, or let the kernel pick a port.
VMADDR_CID_ANY = 0xFFFFFFFF
VMADDR_PORT_ANY = 0xFFFFFFFF
_UINT32_MAX = 0xFFFFFFFF
# What QEMU's parse_uint_full(s, 10) takes: strtoull's leading white space
# and optional plus sign, then decimal digits to the end; a minus is refused.
_DECIMAL = re.compile(r"[ \t\n\v\f\r]*\+?[0-9]+")
_UNSUPPORTED = (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT, errno.ESOCKTNOSUPPORT)


def _number(address: VsockAddress, what: str, text: str) -> int:
    value = int(text) if _DECIMAL.fullmatch(text) else None
    if value is None or value > _UINT32_MAX:
        hint = (
            "; any CID is written 4294967295 (VMADDR_CID_ANY)"
            if what == "cid" and text.strip() == "-1"
            else ""
        )
        raise AddressError(
            f"vsock {what} {text!r} is not an unsigned 32-bit decimal number "
            f"(0 to {_UINT32_MAX}){hint}",
            str(address),
        )
    return value


def sockaddr(address: VsockAddress) -> tuple[int, int]:
    """The (cid, port) pair for ``address``, checked as QEMU checks it."""
    return _number(address, "cid", address.cid), _number(address, "port", address.port)


def _new_socket(address: VsockAddress, error: type[TransportError]) -> socket.socket:
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        raise error("vsock is not supported on this host (no AF_VSOCK in this Python)", address)
    try:
        return socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            raise error(f"vsock is not supported on this host: {exc.strerror}", address) from exc
        raise error(f"cannot create a vsock socket for {address}: {exc.strerror}", address) from exc


async def connect(address: VsockAddress) -> SocketStream:
    """Connect to CID:PORT: the outgoing side.

    The kernel bounds the wait (SO_VM_SOCKETS_CONNECT_TIMEOUT); a caller that
    wants a shorter one wraps the call in a timeout.
    """
    target = sockaddr(address)
    await anyio.lowlevel.checkpoint_if_cancelled()
    sock = _new_socket(address, ConnectError)
    try:
        await async_connect(sock, target, address)
        return SocketStream(sock, address)
    except BaseException:
        sock.close()
        raise


async def listen(address: VsockAddress, *, backlog: int = 128) -> SocketListener:
    """Listen on CID:PORT: the incoming side, accepting many peers.

    Port 0 means "any free port" as for tcp (VMADDR_PORT_ANY to the kernel,
    where 0 itself would be a privileged port); ``listener.address`` then
    holds the port the kernel chose.
    """
    cid, port = sockaddr(address)
    await anyio.lowlevel.checkpoint_if_cancelled()
    sock = _new_socket(address, TransportError)
    try:
        sock.bind((cid, VMADDR_PORT_ANY if port == 0 else port))
        sock.listen(backlog)
        bound_port = sock.getsockname()[1]
    except OSError as exc:
        sock.close()
        raise TransportError(f"cannot listen on {address}: {exc.strerror}", address) from exc
    except BaseException:
        sock.close()
        raise
    return SocketListener(sock, VsockAddress(str(cid), str(bound_port)))
