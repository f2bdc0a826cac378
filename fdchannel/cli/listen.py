"""``fdchannel probe --listen URI``: be the incoming cpr side and show what arrives.

Accept one peer (pid, uid and command line shown), receive its state in
either codec, describe every descriptor, then acknowledge by closing, or
with ``--no-ack`` hold the connection until the sender hangs up.

The descriptor list (``descriptor_documents``, ``descriptor_table``) is
shared with ``probe --cpr-exec``, which must not load the event loop: the
modules that do are imported when a listener runs.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .. import descriptors as describe
from ..channel import Channel, parse_channel
from ..state import NamedFd
from ._output import OK, Output, UsageError, format_ms, format_size, plural, printable

if TYPE_CHECKING:
    from ._incoming import Received

__all__ = ["descriptor_documents", "descriptor_table", "run"]

#: Bytes of metadata the text output shows.
_SHOWN = 80


def _metadata(data: bytes) -> dict[str, Any]:
    try:
        text: str | None = data.decode()
    except UnicodeDecodeError:
        text = None
    return {"size": len(data), "text": text, "hex": data[:64].hex()}


def _peer_text(peer: dict[str, Any]) -> str:
    if "pid" not in peer:
        return f"address {peer['address']}" if peer.get("address") else "unknown"
    who = f"pid {peer['pid']}, uid {peer['uid']}, gid {peer['gid']}"
    if peer["argv"] is not None:
        return f"{who}: {printable(shlex.join(peer['argv']))}"
    return f"{who}; command line {peer['argv_error']}"


def descriptor_documents(entries: Iterable[NamedFd]) -> list[dict[str, Any]]:
    """Each entry and what its descriptor is: the JSON document's ``descriptors``."""
    return [
        {
            "name": entry.name,
            "id": entry.id,
            "fd": entry.fd,
            "description": describe.describe(entry.fd),
        }
        for entry in entries
    ]


def descriptor_table(descriptors: list[dict[str, Any]]) -> list[str]:
    """The text output's table: name, id, fd, what; names escaped (none without descriptors)."""
    if not descriptors:
        return []
    names = [printable(d["name"]) for d in descriptors]
    width = max(len(name) for name in names)
    lines = [f"  {'name'.ljust(width)}  id  fd  what"]
    for name, d in zip(names, descriptors, strict=True):
        what = describe.summary(d["description"])
        lines.append(f"  {name.ljust(width)}  {d['id']:>2}  {d['fd']:>2}  {what}")
    return lines


def _document(received: Received, descriptors: list[dict[str, Any]], ack: str) -> dict[str, Any]:
    return {
        "ok": True,
        "listened_on": received.listened_on,
        "peer": received.peer,
        "codec": received.codec,
        "descriptors": descriptors,
        "metadata": _metadata(received.state.metadata),
        "ack": ack,
        "timings_ms": {
            "accept": round(received.accept * 1000, 3),
            "receive": round(received.receive * 1000, 3),
        },
    }


def _text(received: Received, descriptors: list[dict[str, Any]], ack: str) -> str:
    meta = received.state.metadata
    head = meta[:_SHOWN]
    text = _metadata(head)["text"]
    shown = (repr(text) if text is not None else repr(head)) + ("..." if len(meta) > _SHOWN else "")
    lines = [
        f"peer         {_peer_text(received.peer)}",
        f"state        {received.codec} codec, {plural(len(descriptors), 'descriptor')}, "
        f"metadata {format_size(len(meta))}" + (f": {shown}" if meta else ""),
        f"timing       waited {format_ms(received.accept)} for the peer, "
        f"received in {format_ms(received.receive)}",
    ]
    lines += descriptor_table(descriptors)
    lines.append(f"ack          {ack}")
    return "\n".join(lines)


async def _listen(
    channel: Channel, options: argparse.Namespace, out: Output, holding: list[bool]
) -> None:
    import anyio

    from ._incoming import hold, receive_one

    received = await receive_one(channel, options.timeout, out)
    with received.state:
        descriptors = descriptor_documents(received.state.fds)
        if not options.no_ack:
            outcome = await received.cpr.accept()
            out.result(
                _document(received, descriptors, outcome), _text(received, descriptors, outcome)
            )
            return
        try:
            held = "held: no ack (--no-ack) until the sender hangs up"
            out.result(_document(received, descriptors, held), _text(received, descriptors, held))
            holding.append(True)
            seconds = await hold(received.stream)
            out.notice(f"the sender hung up after {format_ms(seconds)}; closed without an ack")
        finally:
            with anyio.CancelScope(shield=True):
                await received.stream.aclose()


def run(options: argparse.Namespace, out: Output) -> int:
    """Receive one state and describe it."""
    if len(options.channels) != 1:
        raise UsageError("probe --listen takes exactly one URI or channel")
    if options.self_test is not None or options.mode is not None:
        raise UsageError("--self-test and --mode do not apply to probe --listen")
    from ._run import Interrupted, run_async

    channel = parse_channel(options.channels[0])
    holding: list[bool] = []
    try:
        run_async(_listen, channel, options, out, holding)
    except Interrupted:
        if not holding:
            raise
        # Holding until interrupted is how --no-ack is meant to end.
        out.notice("interrupted while holding; closed without an ack")
    return OK
