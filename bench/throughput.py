"""Byte throughput between two processes: raw stdlib sockets, anyio streams, fdchannel streams.

The receiver runs in a child process and the sender in this one, each with
the same implementation and event loop.  A transfer is timed from the
sender's first ``send`` to the moment the receiver has read the last byte;
both read CLOCK_MONOTONIC (``time.monotonic_ns``), which on Linux is one
clock for every process, so the two stamps can be subtracted.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import shutil
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Literal

import anyio
import anyio.abc

from . import _loops
from ._peer import Peer, PeerError, start_peer
from ._report import Figure, Row, format_size, parse_size

__all__ = ["HELP", "NAME", "add_arguments", "run"]

NAME = "throughput"
HELP = "bytes per second between two processes over unix and tcp sockets"

Transport = Literal["unix", "tcp"]
Implementation = Literal["stdlib", "anyio", "fdchannel"]
TRANSPORTS: tuple[Transport, ...] = ("unix", "tcp")
HOST = "127.0.0.1"
#: A receiver that grows beyond this has been queueing data rather than reading it.
BLOATED_RSS = 256 << 20
#: How long a child may take to import and start listening.
START_TIMEOUT = 60.0


@dataclass(frozen=True)
class Case:
    """One row of the table; ``loop`` is None for blocking stdlib sockets."""

    transport: Transport
    implementation: Implementation
    loop: _loops.Loop | None


@dataclass(frozen=True)
class Transfer:
    """Where to meet and what to move."""

    transport: Transport
    path: str
    size: int
    chunk: int
    #: Allowed for one whole transfer before it counts as hung.
    timeout: float
    port: int = 0


@dataclass(frozen=True)
class Ready:
    """The receiver listens (on ``port`` for tcp)."""

    port: int


@dataclass(frozen=True)
class Received:
    """One transfer as the receiver saw it."""

    nbytes: int
    #: time.monotonic_ns() when the last expected byte had been read.
    end_ns: int
    #: The receiving process's peak resident memory so far, in bytes.
    peak_rss: int


def add_arguments(parser: argparse._ArgumentGroup) -> None:
    """This figure's options."""
    parser.add_argument(
        "--size", type=parse_size, default=1 << 30, help="bytes per transfer (default 1G)"
    )
    parser.add_argument(
        "--chunk", type=parse_size, default=1 << 20, help="bytes per send and receive (default 1M)"
    )
    parser.add_argument("--only", choices=TRANSPORTS, help="measure one transport only")


def cases(transports: tuple[Transport, ...]) -> list[Case]:
    """The baseline first, then anyio and fdchannel on every loop, per transport."""
    out = []
    for transport in transports:
        out.append(Case(transport, "stdlib", None))
        for implementation in ("anyio", "fdchannel"):
            for loop in _loops.LOOPS:
                out.append(Case(transport, implementation, loop))
    return out


def run(options: argparse.Namespace) -> Figure:
    """Measure every case and return the table."""
    size: int = options.size
    chunk: int = options.chunk
    repeat: int = options.repeat
    transports = TRANSPORTS if options.only is None else (options.only,)
    figure = Figure(
        name=NAME,
        title=f"throughput: {format_size(size)} in {format_size(chunk)} chunks "
        "between two processes",
        columns=("transport", "implementation", "loop"),
        unit="GB/s",
        ratio_heading="vs stdlib",
        parameters={"size": size, "chunk": chunk, "repeat": repeat},
        notes=[
            "GB = 10^9 bytes; ratio: to the stdlib row of the same transport in this run",
            "stdlib and anyio keep the kernel's default socket buffers; "
            "fdchannel asks for larger ones (SO_SNDBUF/SO_RCVBUF)",
        ],
    )
    # A short directory: sun_path holds 108 bytes.
    sockdir = tempfile.mkdtemp(prefix="fdchbench-")
    try:
        for case in cases(transports):
            label = f"{case.transport:5} {case.implementation:10} {case.loop or 'blocking':8}"
            print(f"  {label}", end="", file=sys.stderr, flush=True)
            row = measure(case, size, chunk, repeat, sockdir)
            done = " ".join(f"{s:.2f}" for s in row.samples) if row.error is None else row.error
            print(f" {done}", file=sys.stderr, flush=True)
            figure.rows.append(row)
            peak = row.details.get("receiver_peak_rss", 0)
            if isinstance(peak, int) and peak > BLOATED_RSS:
                figure.notes.append(
                    f"{' '.join(row.labels)}: the receiver grew to {peak >> 20} MiB resident, "
                    "so it buffered the stream in memory instead of pushing back on the sender"
                )
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)
    return figure


def measure(case: Case, size: int, chunk: int, repeat: int, sockdir: str) -> Row:
    """``repeat`` transfers of ``size`` bytes for one case, as GB/s samples."""
    labels = (case.transport, case.implementation, case.loop or "blocking")
    row = Row(labels, group=case.transport, baseline=case.implementation == "stdlib")
    if case.loop is not None and (why := _loops.missing(case.loop)) is not None:
        return dataclasses.replace(row, error=why)
    path = os.path.join(sockdir, f"{case.implementation}-{case.loop or 'blocking'}.sock")
    # Generous: a hang is a failure, a slow run is a number.
    timeout = 60.0 + size / 50e6
    transfer = Transfer(case.transport, path, size, chunk, timeout)
    samples: list[float] = []
    peak_rss = 0
    try:
        with start_peer(_receiver, case, transfer, repeat) as peer:
            transfer = dataclasses.replace(transfer, port=peer.expect(Ready, START_TIMEOUT).port)
            for _ in range(repeat):
                received, start_ns = _one_transfer(peer, case, transfer)
                if received.nbytes != size:
                    raise PeerError(f"the receiver read {received.nbytes} bytes of {size}")
                # bytes per nanosecond is GB/s
                samples.append(size / (received.end_ns - start_ns))
                peak_rss = max(peak_rss, received.peak_rss)
    except Exception as exc:
        # One broken case must not cost the rest of the table.
        return dataclasses.replace(row, error=f"{type(exc).__name__}: {exc}")
    finally:
        if os.path.lexists(path):
            os.unlink(path)
    return dataclasses.replace(row, samples=tuple(samples), details={"receiver_peak_rss": peak_rss})


def _one_transfer(peer: Peer, case: Case, transfer: Transfer) -> tuple[Received, int]:
    try:
        if case.implementation == "stdlib":
            start_ns = _send_stdlib(transfer)
        else:
            assert case.loop is not None
            start_ns = _loops.run(case.loop, _send_async, case.implementation, transfer)
    except Exception as exc:
        raise peer.explain(exc) from exc
    return peer.expect(Received, transfer.timeout), start_ns


# --- the receiving child -------------------------------------------------------------------


def _receiver(conn: Connection, case: Case, transfer: Transfer, repeat: int) -> None:
    """Child process: listen, then read ``repeat`` connections to EOF, reporting each."""
    try:
        if case.implementation == "stdlib":
            _receive_stdlib(conn, transfer, repeat)
        else:
            assert case.loop is not None
            _loops.run(case.loop, _receive_async, conn, case.implementation, transfer, repeat)
    finally:
        # Closing a listener leaves its socket file behind (fdchannel's removes it).
        if transfer.transport == "unix" and os.path.lexists(transfer.path):
            os.unlink(transfer.path)


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux counts KiB


def _kernel_timeout(sock: socket.socket, seconds: float) -> None:
    # SO_RCVTIMEO/SO_SNDTIMEO bound a hang without settimeout(), which would
    # make Python poll() before every call and stop the baseline being plain
    # blocking I/O.
    timeval = struct.pack("ll", int(seconds), 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


def _stdlib_socket(transport: Transport) -> socket.socket:
    family = socket.AF_UNIX if transport == "unix" else socket.AF_INET
    return socket.socket(family, socket.SOCK_STREAM)


def _receive_stdlib(conn: Connection, transfer: Transfer, repeat: int) -> None:
    with _stdlib_socket(transfer.transport) as server:
        server.bind(transfer.path if transfer.transport == "unix" else (HOST, 0))
        server.listen()
        _kernel_timeout(server, transfer.timeout)
        port = 0 if transfer.transport == "unix" else server.getsockname()[1]
        conn.send(Ready(port))
        view = memoryview(bytearray(transfer.chunk))
        for _ in range(repeat):
            peer, _ = server.accept()
            with peer:
                _kernel_timeout(peer, transfer.timeout)
                total = end_ns = 0
                while n := peer.recv_into(view):
                    total += n
                    if not end_ns and total >= transfer.size:
                        end_ns = time.monotonic_ns()
            conn.send(Received(total, end_ns, _peak_rss()))


async def _receive_async(
    conn: Connection, implementation: Implementation, transfer: Transfer, repeat: int
) -> None:
    accept, aclose, port = await _listen(implementation, transfer)
    try:
        conn.send(Ready(port))
        for _ in range(repeat):
            with anyio.fail_after(transfer.timeout):
                stream = await accept()
                async with stream:
                    conn.send(await _drain(stream.receive, transfer))
    finally:
        await aclose()


Accept = Callable[[], Awaitable[anyio.abc.ByteStream]]


async def _listen(
    implementation: Implementation, transfer: Transfer
) -> tuple[Accept, Callable[[], Awaitable[None]], int]:
    """Listen with ``implementation``: its accept, its aclose and the tcp port."""
    if implementation == "anyio":
        if transfer.transport == "unix":
            listener = await anyio.create_unix_listener(transfer.path)
            return listener.accept, listener.aclose, 0
        multi = await anyio.create_tcp_listener(local_host=HOST, local_port=0)
        (tcp_listener,) = multi.listeners
        assert isinstance(tcp_listener, anyio.abc.SocketListener)
        port = tcp_listener.extra(anyio.abc.SocketAttribute.local_port)
        return tcp_listener.accept, tcp_listener.aclose, port
    from fdchannel import transports
    from fdchannel.address import TcpAddress, UnixAddress

    if transfer.transport == "unix":
        fdlistener = await transports.listen(UnixAddress(transfer.path))
    else:
        fdlistener = await transports.listen(TcpAddress(HOST, "0"))
    address = fdlistener.address
    port = int(address.port) if isinstance(address, TcpAddress) else 0
    return fdlistener.accept, fdlistener.aclose, port


async def _drain(receive: Callable[[int], Awaitable[bytes]], transfer: Transfer) -> Received:
    total = end_ns = 0
    while True:
        try:
            data = await receive(transfer.chunk)
        except anyio.EndOfStream:
            return Received(total, end_ns, _peak_rss())
        total += len(data)
        if not end_ns and total >= transfer.size:
            end_ns = time.monotonic_ns()


# --- the sending parent --------------------------------------------------------------------


def _payload(transfer: Transfer) -> tuple[bytes, int, bytes]:
    """The chunk, how many whole chunks to send, and the shorter last one."""
    chunk = b"\xa5" * transfer.chunk
    whole, rest = divmod(transfer.size, transfer.chunk)
    return chunk, whole, chunk[:rest]


def _send_stdlib(transfer: Transfer) -> int:
    chunk, whole, tail = _payload(transfer)
    with _stdlib_socket(transfer.transport) as sock:
        _kernel_timeout(sock, transfer.timeout)
        sock.connect(transfer.path if transfer.transport == "unix" else (HOST, transfer.port))
        start_ns = time.monotonic_ns()
        for _ in range(whole):
            sock.sendall(chunk)
        if tail:
            sock.sendall(tail)
        sock.shutdown(socket.SHUT_WR)
    return start_ns


async def _send_async(implementation: Implementation, transfer: Transfer) -> int:
    chunk, whole, tail = _payload(transfer)
    with anyio.fail_after(transfer.timeout):
        stream = await _connect(implementation, transfer)
        async with stream:
            start_ns = time.monotonic_ns()
            for _ in range(whole):
                await stream.send(chunk)
            if tail:
                await stream.send(tail)
            await stream.send_eof()
    return start_ns


async def _connect(implementation: Implementation, transfer: Transfer) -> anyio.abc.ByteStream:
    if implementation == "anyio":
        if transfer.transport == "unix":
            return await anyio.connect_unix(transfer.path)
        return await anyio.connect_tcp(HOST, transfer.port)
    from fdchannel import transports
    from fdchannel.address import TcpAddress, UnixAddress

    if transfer.transport == "unix":
        return await transports.connect(UnixAddress(transfer.path))
    return await transports.connect(TcpAddress(HOST, str(transfer.port)))
