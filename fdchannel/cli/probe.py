"""``fdchannel probe URI|CHANNEL...``: what each channel is, and whether it works now.

For every channel: the typed address, its QAPI form and capabilities, the
reachability check of its transport and, for a unix socket on which
``fdchannel probe --listen`` listens, a descriptor-passing self-test; each
step timed.  Several channels are also validated as a set.

Only the address layer is imported up front; the event loop is loaded for
the self-test alone, so probing an address starts quickly.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import Any

from .. import reachability as reach
from ..address import Address, UnixAddress
from ..channel import Channel, ChannelType, parse_channel, validate_channels
from ..errors import ChannelError
from ._output import OK, PROBLEM, Output, UsageError, plural

__all__ = ["DEFAULT_TIMEOUT", "run"]

#: Seconds each check (a connect, the self-test) may take.
DEFAULT_TIMEOUT = 5.0


def _address_data(addr: Address) -> dict[str, Any]:
    return {"class": type(addr).__name__, **dataclasses.asdict(addr)}


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _self_test_wanted(options: argparse.Namespace, addr: Address, found: reach.Reach) -> str | None:
    """Why the self-test is skipped, or None to run it."""
    if not isinstance(addr, UnixAddress):
        return "only unix sockets pass descriptors"
    if options.self_test is False:
        return "--no-self-test"
    if not found.ok:
        return "nobody listens"
    if options.self_test is None and not found.probe_listener:
        return (
            "the listener is not 'fdchannel probe --listen' (a one-shot listener would "
            "take the test for its peer); --self-test forces it"
        )
    return None


def _parse(text: str) -> tuple[Channel, float]:
    started = time.perf_counter()
    channel = parse_channel(text)
    return channel, time.perf_counter() - started


def _probe_one(
    text: str, channel: Channel, parse_seconds: float, options: argparse.Namespace
) -> dict[str, Any]:
    timeout = DEFAULT_TIMEOUT if options.timeout is None else options.timeout
    started = time.perf_counter()
    found = reach.check(channel.addr, timeout)
    checked = time.perf_counter()
    result: dict[str, Any] = {
        "input": text,
        "channel_type": channel.type.value,
        "channel": str(channel),
        "address": _address_data(channel.addr),
        "address_repr": repr(channel.addr),
        "qapi": channel.to_qapi(),
        "capabilities": reach.capabilities(channel.addr, found),
        "reachable": {"ok": found.ok, "detail": found.detail, **found.facts},
        "timings_ms": {"parse": _ms(parse_seconds), "reach": _ms(checked - started)},
    }
    skip = _self_test_wanted(options, channel.addr, found)
    if skip is not None:
        result["self_test"] = {"ran": False, "ok": None, "detail": f"skipped: {skip}"}
    else:
        from . import selftest  # the event loop, only now

        assert isinstance(channel.addr, UnixAddress)
        result["self_test"] = selftest.run(channel.addr, timeout)
        result["timings_ms"]["self_test"] = _ms(time.perf_counter() - checked)
    return result


def _validate(channels: list[Channel], mode: str | None) -> dict[str, Any]:
    if mode is None:
        has_cpr = any(channel.type is ChannelType.CPR for channel in channels)
        mode = "cpr-transfer" if has_cpr else "normal"
    started = time.perf_counter()
    try:
        main, cpr = validate_channels(channels, mode=mode)
    except ChannelError as exc:
        ok, detail = False, str(exc)
    else:
        ok = True
        detail = f"valid for {mode}: main {main}" + (f", cpr {cpr}" if cpr is not None else "")
    return {
        "mode": mode,
        "ok": ok,
        "detail": detail,
        "timing_ms": _ms(time.perf_counter() - started),
    }


def _text(results: list[dict[str, Any]], validation: dict[str, Any] | None, problems: int) -> str:
    lines = []
    for result in results:
        timings = ", ".join(
            f"{step.replace('_', '-')} {ms:.1f} ms" for step, ms in result["timings_ms"].items()
        )
        reachable = result["reachable"]
        test = result["self_test"]
        if test["ran"]:
            test_line = ("ok: " if test["ok"] else "FAILED: ") + test["detail"]
        else:
            test_line = test["detail"]
        lines += [
            f"{result['channel']}  ({result['channel_type']} channel)",
            f"  address       {result['address_repr']}",
            f"  qapi          {json.dumps(result['qapi'])}",
            f"  capabilities  {' '.join(result['capabilities']) or '(none)'}",
            f"  reachable     {'yes' if reachable['ok'] else 'NO'}: {reachable['detail']}",
            f"  self-test     {test_line}",
            f"  timing        {timings}",
        ]
    if validation is not None:
        verdict = "ok" if validation["ok"] else "INVALID"
        lines.append(
            f"channel set ({validation['mode']}): {verdict}: {validation['detail']}"
            f"  ({validation['timing_ms']:.1f} ms)"
        )
    lines.append("result: ok" if not problems else f"result: {plural(problems, 'problem')} found")
    return "\n".join(lines)


def run(options: argparse.Namespace, out: Output) -> int:
    """Probe every channel given; exit status 1 if any problem was found."""
    if not options.channels:
        raise UsageError("probe needs at least one URI or channel (or --listen URI)")
    if options.no_ack:
        raise UsageError("--no-ack only applies to probe --listen")
    started = time.perf_counter()
    # Every input is parsed before anything is touched: a typo is a usage error, at once.
    parsed = [_parse(text) for text in options.channels]
    channels = [channel for channel, _ in parsed]
    results = [
        _probe_one(text, channel, seconds, options)
        for text, (channel, seconds) in zip(options.channels, parsed, strict=True)
    ]
    validation = None
    if len(channels) > 1 or options.mode is not None:
        validation = _validate(channels, options.mode)
    problems = sum(not r["reachable"]["ok"] or r["self_test"]["ok"] is False for r in results)
    problems += validation is not None and not validation["ok"]
    document = {
        "ok": not problems,
        "problems": problems,
        "channels": results,
        "validation": validation,
        "elapsed_ms": _ms(time.perf_counter() - started),
    }
    out.result(document, _text(results, validation, problems))
    if problems:
        return PROBLEM
    return OK
