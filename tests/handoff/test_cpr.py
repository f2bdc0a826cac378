"""send_cpr and receive_cpr: each side of the cpr exchange in one call."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

import fdchannel
from fdchannel import FdState, HandoffError, HandoffTimeout, NamedFd
from fdchannel.errors import VerdictGiven

pytestmark = pytest.mark.anyio
TIMEOUT = 10


def _cpr(sockdir: Path) -> str:
    return f"cpr,addr.transport=socket,addr.type=unix,addr.path={sockdir / 'cpr'}"


@pytest.mark.parametrize("codec", ["native", "qemu"])
@pytest.mark.parametrize("verdict", ["accept", "reject"])
async def test_one_call_each_side(sockdir: Path, codec: str, verdict: str) -> None:
    memfd = os.memfd_create("ram0", os.MFD_CLOEXEC)
    os.write(memfd, b"pattern")
    steps: list[object] = []
    acks: list[fdchannel.Ack] = []
    try:
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:

                async def sender() -> None:
                    acks.append(
                        await fdchannel.send_cpr(
                            _cpr(sockdir),
                            FdState([NamedFd("ram0", 0, memfd)]),
                            codec=codec,  # type: ignore[arg-type]
                            progress=steps.append,
                        )
                    )

                async def receiver() -> None:
                    received = await fdchannel.receive_cpr(_cpr(sockdir))
                    with received.state as state:
                        assert received.codec == codec == state.codec
                        assert os.pread(state.get("ram0"), 7, 0) == b"pattern"
                    if verdict == "accept":
                        assert await received.accept() == "closed the connection"
                    else:
                        await received.reject("not today")

                tg.start_soon(receiver)
                await anyio.wait_all_tasks_blocked()
                if verdict == "reject" and codec == "native":
                    with pytest.raises(HandoffError, match="not today"):
                        await sender()
                else:
                    await sender()  # qemu: any close is the acknowledgement
        if acks:
            assert acks[0].kind == ("accepted" if codec == "native" else "closed")
            assert steps == ["connected", "sent", "acknowledged"]
    finally:
        os.close(memfd)


#: The first answer to a received state, and the verdict it stands for.
FIRST_ANSWERS = {"accept": "accepted", "reject": "rejected", "aclose": "closed"}


async def _answer(received: fdchannel.ReceivedCpr, how: str) -> None:
    if how == "accept":
        await received.accept()
    elif how == "reject":
        await received.reject("not today")
    else:
        await received.aclose()


@pytest.mark.parametrize("second", ["accept", "reject"])
@pytest.mark.parametrize("first", FIRST_ANSWERS)
@pytest.mark.parametrize("codec", ["native", "qemu"])
async def test_a_received_state_is_answered_once(
    sockdir: Path, codec: str, first: str, second: str
) -> None:
    """A second accept() or reject() is a VerdictGiven saying what the first was; the
    sender heard the first one only."""
    outcome: list[object] = []
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:

            async def sender() -> None:
                try:
                    ack = await fdchannel.send_cpr(_cpr(sockdir), FdState(), codec=codec)  # type: ignore[arg-type]
                    outcome.append(ack.kind)
                except HandoffError as exc:
                    outcome.append(type(exc))

            tg.start_soon(sender)
            received = await fdchannel.receive_cpr(_cpr(sockdir))
            received.state.close()
            await _answer(received, first)
            with pytest.raises(VerdictGiven, match=f"already {FIRST_ANSWERS[first]}") as raised:
                await _answer(received, second)
            assert raised.value.verdict == FIRST_ANSWERS[first]
            await received.aclose()  # closing again stays harmless
    if codec == "qemu":
        assert outcome == ["closed"]  # any close is QEMU's acknowledgement
    else:
        assert outcome == (["accepted"] if first == "accept" else [HandoffError])


async def test_send_cpr_times_out_typed(sockdir: Path) -> None:
    with pytest.raises(HandoffTimeout, match="no acknowledgement"):
        await fdchannel.send_cpr(_cpr(sockdir), FdState(), timeout=0.2)


async def test_receive_cpr_times_out_typed_and_leaves_nothing(sockdir: Path) -> None:
    with pytest.raises(HandoffTimeout, match="no state arrived"):
        await fdchannel.receive_cpr(_cpr(sockdir), timeout=0.2)
    assert not (sockdir / "cpr").exists()


@pytest.mark.parametrize(
    ("old", "new"), [("start", "send_cpr"), ("finish", "connect_main"), ("complete", "send_main")]
)
async def test_the_old_outgoing_names_still_work_with_a_warning(
    sockdir: Path, old: str, new: str
) -> None:
    out = fdchannel.Outgoing([f"unix:{sockdir / 'main'}", _cpr(sockdir)])
    call = getattr(out, old)
    pending = call(FdState(), timeout=0.1) if old == "start" else call(timeout=0.1)
    warned = pytest.warns(DeprecationWarning, match=f"Outgoing.{old} is deprecated.*{new}")
    with warned, pytest.raises(HandoffError):  # nothing listens, or not in that state
        await pending
    await out.aclose()
