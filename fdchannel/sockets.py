"""Socket facts and steps both stream layers share, the async one and the blocking one.

How big a buffer to ask for, how much to read by default, what a wait for
the peer's close may keep, and which errno values mean "the peer is gone"
rather than "we did something wrong".  And what never waits: a listening
socket's state and one accept attempt (``ListeningSocket``), one connect
attempt per resolved address (``ConnectAttempts``).  Each layer adds only
its way of waiting (the event loop, or poll under a deadline).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import socket
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol, TypeVar

from . import fds as fdpass
from .capabilities import Capability
from .credentials import CredentialPolicy, check_peer
from .errors import ConnectError, TransportError

if TYPE_CHECKING:
    from .address import Address

__all__ = [
    "BLOCKED",
    "BROKEN_ERRNOS",
    "BUFFER_SIZE",
    "DEFAULT_RECEIVE",
    "MAX_PENDING",
    "ConnectAttempts",
    "ListeningSocket",
    "attempt",
    "drain_queued",
    "keep_until_closed",
    "read_closing_strays",
    "tune_buffers",
]

log = logging.getLogger("fdchannel")

T = TypeVar("T")
#: For annotations in classes that have a ``socket`` attribute of their own.
Socket = socket.socket

#: Socket buffer size we ask for: a few MiB let one wake-up move a megabyte,
#: which is what brings an event-loop stream to raw socket speed.
BUFFER_SIZE = 4 * 1024 * 1024
DEFAULT_RECEIVE = 65536
#: What wait_peer_closed keeps of data that arrives before the hang-up.
MAX_PENDING = 16 * 1024 * 1024
#: errno values that mean "the peer is gone" rather than "we did something wrong".
BROKEN_ERRNOS = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN})


def tune_buffers(sock: socket.socket) -> None:
    """Ask for large send and receive buffers (the kernel caps them at wmem_max/rmem_max)."""
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):  # the kernel's cap is not a failure
            sock.setsockopt(socket.SOL_SOCKET, option, BUFFER_SIZE)


class Blocked(enum.Enum):
    """A non-blocking call that would have waited."""

    BLOCKED = "would block"


BLOCKED = Blocked.BLOCKED


class _Attempting(Protocol):
    """A stream of either layer, as ``attempt`` uses it."""

    def _check_open(self) -> None: ...

    def _translate(self, exc: OSError) -> Exception: ...


class _Counting(Protocol):
    """A socket stream of either layer, as ``read_closing_strays`` uses it."""

    discarded_fds: int

    def _describe(self) -> str: ...


def attempt(stream: _Attempting, op: Callable[[], T]) -> T | Blocked:
    """One non-blocking try of ``op`` on an open ``stream``: its result, BLOCKED when
    it would have waited, or the stream's own error for what the kernel said."""
    stream._check_open()
    try:
        return op()
    except BlockingIOError:
        return BLOCKED
    except OSError as exc:
        raise stream._translate(exc) from exc


def read_closing_strays(stream: _Counting, sock: socket.socket, max_bytes: int) -> bytes:
    """One plain read on a socket that passes descriptors: those that came with the
    bytes, which nobody asked for, are closed here (counted in the stream's
    ``discarded_fds`` and logged) instead of staying open in the process."""
    data, dropped = fdpass.recvmsg_discarding(sock, max_bytes)
    if dropped:
        stream.discarded_fds += dropped
        log.warning(
            "%s: closed descriptor(s) that arrived on a plain receive (%d so far)",
            stream._describe(),
            stream.discarded_fds,
        )
    return data


def keep_until_closed(pending: bytearray, data: bytes, what: str, address: Address | None) -> bool:
    """One read of a wait for the peer's close: True at EOF, else keep ``data``
    in ``pending`` for later receives, up to MAX_PENDING bytes."""
    if not data:
        return True
    if len(pending) + len(data) > MAX_PENDING:
        raise TransportError(
            f"{what}: peer sent more than {MAX_PENDING} bytes while we waited for it to close",
            address,
        )
    pending += data
    return False


def drain_queued(
    sock: socket.socket,
    data: bytes,
    fds: fdpass.Fds,
    max_bytes: int,
    maxfds: int,
    max_messages: int,
    translate: Callable[[OSError], Exception],
) -> tuple[bytes, bool]:
    """``data`` (a first receive's) and what more is already queued, without waiting;
    the descriptors join ``fds``, and True says EOF came.  On an error every
    descriptor in ``fds`` is closed and ``translate``'s error raised."""
    chunks = [data]
    try:
        eof = fdpass.drain_fds(sock, chunks, fds, max_bytes - len(data), maxfds, max_messages - 1)
    except OSError as exc:
        fdpass.close_all(fds)
        raise translate(exc) from exc
    except BaseException:
        fdpass.close_all(fds)
        raise
    return b"".join(chunks), eof


class ListeningSocket:
    """A listening stream socket's state, and the accept steps that do not wait:
    the base of both layers' SocketListener, which add how they wait.

    On an AF_UNIX socket ``policy`` decides which peers ``accept`` returns
    (None admits everyone): a refused peer is closed unread and ``accept``
    raises PeerCredentialsError.  ``on_accept`` sets up each accepted socket;
    ``on_close`` runs once the socket is closed (a unix listener removes its file).
    """

    #: What the accepted streams can do: (another family's, AF_UNIX's).
    stream_kinds: tuple[Capability, Capability]

    def __init__(
        self,
        sock: socket.socket,
        address: Address,
        *,
        policy: CredentialPolicy | None = None,
        on_accept: Callable[[socket.socket], None] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        #: The address actually listened on (e.g. the port the kernel chose): all
        #: that either layer's Listener.__init__ sets, which is not called.
        self.address = address
        self._closed = False
        self.unix = sock.family == socket.AF_UNIX
        self.stream_capabilities = self.stream_kinds[self.unix]
        #: Who may connect (AF_UNIX only; other families have no credentials).
        self.policy = policy if self.unix else None
        self._on_accept = on_accept
        self._on_close = on_close

    @property
    def socket(self) -> socket.socket:
        """The listening socket itself, for inspection."""
        return self._sock

    def _accept_now(self, wrap: Callable[[Socket], T]) -> T | None:
        """The next waiting peer, set up and wrapped; None if none waits yet."""
        while True:
            try:
                conn, _ = self._sock.accept()
            except BlockingIOError:
                return None
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue  # the peer left before we accepted it
                raise TransportError(
                    f"accept on {self.address} failed: {exc.strerror}", self.address
                ) from exc
            break
        try:
            # accept4 gives a blocking, close-on-exec socket; the stream makes it non-blocking.
            tune_buffers(conn)
            # Before a byte is read: a refused peer is closed unread.
            check_peer(conn, self.policy, self.address)
            if self._on_accept is not None:
                self._on_accept(conn)
            return wrap(conn)
        except OSError as exc:
            conn.close()
            raise TransportError(
                f"accept on {self.address}: setting up the peer's socket failed: {exc.strerror}",
                self.address,
            ) from exc
        except BaseException:
            conn.close()
            raise

    def _close_listening(self, before: Callable[[Socket], None] | None = None) -> None:
        """Close the socket once (``before`` first: wake its waiters), then ``on_close``."""
        if self._closed:
            return
        self._closed = True
        if before is not None:
            before(self._sock)
        self._sock.close()
        if self._on_close is not None:
            self._on_close()


class ConnectAttempts:
    """Connecting to each resolved address in turn until one answers::

        attempts = ConnectAttempts(address)
        for family, sockaddr in resolved:
            with attempts.socket(family) as sock:
                ...  # connect it (waiting as the layer does), return its stream
        raise attempts.failure()

    A ConnectError inside the ``with`` closes that socket and is kept for
    ``failure()``; anything else closes it and propagates.
    """

    def __init__(self, address: Address) -> None:
        self.address = address
        self.errors: list[str] = []

    @contextlib.contextmanager
    def socket(self, family: socket.AddressFamily) -> Iterator[socket.socket]:
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            yield sock
        except ConnectError as exc:
            sock.close()
            self.errors.append(str(exc.__cause__ or exc))
        except BaseException:
            sock.close()
            raise

    def failure(self) -> ConnectError:
        """The error once every address failed: each one's reason."""
        return ConnectError(
            f"cannot connect to {self.address}: {'; '.join(self.errors)}", self.address
        )
