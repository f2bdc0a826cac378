"""Real processes for tests/upgrade/test_trust.py: generations that misbehave on
purpose, and a control-socket squatter of another uid.

    python trust_peer.py generation --listen ADDR --report SOCK [--hold SOCK]
                                    [--dir-at PATH] [--kill-parent] [--backend B]
    python trust_peer.py old --listen ADDR --report SOCK [--backend B]
    python trust_peer.py squatter --fd N   (N: a bound unix socket)

A ``generation`` enters an Upgrader, listens on ADDR under "main", then (in
this order, each if asked) tells the test it holds (``holding`` on the
unix stream SOCK) and waits until the test closes that connection, puts a
directory at PATH, SIGKILLs its parent (the old generation) and waits for
it to be gone; then calls ``ready()`` and reports how that went on the
unix datagram socket ``--report``: ``{"event": "ready"|"error", "pid": ...,
"type": ..., "message": ...}``.  ``old`` is a first generation that upgrades
to a ``generation --kill-parent`` at once.  ``squatter`` becomes nobody,
listens on fd N, says ``listening`` on stdout and answers one connection
with ``{"ok": true, ...}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import socket
import sys

import anyio

from fdchannel.upgrade import Upgrader

NOBODY = 65534
TIMEOUT = 30.0


def report(address: str, event: str, **fields: object) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(json.dumps({"event": event, "pid": os.getpid(), **fields}).encode(), address)


def kill_parent() -> None:
    """SIGKILL the old generation and wait until it is gone (its pidfd turns readable)."""
    pidfd = os.pidfd_open(os.getppid())
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        assert select.select([pidfd], [], [], TIMEOUT)[0], "the parent outlived SIGKILL"
    finally:
        os.close(pidfd)


def hold(path: str) -> None:
    """Say "holding" on the unix stream ``path``; wait until the test hangs up."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(path)
        sock.sendall(b"holding\n")
        while sock.recv(64):
            pass


async def generation(options: argparse.Namespace) -> None:
    async with Upgrader(trigger=None) as up:
        await up.listen("main", options.listen)
        if options.hold:
            await anyio.to_thread.run_sync(hold, options.hold)
        if options.dir_at:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(options.dir_at)
            os.mkdir(options.dir_at)
        if options.kill_parent:
            kill_parent()
        try:
            with await up.ready():
                pass
        except Exception as exc:
            report(options.report, "error", type=type(exc).__name__, message=str(exc))
            return
        report(options.report, "ready")


async def old(options: argparse.Namespace) -> None:
    command = [sys.executable, __file__, "generation", "--kill-parent", "--backend"]
    command += [options.backend, "--listen", options.listen, "--report", options.report]
    async with Upgrader(trigger=None, command=command) as up:
        await up.listen("main", options.listen)
        with await up.ready():
            pass
        await up.upgrade()  # the new generation kills us meanwhile


def squatter(fd: int) -> None:
    # SO_PEERCRED reports who called listen(): become the other user first.
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)
    with socket.socket(fileno=fd) as server:
        server.listen()
        print("listening", flush=True)
        conn, _ = server.accept()
        with conn, contextlib.suppress(OSError):  # a client that believes nothing hangs up
            conn.sendall(b'{"ok": true, "pid": 1, "generation": 1}\n')
            conn.recv(64)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["generation", "old", "squatter"])
    parser.add_argument("--listen")
    parser.add_argument("--report")
    parser.add_argument("--hold")
    parser.add_argument("--dir-at")
    parser.add_argument("--kill-parent", action="store_true")
    parser.add_argument("--fd", type=int)
    parser.add_argument("--backend", choices=["asyncio", "uvloop", "trio"], default="asyncio")
    options = parser.parse_args()
    if options.role == "squatter":
        squatter(options.fd)
    else:
        backend = "trio" if options.backend == "trio" else "asyncio"
        uvloop = {"use_uvloop": True} if options.backend == "uvloop" else {}
        role = generation if options.role == "generation" else old
        anyio.run(role, options, backend=backend, backend_options=uvloop)


if __name__ == "__main__":
    main()
