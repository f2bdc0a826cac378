"""A datagram socket as a listener: UDP and unix datagram sockets.

Not an address kind of its own: the listener ``Upgrader.listen`` returns for
a ``udp:`` or ``unixgram:`` address, or an ``fd:`` naming a datagram socket.
A datagram socket has no connections to accept: ``receive()`` returns the
next datagram and who sent it, ``send()`` answers.  Both wait through
anyio's ``wait_readable``/``wait_writable`` on the non-blocking socket, as
the streams do (``_base.DescriptorStream``), so they run on asyncio, uvloop
and trio.

Several processes may hold the same socket (the two generations of an
upgrade): the kernel queues each datagram once, and whichever process
receives it first has it; one nobody received yet stays queued for the
others.

A unix datagram socket has no peer to check at connect: instead, with
SO_PASSCRED set, the kernel attaches to every datagram its sender's pid, uid
and gid (SCM_CREDENTIALS), and the listener's credential ``policy`` is
applied to each one.  A datagram from a refused sender is dropped, counted
in ``refused`` and logged (the 1st, 2nd, 4th, 8th... time, so that a flood
does not flood the log).  One queued before SO_PASSCRED was set carries
no credentials: the kernel reports pid 0 and the overflow uid (65534), which
``same_user_or_root`` refuses.  UDP has no credentials: no policy applies.
"""

from __future__ import annotations

import array
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import anyio
import anyio.abc
import anyio.lowlevel

from ..address import FdAddress
from ..capabilities import Capability
from ..credentials import CredentialPolicy, Credentials, same_user_or_root
from ..errors import AddressError, CapabilityError, TransportError
from ..fds import close_all
from ..sockets import DEFAULT_RECEIVE
from ._base import Stream
from ._socket import SocketHeldListener

__all__ = ["DatagramListener", "Peer"]

log = logging.getLogger("fdchannel")

#: Who sent a datagram, as the socket module spells it: (host, port) for UDP over
#: IPv4, (host, port, flowinfo, scope_id) over IPv6; for a unix datagram socket
#: the sender's path (str), abstract name (bytes, a NUL first), or None for a
#: sender bound to nothing (which cannot be answered).
Peer: TypeAlias = tuple[str, int] | tuple[str, int, int, int] | str | bytes | None

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
#: Room for the credentials and nothing more: descriptors sent along with a
#: datagram find none, and the kernel closes them (MSG_CTRUNC).
_CONTROL = socket.CMSG_SPACE(_UCRED.size)
_NO_CONNECTIONS = "a datagram socket has no connections: use receive()/send()"
#: How long a send waits before trying again when a unix peer's queue is full.
_FULL_DELAYS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05)


class DatagramListener(SocketHeldListener):
    """A bound datagram socket: ``receive()`` and ``send()``; ``accept()`` is refused.

    ``policy`` applies to each datagram of a unix datagram socket (see the
    module); the socket is taken over (closing the listener closes it).
    """

    capabilities = Capability.NONE
    stream_capabilities = Capability.NONE

    def __init__(
        self,
        sock: socket.socket,
        address: FdAddress,
        *,
        policy: CredentialPolicy | None = same_user_or_root,
    ) -> None:
        if sock.type != socket.SOCK_DGRAM:
            raise TransportError(
                f"{address} is a {sock.type.name} socket; a datagram socket is needed", address
            )
        super().__init__(address)
        sock.setblocking(False)
        self._sock = sock
        self._closed = False
        self.unix = sock.family == socket.AF_UNIX
        #: Who may send (unix datagram sockets only; UDP has no credentials).
        self.policy = policy if self.unix else None
        #: Datagrams dropped because the policy refused their sender.
        self.refused = 0
        if self.policy is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            except OSError as exc:
                raise TransportError(
                    f"{address}: cannot ask for the senders' credentials: {exc.strerror}", address
                ) from exc

    @classmethod
    def from_fd(
        cls, fd: int, *, policy: CredentialPolicy | None = same_user_or_root
    ) -> DatagramListener:
        """A listener that takes over ``fd``, a datagram socket (closing the listener
        closes it).  TransportError for any other descriptor, which stays the caller's."""
        where = FdAddress(str(fd))
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise TransportError(f"{where}: {exc.strerror}", where) from exc
        try:
            return cls(sock, where, policy=policy)
        except BaseException:
            sock.detach()
            raise

    @property
    def socket(self) -> socket.socket:
        """The socket itself, for options and addresses (do not read from it)."""
        return self._sock

    def fileno(self) -> int:
        self._check_open()
        return super().fileno()

    async def accept(self) -> Stream:
        raise CapabilityError(_NO_CONNECTIONS)

    async def serve(
        self,
        handler: Callable[[Stream], Awaitable[Any]],
        task_group: anyio.abc.TaskGroup | None = None,
    ) -> None:
        raise CapabilityError(_NO_CONNECTIONS)

    async def receive(self, max_bytes: int = DEFAULT_RECEIVE) -> tuple[bytes, Peer]:
        """The next datagram and its sender; one longer than ``max_bytes`` is cut short."""
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        await anyio.lowlevel.checkpoint_if_cancelled()
        waited = False
        while True:
            self._check_open()
            try:
                received = self._receive_once(max_bytes)
            except BlockingIOError:
                waited = True
                try:
                    await anyio.wait_readable(self._sock)
                except anyio.ClosedResourceError:
                    raise anyio.ClosedResourceError from None
                continue
            except OSError as exc:
                raise self._error("receive", exc) from exc
            if received is None:  # refused: let others run before the next one
                await anyio.lowlevel.checkpoint()
                waited = True
                continue
            # Returned whatever happens now: a cancelled receive loses no datagram.
            if not waited:
                await anyio.lowlevel.cancel_shielded_checkpoint()
            return received

    def _receive_once(self, max_bytes: int) -> tuple[bytes, Peer] | None:
        """One non-blocking receive; None for a datagram the policy refused (dropped)."""
        if self.policy is None:
            data, peer = self._sock.recvfrom(max_bytes)
            return data, peer
        data, ancillary, _flags, peer = self._sock.recvmsg(
            max_bytes, _CONTROL, socket.MSG_CMSG_CLOEXEC
        )
        creds: Credentials | None = None
        for level, kind, payload in ancillary:
            if level != socket.SOL_SOCKET:
                continue
            if kind == socket.SCM_CREDENTIALS and len(payload) >= _UCRED.size:
                creds = Credentials(*_UCRED.unpack_from(payload))
            elif kind == socket.SCM_RIGHTS:  # none fit, but should one: it is not kept
                stray = array.array("i")
                stray.frombytes(payload[: len(payload) - len(payload) % stray.itemsize])
                close_all(stray)
        if creds is None or not self.policy(creds):
            self._refuse(creds)
            return None
        return data, peer

    def _refuse(self, creds: Credentials | None) -> None:
        self.refused += 1
        if self.refused & (self.refused - 1) == 0:  # 1, 2, 4, 8...
            who = (
                "an unknown sender"
                if creds is None
                else (f"pid {creds.pid} uid {creds.uid} gid {creds.gid}")
            )
            log.warning(
                "%s: dropped a datagram from %s: the policy refuses it (%d dropped so far)",
                self._describe(),
                who,
                self.refused,
            )

    async def send(self, data: bytes, address: Peer) -> None:
        """Send ``data`` as one datagram to ``address`` (a sender ``receive`` returned)."""
        if address is None:
            raise AddressError(
                f"{self._describe()}: nowhere to send to: the sender was bound to no address"
            )
        await anyio.lowlevel.checkpoint_if_cancelled()
        delays = iter(_FULL_DELAYS)
        waited = False
        while True:
            self._check_open()
            try:
                self._sock.sendto(data, address)
            except BlockingIOError:
                waited = True
            except OSError as exc:
                raise self._error(f"send to {address!r}", exc) from exc
            else:
                if not waited:
                    await anyio.lowlevel.cancel_shielded_checkpoint()
                return
            try:
                if self.unix:
                    # The queue of the unix socket sent to is full.  poll() cannot
                    # tell when it has room (it watches a connected socket's peer
                    # only), so try again a little later.
                    await anyio.sleep(next(delays, _FULL_DELAYS[-1]))
                else:
                    await anyio.wait_writable(self._sock)
            except anyio.ClosedResourceError:
                raise anyio.ClosedResourceError from None

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            # Wake any task still waiting on the socket before its number is reused.
            anyio.notify_closing(self._sock)
            self._sock.close()
        await anyio.lowlevel.checkpoint()

    def _check_open(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError

    def _describe(self) -> str:
        try:
            local = self._sock.getsockname()
        except OSError:
            local = None
        if isinstance(local, bytes):
            local = "@" + local[1:].decode(errors="replace")  # an abstract name
        return f"datagram socket {local!r}" if local else f"datagram socket {self.address}"

    def _error(self, what: str, exc: OSError) -> Exception:
        if self._closed:
            return anyio.ClosedResourceError()
        return TransportError(f"{self._describe()}: {what}: {exc.strerror}", self.address)
