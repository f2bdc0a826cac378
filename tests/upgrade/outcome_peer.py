"""New generations for tests/upgrade/test_outcomes.py, each failing (or not) its own way.

    python outcome_peer.py MODE --listen ADDR [--pidfile P --control C]

Every mode enters an Upgrader and listens on ADDR under "main", then:

* ``never-ready``: says on stderr what it waits for, and waits for ever;
* ``raise``: raises before ``ready()`` (the Upgrader tells the old generation why);
* ``exit``: writes a line with a terminal escape and a byte that is no UTF-8 on
  stderr, and exits with status 4 before ``ready()``;
* ``crash-after-ready``: calls ``ready()``, says so on stderr and exits with status 3
  (rolled back, under a probation);
* ``serve``: calls ``ready()`` and serves (nothing) until SIGTERM or until replaced;
  SIGHUP upgrades it, to the same command line.
"""

from __future__ import annotations

import argparse
import os
import signal

import anyio

from fdchannel.upgrade import Upgrader

MODES = ("never-ready", "raise", "exit", "crash-after-ready", "serve")


async def generation(options: argparse.Namespace) -> None:
    trigger = signal.SIGHUP if options.mode == "serve" else None  # fdchannel upgrade PIDFILE
    async with Upgrader(trigger=trigger, pidfile=options.pidfile, control=options.control) as up:
        await up.listen("main", options.listen)
        if options.mode == "never-ready":
            os.write(2, b"waiting for the database\n")
            await anyio.sleep_forever()
        if options.mode == "raise":
            raise RuntimeError("no database at db.internal:5432")
        if options.mode == "exit":
            os.write(2, b"reading the configuration\ngiving up: \x1b[31mno\xff config\n")
            os._exit(4)
        with await up.ready():
            pass
        if options.mode == "crash-after-ready":
            os.write(2, b"crashing on purpose\n")
            os._exit(3)
        with anyio.open_signal_receiver(signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tasks:

                async def replaced() -> None:
                    await up.wait_replaced()
                    tasks.cancel_scope.cancel()

                tasks.start_soon(replaced)
                async for _ in signals:
                    tasks.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--pidfile")
    parser.add_argument("--control")
    anyio.run(generation, parser.parse_args())


if __name__ == "__main__":
    main()
