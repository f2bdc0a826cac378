"""QEMU's monitor protocol (QMP) without I/O: what to send, and what came back.

A QMP connection is lines of JSON.  QEMU speaks first (the greeting, with
its version); a client sends ``qmp_capabilities``, then commands, each an
``execute`` with an ``id`` that QEMU copies into its reply (``return`` or
``error``).  Events (``event``, with QEMU's own wall-clock ``timestamp``)
come at any time, in between.  ``QmpSession`` is fed the bytes read and
hands out the greeting, each reply by its id and the events in order;
``request`` makes the line of a command.  Descriptors that go with a
command (``getfd``, ``add-fd``) travel beside its line in the same
``sendmsg``: the caller's business.  Nothing here waits.
"""

from __future__ import annotations

import collections
import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import ProtocolError, QemuError, QmpError

__all__ = ["MAX_LINE", "Event", "QmpSession"]

#: A QMP message is one line; anything longer means the framing was lost.
MAX_LINE = 1 << 20

JsonObject = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Event:
    """One QMP event: its name, data, and when QEMU emitted it (seconds of the
    wall clock, ``gettimeofday``: comparable between QEMUs of one host)."""

    name: str
    data: JsonObject
    timestamp: float


class QmpSession:
    """One QMP connection's state: the greeting, replies by id, events in order."""

    def __init__(self, name: str = "QEMU") -> None:
        #: Who this is, for messages ("the old QEMU").
        self.name = name
        self.greeting: JsonObject | None = None
        self.closed = False
        self._buffer = bytearray()
        self._replies: dict[str, JsonObject] = {}
        self._events: collections.deque[Event] = collections.deque()
        self._ids = itertools.count(1)
        self._commands: dict[str, str] = {}

    @property
    def version(self) -> tuple[int, int, int]:
        """QEMU's (major, minor, micro), from the greeting."""
        if self.greeting is None:
            raise QemuError(f"{self.name}: no QMP greeting yet")
        found = self.greeting["QMP"]["version"]["qemu"]
        return int(found["major"]), int(found["minor"]), int(found["micro"])

    def request(self, command: str, arguments: JsonObject | None = None) -> tuple[str, bytes]:
        """The id and the line of ``command``; its reply is ``reply(id)``."""
        ident = f"fdchannel-{next(self._ids)}"
        message: JsonObject = {"execute": command, "id": ident}
        if arguments:
            message["arguments"] = arguments
        self._commands[ident] = command
        return ident, json.dumps(message, separators=(",", ":")).encode() + b"\n"

    def receive_data(self, data: bytes) -> None:
        """What was read; nothing at all is the monitor's close."""
        if not data:
            self.closed = True
            return
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_LINE:
                    raise ProtocolError(f"{self.name}: a QMP line longer than {MAX_LINE} bytes")
                return
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if line.strip():
                self._take(line)

    def _take(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError as exc:
            raise ProtocolError(f"{self.name}: QMP sent a line that is no JSON: {exc}") from exc
        if not isinstance(message, dict):
            raise ProtocolError(f"{self.name}: QMP sent {type(message).__name__}, not an object")
        if "QMP" in message:
            self.greeting = message
        elif "event" in message:
            stamp = message.get("timestamp", {})
            when = float(stamp.get("seconds", 0)) + float(stamp.get("microseconds", 0)) / 1e6
            self._events.append(Event(str(message["event"]), message.get("data", {}), when))
        elif "id" in message:
            self._replies[str(message["id"])] = message
        # A reply without our id answers nobody's command: nothing waits for it.

    def reply(self, ident: str) -> Any:
        """The ``return`` value of command ``ident``; QmpError for its ``error``;
        ``MISSING`` if it has not come yet; QemuError if it never will (closed)."""
        message = self._replies.pop(ident, None)
        if message is None:
            if self.closed:
                raise QemuError(
                    f"{self.name} closed its monitor before answering {self._commands[ident]}"
                )
            return MISSING
        command = self._commands.pop(ident)
        if "error" in message:
            error = message["error"]
            raise QmpError(
                f"{self.name}: {command}: {error.get('desc', error)}",
                command,
                str(error.get("class", "GenericError")),
            )
        return message.get("return")

    def event(self, names: Iterable[str]) -> Event | None:
        """The first event of those named that came, taken out; None if none yet."""
        wanted = set(names)
        for found in self._events:
            if found.name in wanted:
                self._events.remove(found)
                return found
        return None


class _Missing:
    """A reply that has not come yet."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
