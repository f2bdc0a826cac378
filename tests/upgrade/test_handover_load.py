"""Connections handed over under pipelined load: every request answered once, in order.

examples/upgrade_lines.py (a line protocol, served with ``receive_until``)
is upgraded 15 times while 200 connections each keep several requests of
varying size in flight, written in pieces that cut requests anywhere
(bench/handover_load.py: the clients and their checks).  The first upgrade
fails once its new generation holds the connections, so the old one's
``resume`` serves them on.  A stream's buffered bytes start at a request
(the server consumes whole lines), so a handover that lost or repeated
them would lose, repeat or garble a request's ID: its answer comes out of
order or never.  A connection closed or reset counts as an error (clients
never reconnect).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench._loops import LOOPS, Loop
from bench.handover_load import drive

CONNECTIONS = 200
UPGRADES = 15


@pytest.mark.parametrize("backend", LOOPS)
def test_pipelined_connections_are_handed_over_without_loss(sockdir: Path, backend: Loop) -> None:
    outcome = drive(sockdir, backend, CONNECTIONS, UPGRADES, fail_first=True)
    assert outcome.errors == []
    assert outcome.upgrades == UPGRADES
    # Drained: each request was answered, in order (the clients check each ID as it comes).
    assert outcome.answered == outcome.sent > CONNECTIONS * UPGRADES
    assert outcome.handed == [CONNECTIONS] * UPGRADES
    assert outcome.not_moved == 0, "a connection missed a generation"
    assert outcome.resumed_buffered is not None, "the failed upgrade did not resume"
    # What this is about: requests read from a socket, not answered yet, at a pause.
    assert sum(outcome.buffered) > 0, "no handover carried buffered bytes: nothing was tested"
