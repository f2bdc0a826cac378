"""The control socket's server end: ``upgrade`` in, the outcome out, one JSON line each;
or ``status`` in, the serving generation and the service's record of its upgrades out.

Each client is answered in a scope of its own: whatever goes wrong with one
(silence, a half or huge line, leaving, an error of ours) is logged,
answered if the client is still there, and stays there.  The client end is
``control.py``; both frame with ``lines.py``.

A request is the word ``upgrade``, or an object asking for a new release:
``{"request": "upgrade", "command": [...], "cwd": "/abs/dir", "env": {"NAME":
"value" or null}}`` (each field optional).  The control socket admits peers
of the server's uid or root only, and what they ask runs as the server's
user: nothing they could not run themselves.

An upgrade with a probation is answered twice: at the commit, an interim
``{"probation": SECONDS, "pid": PID}`` (the client waits that much longer),
then the outcome once the probation is over.  A ``status`` request, under
the same rules, is answered at once with ``{"ok": true, ...}`` (see
``Upgrader.status``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from ..errors import UpgradeBusy, UpgradeError
from ..transports import Listener, Stream
from . import lines
from .control import REQUEST, STATUS
from .reasons import reason

__all__ = ["REQUEST", "STATUS", "ControlServer", "Interim", "parse_request"]

log = logging.getLogger("fdchannel.upgrade")

#: The longest control request taken (a word, or a release: a command line, a
#: directory and some variables).
REQUEST_BYTES = 1 << 16
#: What a request may ask for besides the upgrade itself.
FIELDS = ("command", "cwd", "env")

#: Sends an interim word to the client whose upgrade is under way.
Interim = Callable[[dict[str, Any]], Awaitable[None]]


class ControlServer:
    """Answers ``upgrade`` requests with what ``upgrade`` returns or raises; ``upgrade``
    gets a way to send the client an interim word first.  ``status`` requests
    with what ``status`` returns (refused without it)."""

    def __init__(
        self,
        upgrade: Callable[[Interim, dict[str, Any]], Awaitable[dict[str, Any]]],
        generation: Callable[[], int],
        status: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    ) -> None:
        self._upgrade = upgrade
        self._generation = generation
        self._status = status
        #: A client has this long to send its request (and to take the answer).
        self.timeout = 10.0
        #: Clients answered at once; one more is refused.
        self.clients = 8
        self._replies = 0
        self._quiet: anyio.Event | None = None

    async def serve(self, listener: Listener) -> None:
        async with listener:
            await listener.serve(self._answer)

    async def quiesce(self, timeout: float) -> None:
        """Let the replies in flight go out (up to ``timeout``)."""
        if self._replies:
            self._quiet = anyio.Event()
            with anyio.CancelScope(shield=True), anyio.move_on_after(timeout):
                await self._quiet.wait()

    async def _answer(self, stream: Stream) -> None:
        self._replies += 1
        try:
            if self._replies > self.clients:
                reply: dict[str, Any] | None = _refusal(
                    f"too many control clients: at most {self.clients} at once"
                )
            else:
                reply = await self._reply(stream)
            if reply is not None:
                with anyio.move_on_after(self.timeout):
                    await stream.send(lines.encode(reply))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            log.warning("control socket: the client left before its answer: %s", reason(exc))
        except Exception:
            log.exception("control socket: answering a request went wrong")
        finally:
            self._replies -= 1
            if not self._replies and self._quiet is not None:
                self._quiet.set()

    async def _reply(self, stream: Stream) -> dict[str, Any] | None:
        """The answer to the request on ``stream``; None when the client left."""
        request: bytes | None = None
        with anyio.move_on_after(self.timeout):
            try:
                request = await lines.receive_line(stream, REQUEST_BYTES)
            except lines.LineTooLong:
                return _refusal(f"a request is one line, not longer than {REQUEST_BYTES} bytes")
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                log.warning("control socket: a client left without a request")
                return None
        if request is None:
            return _refusal(f"no request within {self.timeout} s")
        if request.strip() == STATUS.encode() and self._status is not None:
            try:
                return await self._status()
            except Exception as exc:  # ours: logged, answered, and the server serves on
                log.exception("generation %d: the status went wrong", self._generation())
                return {"ok": False, "error": f"the status went wrong: {reason(exc)}"}
        try:
            asked = parse_request(request)
        except ValueError as exc:
            return _refusal(str(exc))

        async def interim(message: dict[str, Any]) -> None:
            with anyio.move_on_after(self.timeout):
                try:
                    await stream.send(lines.encode(message))
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                    log.warning("control socket: the client left: %s", reason(exc))

        try:
            return await self._upgrade(interim, asked)
        except UpgradeBusy as exc:
            return {"ok": False, "busy": True, "error": str(exc)}
        except UpgradeError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # ours: logged, answered, and the server serves on
            log.exception("generation %d: the upgrade went wrong", self._generation())
            return {"ok": False, "error": f"the upgrade went wrong: {reason(exc)}"}


def parse_request(line: bytes) -> dict[str, Any]:
    """What an upgrade request asks for (nothing but the upgrade: ``{}``); ValueError
    saying what is wrong with it."""
    if line.strip() == REQUEST.encode():
        return {}
    message = lines.decode(line)
    if message is None or message.get("request") != REQUEST:
        raise ValueError(f"unknown request; send '{REQUEST}' or '{STATUS}'")
    unknown = sorted(set(message) - {"request", *FIELDS})
    if unknown:
        raise ValueError(f"unknown field in the request: {', '.join(map(repr, unknown))}")
    asked = {name: message[name] for name in FIELDS if message.get(name) is not None}
    command, cwd, env = (asked.get(name) for name in FIELDS)
    if command is not None and (
        not isinstance(command, list) or not all(isinstance(arg, str) for arg in command)
    ):
        raise ValueError("the command is a list of strings: the program and its arguments")
    if cwd is not None and not (isinstance(cwd, str) and cwd.startswith("/")):
        raise ValueError("the working directory is an absolute path")
    if env is not None and not (
        isinstance(env, dict) and all(isinstance(value, str | None) for value in env.values())
    ):
        raise ValueError("the environment is an object of names and strings (or null)")
    return asked


def _refusal(error: str) -> dict[str, Any]:
    """A reply saying no, and why (logged: the client may be up to no good)."""
    log.warning("control socket: %s", error)
    return {"ok": False, "error": error}
