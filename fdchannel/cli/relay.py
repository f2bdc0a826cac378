"""``fdchannel relay FROM TO``: carry one connection, descriptors included, and show it.

Accept one peer on FROM, connect TO, forward both ways (see fdchannel.relay)
until both sides ended.  A progress line on stderr counts the bytes and
descriptors forwarded; the result says who closed first: normally the
sender half-closes, then the receiver closes (the ack).  A side that resets
the connection (it closed or died with bytes unread) has the other side's
reset in turn, and the relay exits 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import anyio
import anyio.abc

from ..address import Address
from ..channel import Channel, parse_channel
from ..relaying import RelayStats, relay
from ._output import OK, PROBLEM, CliError, Output, format_size, plural, printable
from ._run import run_async

__all__ = ["run"]

#: Seconds between progress lines when stderr is not a terminal.
_LOG_EVERY = 1.0


def _progress_text(stats: RelayStats) -> str:
    forward, backward = stats.forward, stats.backward
    return (
        f"sender->receiver {format_size(forward.bytes)}, {plural(forward.fds, 'descriptor')}; "
        f"receiver->sender {format_size(backward.bytes)}, {plural(backward.fds, 'descriptor')}"
    )


def _closing(stats: RelayStats) -> str:
    if stats.reset_by is not None:
        other = "receiver" if stats.reset_by == "sender" else "sender"
        return (
            f"the {stats.reset_by} reset the connection (it closed or died with bytes unread); "
            f"the relay reset the {other}'s in turn"
        )
    first = stats.first_to_close
    if first is None:
        return "nobody closed"
    second = "receiver" if first == "sender" else "sender"
    ended = stats.backward.ended if first == "sender" else stats.forward.ended
    how = "half-closed" if first == "sender" else "closed"
    then = f", then the {second} closed" if ended else f"; the {second} has not closed"
    ack = " (the ack)" if first == "sender" and ended else ""
    return f"the {first} {how} first{then}{ack}"


class _Progress:
    """The progress line: rewritten in place on a terminal, else at most once a second."""

    def __init__(self, out: Output, enabled: bool) -> None:
        self.out = out
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.ends = 0

    def __call__(self, stats: RelayStats) -> None:
        if not self.enabled:
            return
        ends = stats.forward.ended + stats.backward.ended + 2 * (stats.reset_by is not None)
        now = time.monotonic()
        # Always show the moments a side closes; throttle the rest.
        if ends == self.ends and now - self.last < (0.1 if self.tty else _LOG_EVERY):
            return
        self.last, self.ends = now, ends
        line = _progress_text(stats)
        if ends or stats.reset_by is not None:
            line += f" ({_closing(stats)})"
        if self.tty:
            self.out.write(sys.stderr, f"\r\033[K{self.out.prog}: {printable(line)}")
        else:
            self.out.notice(line)

    def finish(self) -> None:
        if self.enabled and self.tty:
            self.out.write(sys.stderr, "\n")


async def _relay(
    source: Channel, dest: Channel, options: argparse.Namespace, out: Output
) -> tuple[RelayStats, str, float]:
    progress = _Progress(out, not options.quiet)
    results: list[RelayStats] = []
    async with anyio.create_task_group() as tg:

        async def body(*, task_status: anyio.abc.TaskStatus[Address]) -> None:
            stats = await relay(
                source,
                dest,
                accept_timeout=options.timeout,
                on_progress=progress,
                task_status=task_status,
            )
            results.append(stats)

        address = await tg.start(body)
        out.notice(f"listening on {address}, relaying to {dest}")
        started = time.monotonic()
    progress.finish()
    return results[0], str(address), time.monotonic() - started


def run(options: argparse.Namespace, out: Output) -> int:
    """Relay one connection and report what crossed; 1 if a side reset it."""
    source, dest = parse_channel(options.source), parse_channel(options.dest)
    try:
        stats, listened, seconds = run_async(_relay, source, dest, options, out)
    except TimeoutError:
        raise CliError(f"nobody connected to {source} within {options.timeout} s") from None
    document: dict[str, Any] = {
        "ok": stats.reset_by is None,
        "from": listened,
        "to": str(dest),
        "forward": vars(stats.forward),
        "backward": vars(stats.backward),
        "first_to_close": stats.first_to_close,
        "reset_by": stats.reset_by,
        "closing": _closing(stats),
        "seconds": round(seconds, 6),
    }
    out.result(document, f"relayed {_progress_text(stats)}\n{_closing(stats)}")
    return OK if stats.reset_by is None else PROBLEM
