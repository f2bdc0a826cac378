"""``python -m bench [FIGURE ...] [options]``: run the chosen figures (default: all)."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from . import _report, blocking, cold, fdrate, qemu_update, startup, throughput, upgrade
from ._report import Figure


class FigureModule(Protocol):
    """What a figure module offers; add a module and list it in FIGURES."""

    NAME: str
    HELP: str

    def add_arguments(self, parser: argparse._ArgumentGroup) -> None: ...

    def run(self, options: argparse.Namespace) -> Figure: ...


FIGURES: dict[str, FigureModule] = {
    module.NAME: module
    for module in (throughput, fdrate, blocking, cold, startup, upgrade, qemu_update)
}


def build_parser() -> argparse.ArgumentParser:
    """Shared options, then one group of options per figure."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="fdchannel benchmarks. Figures: "
        + "; ".join(f"{name}: {module.HELP}" for name, module in FIGURES.items()),
    )
    parser.add_argument(
        "figures", nargs="*", metavar="FIGURE", help=f"one of {', '.join(FIGURES)} (default: all)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        metavar="N",
        help="measure each row N times and report the median (default 3)",
    )
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="also write the results to FILE as JSON"
    )
    for name, module in FIGURES.items():
        module.add_arguments(parser.add_argument_group(name))
    return parser


def environment() -> dict[str, object]:
    """What the numbers depend on besides the code."""
    versions: dict[str, str | None] = {}
    for package in ("anyio", "trio", "uvloop"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    import fdchannel

    versions["fdchannel"] = fdchannel.__version__
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        # Other work on the machine shows up here before it shows up as noise.
        "load_average": os.getloadavg(),
        "versions": versions,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the figures; the exit status is 1 if any row could not be measured."""
    parser = build_parser()
    options = parser.parse_args(argv)
    unknown = [name for name in options.figures if name not in FIGURES]
    if unknown:
        parser.error(f"unknown figure {', '.join(unknown)}; choose from {', '.join(FIGURES)}")
    if options.repeat < 1:
        parser.error("--repeat must be at least 1")
    # SIGTERM unwinds like Ctrl-C, so children are reaped and socket files removed.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    started = time.monotonic()
    figures = []
    for name in options.figures or FIGURES:
        print(f"{name}:", file=sys.stderr, flush=True)
        figure = FIGURES[name].run(options)
        print(_report.render(figure), end="\n\n", flush=True)
        figures.append(figure)
    print(f"{len(figures)} figure(s) in {time.monotonic() - started:.0f} s")
    if options.json is not None:
        _report.write_json(options.json, figures, environment())
    return 1 if any(figure.failed for figure in figures) else 0


if __name__ == "__main__":
    sys.exit(main())
