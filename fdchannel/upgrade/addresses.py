"""What a generation listens on: fdchannel's own address grammar for upgrades.

Not QEMU's migration URIs (``fdchannel.address``): those name one end of a
migration stream; these name a socket that every generation inherits::

    tcp:HOST:PORT     a TCP listener (tcp:[::1]:PORT; tcp::PORT: any address)
    udp:HOST:PORT     a UDP socket (udp:[::1]:PORT; udp::PORT: any address)
    unix:PATH         a unix stream listener
    unixgram:PATH     a unix datagram socket
    vsock:CID:PORT    a vsock listener (a virtual machine's host or guest)
    fd:N, fd:NAME     a socket already open: a descriptor number, or a name
                      registered (``register_fd``) or passed by systemd

``tcp:``, ``unix:``, ``vsock:`` and ``fd:`` are read by ``fdchannel.address``, so they
mean what they mean to ``fdchannel.listen`` (options such as ``,ipv6`` and
``,to=PORT`` included); ``udp:`` is read by the same parser as ``tcp:`` and
takes ``,ipv4`` and ``,ipv6`` only.  The schemes are case-sensitive.  As
with ``unix:``, ``unixgram:@NAME`` is a file named ``@NAME``: an abstract
socket has no text here, but ``UnixAddress(NAME, abstract=True)`` and
``UnixDatagramAddress(NAME, abstract=True)`` name one.  An address that
fits none of these raises AddressError naming the schemes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, TypeAlias

from ..address import (
    Address,
    FdAddress,
    InetAddress,
    TcpAddress,
    UnixAddress,
    VsockAddress,
    _parse_inet,
    parse_address,
)
from ..errors import AddressError
from ..qemu.cstring import c_string, c_text, shown

__all__ = [
    "SCHEMES",
    "DatagramAddress",
    "ListenAddress",
    "UdpAddress",
    "UnixDatagramAddress",
    "listen_address",
]

#: InetAddress fields that mean something to TCP only.
_TCP_ONLY = (
    "to",
    "keep_alive",
    "keep_alive_count",
    "keep_alive_idle",
    "keep_alive_interval",
    "mptcp",
)
#: What ``listen`` takes, as the refusal spells it.
SCHEMES = "tcp:HOST:PORT, udp:HOST:PORT, unix:PATH, unixgram:PATH, vsock:CID:PORT or fd:N"


@dataclass(frozen=True)
class UdpAddress(InetAddress):
    """``udp:HOST:PORT[,ipv4][,ipv6]``: a UDP socket."""

    scheme: ClassVar[str] = "udp"

    def __post_init__(self) -> None:
        super().__post_init__()
        meaningless = [name for name in _TCP_ONLY if getattr(self, name) is not None]
        if meaningless:
            options = ", ".join(name.replace("_", "-") for name in meaningless)
            raise AddressError(
                f"{self}: udp: takes the ipv4 and ipv6 options only, not {options}", str(self)
            )

    def __str__(self) -> str:
        host = self.host
        where = f"[{host}]" if ":" in host and not host.startswith("[") else host
        flags = "".join(
            f",{name}={'on' if value else 'off'}"
            for name, value in (("ipv4", self.ipv4), ("ipv6", self.ipv6))
            if value is not None
        )
        return f"udp:{where}:{self.port}{flags}"


@dataclass(frozen=True)
class UnixDatagramAddress:
    """``unixgram:PATH``: a unix datagram socket (``abstract``: a name, no file)."""

    path: str
    abstract: bool = False
    scheme: ClassVar[str] = "unixgram"

    def __post_init__(self) -> None:
        UnixAddress(self.path, self.abstract)  # the same checks as a unix: path

    @property
    def unix(self) -> UnixAddress:
        """The same path or name as ``fdchannel.address`` spells it (its sun_path)."""
        return UnixAddress(self.path, self.abstract)

    def __str__(self) -> str:
        return f"unixgram:@{self.path}" if self.abstract else f"unixgram:{self.path}"


DatagramAddress: TypeAlias = UdpAddress | UnixDatagramAddress
ListenAddress: TypeAlias = (
    TcpAddress | UnixAddress | VsockAddress | FdAddress | UdpAddress | UnixDatagramAddress
)
_LISTEN_TYPES = (TcpAddress, UnixAddress, VsockAddress, FdAddress, UdpAddress, UnixDatagramAddress)


def _refused(address: object) -> AddressError:
    text = str(address) if not isinstance(address, str) else address
    return AddressError(
        f"{shown(text)} is no address to listen on for upgrades: use {SCHEMES}", text
    )


def listen_address(address: str | Address | DatagramAddress) -> ListenAddress:
    """``address`` read by the grammar above (an address object is checked, not read)."""
    if isinstance(address, _LISTEN_TYPES):
        return address
    if not isinstance(address, str):
        raise _refused(address)
    buf = c_string(address, address)
    if buf.startswith(b"udp:"):
        return _parse_inet(UdpAddress, address, buf[4:])  # address.py's inet reader
    if buf.startswith(b"unixgram:"):
        if len(buf) == len(b"unixgram:"):
            raise AddressError(
                f"invalid address {address!r}: expected unixgram:PATH: the path is empty", address
            )
        return UnixDatagramAddress(c_text(buf[len(b"unixgram:") :]))
    if buf.startswith((b"tcp:", b"unix:", b"vsock:", b"fd:")):
        found = parse_address(address)
        assert isinstance(found, TcpAddress | UnixAddress | VsockAddress | FdAddress)
        return found
    raise _refused(address)
