"""``make stress``: load that must leave nothing behind.

* one unix listener serving 1,000 concurrent peers, each passing 10
  descriptors and receiving them back;
* 100 close-as-ack handoffs running at once in one process.

Each round runs on asyncio, uvloop and trio, once to warm up and once
measured.  After the measured run the process must hold exactly the
descriptors and tasks it held before it, and its resident memory must be
back within 10% of where it started.  Prints time, peak
descriptors and peak RSS per round.

Then the handover load (bench/handover_load.py): examples/upgrade_lines.py
upgraded 50 times on each loop while 1,000 connections pipeline requests;
every request must be answered once, in order, with no reconnect.  Prints
requests, upgrades, errors, the bytes handed over buffered and the
slowest answer.  ``--part leaks`` or ``--part handover`` runs one half.

Exit status 1 if a check failed.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc

import fdchannel
from fdchannel.address import UnixAddress
from fdchannel.transports._socket import UnixSocketStream

from . import handover_load
from ._loops import LOOPS, run

PEERS = 1000
FDS_PER_PEER = 10
HANDOFFS = 100
#: The handover load: connections pipelining, and upgrades on each loop.
HANDOVER_CONNECTIONS = 1000
HANDOVER_UPGRADES = 50
TIMEOUT = 120


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@dataclass
class Peak:
    """The highest descriptor count and RSS seen while a round ran."""

    fds: int = 0
    rss_kib: int = 0

    async def watch(self) -> None:
        while True:
            self.fds = max(self.fds, open_fds())
            self.rss_kib = max(self.rss_kib, rss_kib())
            await anyio.sleep(0.05)  # sampling, not synchronisation


async def echo_descriptors(tmp: Path, peers: int) -> None:
    """Every peer sends FDS_PER_PEER descriptors and gets the same files back."""
    address = UnixAddress(str(tmp / "echo.sock"))
    async with await fdchannel.listen(address, backlog=peers) as listener:

        async def serve_one(stream: fdchannel.Stream) -> None:
            assert isinstance(stream, UnixSocketStream)
            async with stream:
                data, fds = await stream.receive_fds(16, FDS_PER_PEER)
                try:
                    await stream.send_fds(data, fds)
                finally:
                    for fd in fds:
                        os.close(fd)

        async def serve(task_status: anyio.abc.TaskStatus[None]) -> None:
            async with anyio.create_task_group() as served:
                task_status.started()
                for _ in range(peers):
                    served.start_soon(serve_one, await listener.accept())

        async def peer(memfd: int) -> None:
            stream = await fdchannel.connect(address)
            assert isinstance(stream, UnixSocketStream)
            async with stream:
                await stream.send_fds(b"x", [memfd] * FDS_PER_PEER)
                _, back = await stream.receive_fds(16, FDS_PER_PEER)
                same = all(os.fstat(fd).st_ino == os.fstat(memfd).st_ino for fd in back)
                for fd in back:
                    os.close(fd)
                if len(back) != FDS_PER_PEER or not same:
                    raise AssertionError("descriptors came back wrong")

        memfd = os.memfd_create("stress", os.MFD_CLOEXEC)
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(serve)
                for _ in range(peers):
                    tg.start_soon(peer, memfd)
        finally:
            os.close(memfd)


async def concurrent_handoffs(tmp: Path, count: int) -> None:
    """``count`` Outgoing/Incoming pairs at once, each moving a memfd and main bytes."""

    async def one(index: int) -> None:
        chans = [
            f"unix:{tmp}/main{index}",
            f"cpr,addr.transport=socket,addr.type=unix,addr.path={tmp}/cpr{index}",
        ]
        memfd = os.memfd_create(f"ram{index}", os.MFD_CLOEXEC)
        try:
            async with fdchannel.Incoming(chans) as inc, fdchannel.Outgoing(chans) as out:
                await inc.listen_cpr()
                async with anyio.create_task_group() as tg:

                    async def old() -> None:
                        await out.send_cpr(fdchannel.FdState([fdchannel.NamedFd("ram", 0, memfd)]))
                        await out.send_main(b"main" * 256)

                    tg.start_soon(old)
                    with await inc.receive_cpr():
                        await inc.listen_main()
                    if await inc.receive_main() != b"main" * 256:
                        raise AssertionError("main stream came out wrong")
        finally:
            os.close(memfd)

    async with anyio.create_task_group() as tg:
        for index in range(count):
            tg.start_soon(one, index)


Round = Callable[[Path, int], Awaitable[None]]
ROUNDS: list[tuple[str, Round, int]] = [
    (f"{PEERS} peers x {FDS_PER_PEER} descriptors, echoed", echo_descriptors, PEERS),
    (f"{HANDOFFS} concurrent handoffs", concurrent_handoffs, HANDOFFS),
]


async def measured(work: Round, size: int) -> tuple[float, Peak, int]:
    peak = Peak()
    tasks_before = len(anyio.get_running_tasks())
    with tempfile.TemporaryDirectory(prefix="fdc-stress-") as tmp:
        began = time.perf_counter()
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(peak.watch)
                await work(Path(tmp), size)
                tg.cancel_scope.cancel()
        elapsed = time.perf_counter() - began
    return elapsed, peak, len(anyio.get_running_tasks()) - tasks_before


def leaks(scale: float) -> bool:
    """The rounds that must leave nothing behind; whether one failed."""
    failed = False
    print(f"{'round':42} {'loop':8} {'seconds':>8} {'peak fds':>9} {'peak RSS':>10}  after")
    for name, work, size in ROUNDS:
        for loop in LOOPS:
            try:
                # Two unmeasured runs first: the interpreter's and the event loop's
                # one-time allocations (caches, libuv's signal pipe) are not leaks,
                # and the allocator's arenas take more than one round to settle
                # (after one, the next round's RSS still grew by 3-10%).
                for _ in range(2):
                    run(loop, measured, work, int(size * scale))
                gc.collect()
                fds_before, rss_before = set(os.listdir("/proc/self/fd")), rss_kib()
                elapsed, peak, tasks_left = run(loop, measured, work, int(size * scale))
            except Exception as exc:
                print(f"{name:42} {loop:8} FAILED: {type(exc).__name__}: {exc}")
                failed = True
                continue
            gc.collect()
            leaked = set(os.listdir("/proc/self/fd")) - fds_before
            rss_after = rss_kib()
            grown = (rss_after - rss_before) / max(rss_before, 1)
            verdict = "clean"
            if leaked or tasks_left or grown > 0.10:
                failed = True
                verdict = f"LEFT {len(leaked)} fds, {tasks_left} tasks, RSS {grown:+.0%}"
            print(
                f"{name:42} {loop:8} {elapsed:8.2f} {peak.fds:9d} "
                f"{peak.rss_kib / 1024:8.1f} MiB  {verdict} (RSS {grown:+.1%})"
            )
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stress", description=__doc__)
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply peers, handoffs and connections"
    )
    parser.add_argument("--part", choices=["all", "leaks", "handover"], default="all")
    parser.add_argument(
        "--upgrades", type=int, default=HANDOVER_UPGRADES, help="of the handover load, per loop"
    )
    options = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    failed = False
    if options.part != "handover":
        failed = leaks(options.scale)
    if options.part != "leaks":
        connections = int(HANDOVER_CONNECTIONS * options.scale)
        print(
            f"\nhandover load: {connections} pipelining connections, {options.upgrades} "
            "upgrades per loop, after one that fails and resumes"
        )
        failed = handover_load.run_loops(LOOPS, connections, options.upgrades) or failed
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
