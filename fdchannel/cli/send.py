"""``fdchannel send URI NAME=SOURCE...``: hand descriptors to a listener from a shell.

The state goes to URI as on a cpr channel (native codec unless ``--codec
qemu``): connect, retrying until ``--timeout`` while nobody listens yet;
send; half-close; wait for the receiver's close-as-ack.  The sources are
described in sources.py.  This process keeps its own copies until it
exits, so a failed send leaves nothing half-moved.
"""

from __future__ import annotations

import argparse
from typing import Any

from .. import descriptors as describe
from ..channel import Channel, ChannelType, parse_channel
from ..state import FdState, NamedFd
from ._outgoing import Sent, send_and_wait
from ._output import OK, Output, UsageError, format_ms, plural, printable
from ._run import run_async
from .sources import Source, close_sources, open_sources

__all__ = ["DEFAULT_TIMEOUT", "run"]

#: Seconds to wait for a listener and its acknowledgement.
DEFAULT_TIMEOUT = 10.0


def _text(channel: Channel, rows: list[dict[str, Any]], sent: Sent) -> str:
    how = "accepted, then closed" if sent.ack_kind == "accepted" else "closed"
    lines = [
        f"sent {plural(len(rows), 'descriptor')} to {channel.addr} ({sent.codec} codec); "
        f"acknowledged: {how}"
    ]
    if rows:
        names = [printable(row["name"]) for row in rows]
        origins = [printable(row["source"]) for row in rows]
        name_width = max(len(name) for name in names)
        origin_width = max(len(origin) for origin in origins)
        lines.append(f"  {'name'.ljust(name_width)}  id  fd  {'source'.ljust(origin_width)}  what")
        for name, origin, row in zip(names, origins, rows, strict=True):
            lines.append(
                f"  {name.ljust(name_width)}  {row['id']:>2}  {row['fd']:>2}  "
                f"{origin.ljust(origin_width)}  {describe.summary(row['description'])}"
            )
    lines.append(
        f"timing  connect {format_ms(sent.connect)}, send {format_ms(sent.send)}, "
        f"ack {format_ms(sent.ack)}"
    )
    return "\n".join(lines)


def _rows(sources: list[Source]) -> list[dict[str, Any]]:
    return [
        {
            "name": source.name,
            "id": source.id,
            "fd": source.fd,
            "source": source.origin,
            "description": describe.describe(source.fd),
        }
        for source in sources
    ]


def run(options: argparse.Namespace, out: Output) -> int:
    """Send the named descriptors and wait for the acknowledgement."""
    channel = parse_channel(options.uri)
    metadata = (options.metadata or "").encode()
    if options.codec == "qemu" and metadata:
        raise UsageError("the qemu codec carries no metadata: drop --metadata or use native")
    timeout = DEFAULT_TIMEOUT if options.timeout is None else options.timeout
    sources = open_sources(options.items)
    try:
        if sources:
            # Descriptors need a transport that passes them, as a cpr channel does.
            channel = Channel(ChannelType.CPR, channel.addr)
        rows = _rows(sources)
        state = FdState([NamedFd(s.name, s.id, s.fd) for s in sources], metadata)
        sent = run_async(send_and_wait, channel, state, options.codec, timeout)
    finally:
        close_sources(sources)
    document = {
        "ok": True,
        "uri": str(channel.addr),
        "codec": sent.codec,
        "descriptors": rows,
        "metadata_size": len(metadata),
        "ack": sent.ack_kind,
        "timings_ms": {
            "connect": round(sent.connect * 1000, 3),
            "send": round(sent.send * 1000, 3),
            "ack": round(sent.ack * 1000, 3),
        },
    }
    out.result(document, _text(channel, rows, sent))
    return OK
