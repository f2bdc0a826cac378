"""A QEMU monitor (QMP) as drivers: commands and events over either layer's stream.

``Monitor`` wraps one connected stream and its ``QmpSession``; ``greet``,
``execute`` and ``wait_event`` are drivers (``actions``) that a layer's
loop runs, so the conversation with QEMU is written once.  Every wait is
bounded by its own timeout: a monitor that stays silent is a QemuError
saying what did not come.  Nothing here waits.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from typing import Any

from ..credentials import peer_credentials
from ..deadlines import now, timeout_text
from ..errors import ConnectionLostError, QemuError, TransportError, TransportTimeout
from ..procfs import socket_owners
from ..qemu.qmp import MISSING, Event, JsonObject, QmpSession
from ..sockdiag import peer_inode
from .actions import Adopt, Driver, Receive, Send, SendFds

__all__ = ["Monitor", "connect_monitor"]

#: The most bytes one read of a monitor asks for.
_READ = 65536


class Monitor:
    """One QMP connection: ``stream`` is the layer's, ``session`` what it said."""

    def __init__(self, stream: Any, name: str, pid: int | None = None) -> None:
        self.stream = stream
        self.session = QmpSession(name)
        #: The process at the other end, when known.
        self.pid = pid
        #: The id of a qmp_capabilities sent before the greeting (``offer_capabilities``).
        self._offered: str | None = None

    @property
    def name(self) -> str:
        return self.session.name

    def _read(self, doing: str, timeout: float | None) -> Driver[None]:
        """One read into the session; a QemuError if the monitor closed or stayed
        silent for ``timeout``."""
        if self.session.closed:
            raise QemuError(f"{self.name} closed its monitor while we {doing}")
        try:
            data = yield Receive(self.stream, _READ, timeout)
        except TransportTimeout as exc:
            raise QemuError(
                f"{self.name} did not answer within {timeout_text(timeout)} while we {doing}"
            ) from exc
        except ConnectionLostError as exc:
            # A QEMU that dies with our bytes unread resets the connection: a close.
            self.session.receive_data(b"")
            raise QemuError(f"{self.name} closed its monitor while we {doing}") from exc
        except TransportError as exc:
            raise QemuError(f"{self.name}'s monitor failed while we {doing}: {exc}") from exc
        self.session.receive_data(data)
        if not data:
            raise QemuError(f"{self.name} closed its monitor while we {doing}")

    def offer_capabilities(self) -> Driver[None]:
        """Send ``qmp_capabilities`` before the greeting comes: QEMU reads it as soon
        as the monitor exists.  QEMU sends no event to a monitor still negotiating,
        so a monitor that waited for the greeting first could miss the earliest
        (a RESUME right after an incoming migration)."""
        self._offered, line = self.session.request("qmp_capabilities")
        yield Send(self.stream, line)

    def greet(self, timeout: float | None) -> Driver[tuple[int, int, int]]:
        """Read QEMU's greeting, enter command mode; QEMU's version."""
        started = now()
        while self.session.greeting is None:
            yield from self._read("waited for its QMP greeting", _left(started, timeout))
        if self._offered is None:
            yield from self.execute("qmp_capabilities", timeout=_left(started, timeout))
        else:
            yield from self._reply(self._offered, "qmp_capabilities", started, timeout)
        return self.session.version

    def execute(
        self,
        command: str,
        arguments: JsonObject | None = None,
        *,
        fds: Iterable[int] = (),
        timeout: float | None = None,
    ) -> Driver[Any]:
        """Run ``command`` (with ``fds`` attached, for getfd and add-fd); its return
        value, or the QmpError QEMU answered."""
        started = now()
        ident, line = self.session.request(command, arguments)
        attached = list(fds)
        try:
            yield SendFds(self.stream, line, attached) if attached else Send(self.stream, line)
        except TransportError as exc:
            raise QemuError(f"{self.name}'s monitor failed while we sent {command}: {exc}") from exc
        return (yield from self._reply(ident, command, started, timeout))

    def _reply(
        self, ident: str, command: str, started: float, timeout: float | None
    ) -> Driver[Any]:
        while (value := self.session.reply(ident)) is MISSING:
            yield from self._read(f"waited for {command}", _left(started, timeout))
        return value

    def wait_closed(self, timeout: float | None) -> Driver[None]:
        """Until QEMU closes the monitor (it exits or execs); events read on the way
        are kept."""
        started = now()
        while not self.session.closed:
            try:
                yield from self._read("waited for it to close", _left(started, timeout))
            except QemuError:
                if not self.session.closed:
                    raise

    def wait_event(self, names: Iterable[str], timeout: float | None) -> Driver[Event]:
        """The first of the events ``names`` (one that came already counts)."""
        wanted = tuple(names)
        started = now()
        while (found := self.session.event(wanted)) is None:
            yield from self._read(f"waited for {' or '.join(wanted)}", _left(started, timeout))
        return found


def _left(started: float, timeout: float | None) -> float | None:
    return None if timeout is None else max(0.0, timeout - (now() - started))


def connect_monitor(path: str, name: str, timeout: float | None) -> Driver[Monitor]:
    """Connect to the QMP socket at ``path`` and greet: the monitor, with the pid
    of the process serving it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        # A unix connect does not wait unless the backlog is full: a bound
        # blocking connect, then the layer takes the socket over.
        sock.settimeout(1.0)
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise QemuError(f"cannot reach {name}'s QMP socket {path}: {exc.strerror or exc}") from exc
    monitor = Monitor((yield Adopt(sock)), name)
    yield from monitor.greet(timeout)
    # Once QEMU has accepted (it greeted), the peer socket is its own.
    monitor.pid = _peer_pid(sock)
    return monitor


def _peer_pid(sock: socket.socket) -> int | None:
    """The process holding the other end of ``sock``.  SO_PEERCRED names the
    process that called listen(), which is not QEMU when a manager made the
    socket and passed it on; the holder of the peer socket (sock_diag, then
    /proc) is checked, that process first."""
    try:
        named: int | None = peer_credentials(sock).pid
    except OSError:
        named = None
    peer = peer_inode(sock)
    if peer is None:
        return None if named == os.getpid() else named
    if named is not None and named != os.getpid() and socket_owners([peer], [named]):
        return named
    owners = [pid for pid in socket_owners([peer]) if pid != os.getpid()]
    return owners[0] if len(owners) == 1 else None
