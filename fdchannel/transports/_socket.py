"""Streams and listeners over connected and listening sockets (unix, tcp, vsock, fd)."""

from __future__ import annotations

import array
import functools
import os
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
from anyio.abc import SocketAttribute

from .. import fds as fdpass
from ..capabilities import Capability
from ..credentials import peer_credentials
from ..errors import ConnectError
from ..sockets import ListeningSocket, drain_queued, read_closing_strays
from ._base import DescriptorStream, FdAttribute, Listener, Stream

if TYPE_CHECKING:
    from ..address import Address

__all__ = [
    "SocketListener",
    "SocketStream",
    "UnixSocketStream",
    "async_connect",
    "stream_for_socket",
]


class SocketStream(DescriptorStream):
    """A connected stream socket; owns the socket object."""

    capabilities = Capability.HALF_CLOSE

    def __init__(self, sock: socket.socket, address: Address | None) -> None:
        self._sock = sock
        super().__init__(sock.fileno(), address)

    @property
    def socket(self) -> socket.socket:
        """The socket itself, for options and addresses (do not read from it)."""
        return self._sock

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {**super().extra_attributes, **_socket_attributes(self._sock, peer=True)}

    def _read_once(self, max_bytes: int) -> bytes:
        return self._sock.recv(max_bytes)

    def _write_once(self, data: memoryview) -> int:
        return self._sock.send(data, socket.MSG_NOSIGNAL)

    def _close_fd(self) -> None:
        self._sock.close()

    async def send_eof(self) -> None:
        await anyio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise self._translate(exc) from exc
        await anyio.lowlevel.cancel_shielded_checkpoint()


class UnixSocketStream(SocketStream):
    """An AF_UNIX stream socket: bytes, descriptors and the peer's credentials."""

    capabilities = Capability.HALF_CLOSE | Capability.FD_PASSING

    def __init__(self, sock: socket.socket, address: Address | None) -> None:
        super().__init__(sock, address)
        #: Descriptors that arrived on a plain ``receive`` and were closed.
        self.discarded_fds = 0

    @property
    def peer_credentials(self) -> tuple[int, int, int]:
        """The peer's (pid, uid, gid) as the kernel recorded them at connect (SO_PEERCRED)."""
        return peer_credentials(self._sock)

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {
            **super().extra_attributes,
            FdAttribute.peer_credentials: lambda: peer_credentials(self._sock),
        }

    def _read_once(self, max_bytes: int) -> bytes:
        return read_closing_strays(self, self._sock, max_bytes)

    async def receive_fds_many(
        self, max_bytes: int, maxfds: int = fdpass.SCM_MAX_FD, max_messages: int = 64
    ) -> tuple[bytes, list[int]]:
        """``receive_fds``, then whatever more is already queued, in one call.

        The kernel returns at most one message with descriptors per recvmsg;
        draining what is queued without a trip through the event loop keeps a
        stream of many such messages at the kernel's pace.  The bytes are
        joined and the descriptors kept in order, so each still arrives at or
        before its byte.
        """
        data, fds = await self._receive_fd_array(max_bytes, maxfds, max_messages)
        return data, fds.tolist()

    async def _receive_fd_array(
        self, max_bytes: int, maxfds: int = fdpass.SCM_MAX_FD, max_messages: int = 64
    ) -> tuple[bytes, array.array[int]]:
        """``receive_fds_many``, the descriptors in an ``array('i')``: C ints, no
        Python int for each of the thousands a drain brings (the state
        receivers' read: 10,000 as ints cost 150 to 300 us)."""
        data, first = await self.receive_fds(max_bytes, maxfds)
        fds = array.array("i", first)
        if len(data) < max_bytes and max_messages > 1 and not self._pending:
            data, self._eof_seen = drain_queued(
                self._sock, data, fds, max_bytes, maxfds, max_messages, self._translate
            )
        return data, fds

    async def peek(self, size: int) -> bytes:
        """Wait for data and return up to ``size`` bytes without consuming them.

        A peek has no control buffer, so it installs none of the descriptors
        that may come with the bytes: a receiver can look first, then make room.
        Returns b"" at EOF.
        """
        self._check_open()
        if self._pending:
            return bytes(self._pending[:size])
        if self._eof_seen:
            return b""
        return await self._retry(lambda: self._sock.recv(size, socket.MSG_PEEK), readable=True)

    async def send_fds(self, data: bytes, fds: list[int]) -> None:
        await anyio.lowlevel.checkpoint_if_cancelled()
        await self._send_split(data, fds)

    async def send_fds_many(self, messages: Iterable[tuple[bytes, Sequence[int]]]) -> None:
        """``send_fds`` for each message in turn, as one call: one checkpoint, and the
        event loop visited only when the socket buffer is full."""
        await anyio.lowlevel.checkpoint_if_cancelled()
        for data, fds in messages:
            # The usual case inline: one message that the buffer takes whole.
            if data and len(fds) <= fdpass.SCM_MAX_FD:
                sent = self._try_send(data, fds)
                if sent != len(data):
                    await self._finish_message(data, fds, sent)
            else:
                await self._send_split(data, fds)

    async def _send_split(self, data: bytes, fds: Sequence[int]) -> None:
        """One logical send, in messages of at most SCM_MAX_FD descriptors."""
        for chunk, batch in fdpass.split_for_sending(data, fds):
            await self._finish_message(chunk, batch, self._try_send(chunk, batch))

    def _try_send(self, data: bytes, fds: Sequence[int]) -> int | None:
        """One attempt at once (the buffer usually has room): the bytes it sent,
        with every descriptor, or None if the buffer was full and nothing went."""
        self._check_open()
        try:
            return fdpass.sendmsg_fds(self._sock, data, fds)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise self._translate(exc) from exc

    async def _finish_message(self, data: bytes, fds: Sequence[int], sent: int | None) -> None:
        """The rest of a message after ``_try_send``: its descriptors ride on the first
        sendmsg that sends anything, never again."""
        view = memoryview(data).cast("B")
        attach = fds
        if sent is not None:
            view, attach = view[sent:], ()
        while view:
            n = await self._retry(
                functools.partial(fdpass.sendmsg_fds, self._sock, view, attach), readable=False
            )
            view, attach = view[n:], ()  # a short write already carried them

    async def receive_fds(
        self, max_bytes: int, maxfds: int = fdpass.SCM_MAX_FD
    ) -> tuple[bytes, list[int]]:
        if max_bytes < 1 or maxfds < 0:
            raise ValueError("max_bytes must be at least 1 and maxfds not negative")
        return await self._receive_with(
            max_bytes, lambda: fdpass.recvmsg_fds(self._sock, max_bytes, maxfds)
        )


def _socket_attributes(sock: socket.socket, *, peer: bool) -> dict[Any, Callable[[], Any]]:
    """anyio's SocketAttribute entries for ``sock`` (ports for inet sockets only)."""
    attributes: dict[Any, Callable[[], Any]] = {
        SocketAttribute.raw_socket: lambda: sock,
        SocketAttribute.family: lambda: sock.family,
        SocketAttribute.local_address: sock.getsockname,
    }
    if peer:
        attributes[SocketAttribute.remote_address] = sock.getpeername
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        attributes[SocketAttribute.local_port] = lambda: sock.getsockname()[1]
        if peer:
            attributes[SocketAttribute.remote_port] = lambda: sock.getpeername()[1]
    return attributes


def stream_for_socket(sock: socket.socket, address: Address | None) -> SocketStream:
    """Wrap a connected stream socket in the right stream class for its family."""
    if sock.family == socket.AF_UNIX:
        return UnixSocketStream(sock, address)
    return SocketStream(sock, address)


async def async_connect(sock: socket.socket, sockaddr: object, address: Address) -> None:
    """Connect a non-blocking socket, waiting for the result without blocking the loop."""
    sock.setblocking(False)
    try:
        sock.connect(sockaddr)  # type: ignore[arg-type]
    except BlockingIOError:
        pass
    except OSError as exc:
        raise ConnectError(f"cannot connect to {address}: {exc.strerror}", address) from exc
    else:
        return
    # EINPROGRESS: the kernel reports the outcome as writability plus SO_ERROR.
    await anyio.wait_writable(sock)
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        cause = OSError(err, os.strerror(err))
        raise ConnectError(f"cannot connect to {address}: {cause.strerror}", address) from cause


class SocketHeldListener(Listener):
    """A listener over one socket of its own (``_sock``): its descriptor, and anyio's
    socket attributes of it."""

    _sock: socket.socket

    def fileno(self) -> int:
        return self._sock.fileno()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {
            **super().extra_attributes,
            FdAttribute.fileno: self.fileno,
            **_socket_attributes(self._sock, peer=False),
        }


class SocketListener(ListeningSocket, SocketHeldListener):
    """A listening stream socket; ``accept`` returns one stream per peer (see
    ListeningSocket for its arguments: the policy, the setup and close hooks)."""

    capabilities = Capability.MULTI_ACCEPT
    stream_kinds = (SocketStream.capabilities, UnixSocketStream.capabilities)

    async def accept(self) -> Stream:
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            stream = self._accept_now(lambda conn: stream_for_socket(conn, self.address))
            if stream is not None:
                return stream
            try:
                await anyio.wait_readable(self._sock)
            except anyio.ClosedResourceError:
                raise anyio.ClosedResourceError from None

    async def aclose(self) -> None:
        # Wake any task waiting to accept before the descriptor can be reused.
        self._close_listening(before=anyio.notify_closing)
        await anyio.lowlevel.checkpoint()
