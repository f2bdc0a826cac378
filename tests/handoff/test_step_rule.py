"""A handoff step that does not finish: one rule for both layers.

Each layer's ``run_step`` runs a side's step under its deadline; what the
machine moves to, and what the caller gets, is the same in both: FAILED
and a HandoffError (a HandoffTimeout at the deadline) for a failure,
ABORTED and the exception itself for anything else (a cancellation, an
interruption, a bug).
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from fdchannel import blocking
from fdchannel.blocking._handoff import run_step as blocking_run_step
from fdchannel.errors import ConnectionLostError, HandoffError, HandoffTimeout, VerdictGiven
from fdchannel.handoff.steps import run_step as async_run_step, step as async_step
from fdchannel.protocol.actions import Driver, Step
from fdchannel.protocol.machine import OUTGOING, Event, Machine, State

from ..blocking_peer import channels
from ..test_layer_parity import incoming

LAYERS = ["async", "blocking"]

#: What the step raises inside -> (the machine's state after it, what the caller gets).
CASES: dict[str, tuple[BaseException, State, type[BaseException]]] = {
    "handoff-error": (VerdictGiven("x", "accepted"), State.FAILED, VerdictGiven),
    "connection-lost": (ConnectionLostError("gone"), State.FAILED, HandoffError),
    "os-error": (OSError(5, "EIO"), State.FAILED, HandoffError),
    "a-bug": (RuntimeError("bug"), State.ABORTED, RuntimeError),
}


def live_machine() -> Machine:
    machine = Machine(OUTGOING, "outgoing")
    machine.fire(Event.START)
    return machine


def raising(exc: BaseException) -> Driver[None]:
    """A step's driver that fails at once."""
    raise exc
    yield  # a driver all the same


async def run_step(layer: str, machine: Machine, exc: BaseException | None) -> None:
    """A step that raises ``exc``, or (None) one that outlasts its deadline."""
    if layer == "blocking":
        late = blocking.TransportTimeout("nothing happened within 0.01 s")
        blocking_run_step(machine, Step("the step", raising(exc or late)), 10)
    elif exc is not None:
        await async_run_step(machine, Step("the step", raising(exc)), 10)
    else:
        async with async_step(machine, "the step", 0.01):
            await anyio.sleep(10)


@pytest.mark.anyio
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("layer", LAYERS)
async def test_the_same_rule_for_a_step_that_fails(layer: str, case: str) -> None:
    exc, state, raised = CASES[case]
    machine = live_machine()
    with anyio.fail_after(10), pytest.raises(raised) as got:
        await run_step(layer, machine, exc)
    assert type(got.value) is raised
    assert machine.state is state


@pytest.mark.anyio
@pytest.mark.parametrize("layer", LAYERS)
async def test_the_same_rule_for_a_step_out_of_time(layer: str) -> None:
    machine = live_machine()
    with anyio.fail_after(10), pytest.raises(HandoffTimeout, match="the step did not finish"):
        await run_step(layer, machine, None)
    assert machine.state is State.FAILED


@pytest.mark.anyio
@pytest.mark.parametrize("layer", LAYERS)
async def test_a_step_after_a_failed_one_is_refused_at_once(sockdir: Path, layer: str) -> None:
    """A second receive_cpr after one that timed out: refused before any wait (it
    waited out its whole timeout, then named a failure to fail)."""
    chans = channels(str(sockdir / "cpr"), str(sockdir / "main"))
    with anyio.fail_after(10):
        async with incoming(layer, chans) as inc:
            with pytest.raises(HandoffTimeout):
                await inc.receive_cpr(timeout=0.05)
            with anyio.fail_after(5), pytest.raises(HandoffError) as raised:
                await inc.receive_cpr(timeout=60)
            assert str(raised.value) == "incoming handoff: cannot receive while failed"
            assert inc.state is State.FAILED
