"""A handoff step that does not finish: one rule for both layers.

Each layer's ``step`` runs a side's step under its deadline; what the
machine moves to, and what the caller gets, is the same in both: FAILED
and a HandoffError (a HandoffTimeout at the deadline) for a failure,
ABORTED and the exception itself for anything else (a cancellation, an
interruption, a bug).
"""

from __future__ import annotations

import anyio
import pytest

from fdchannel import blocking
from fdchannel.blocking._handoff import step as blocking_step
from fdchannel.errors import ConnectionLostError, HandoffError, HandoffTimeout, VerdictGiven
from fdchannel.handoff.machine import OUTGOING, Event, Machine, State
from fdchannel.handoff.steps import step as async_step

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


async def run_step(layer: str, machine: Machine, exc: BaseException | None) -> None:
    """A step that raises ``exc``, or (None) one that outlasts its deadline."""
    if layer == "async":
        async with async_step(machine, "the step", 0.01 if exc is None else 10):
            if exc is None:
                await anyio.sleep(10)
            raise exc  # type: ignore[misc]
    with blocking_step(machine, "the step", 10):
        raise exc or blocking.TransportTimeout("nothing happened within 0.01 s")


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
