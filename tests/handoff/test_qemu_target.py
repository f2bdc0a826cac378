"""``qemu_target``: the qemu codec's state encoded for the QEMU that reads it.

QEMU 10.0 fails on any subsection after the descriptor list; 10.1 and later
send (and take) ``CprState/vfio devices``.  ``send_state`` and ``Outgoing``
pass the caller's target to the encoder and refuse an unknown one up front.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

import fdchannel
from fdchannel import FdState, NamedFd
from fdchannel.codecs.qemu import Subsection, VfioDevice
from fdchannel.errors import ProtocolError, StateError
from fdchannel.transports._socket import UnixSocketStream

pytestmark = pytest.mark.anyio

EMPTY_VFIO = Subsection.vfio_devices()
ONE_DEVICE = Subsection.vfio_devices([VfioDevice("0000:00:01.0", 1, 2, 3)])
STUB_VFIO = Subsection.vfio_devices(iommufd=False)


@dataclass(frozen=True)
class Case:
    """A state's own subsections, the target, and what the receiver decodes."""

    own: tuple[Subsection, ...]
    target: str | None
    received: tuple[Subsection, ...]


CASES = {
    "built here, as it is": Case((), None, ()),
    "built here, for 10.0": Case((), "10.0", ()),
    "built here, for 11.1": Case((), "11.1", (EMPTY_VFIO,)),
    "built here, for 10.1": Case((), "10.1", (EMPTY_VFIO,)),
    "built here, for 10": Case((), "10", ()),
    "from 11.1, as it is": Case((EMPTY_VFIO,), None, (EMPTY_VFIO,)),
    "from 11.1, for 10.0": Case((EMPTY_VFIO,), "10.0", ()),
    "from 11.1, for 11": Case((EMPTY_VFIO,), "11", (EMPTY_VFIO,)),
    "stub build, for 10.0": Case((STUB_VFIO,), "10.0", ()),
    "a device, for 11.1.3": Case((ONE_DEVICE,), "11.1.3", (ONE_DEVICE,)),
}

BAD_TARGETS = ["", "x", "9.2", "9", "11.1-rc0", "v10.0", " 10.0"]


def state_with(memfd: int, subsections: tuple[Subsection, ...]) -> FdState:
    state = FdState([NamedFd("ram0", 0, memfd)])
    state.qemu_subsections = subsections
    return state


@pytest.fixture
def memfd() -> Iterator[int]:
    fd = os.memfd_create("ram0", os.MFD_CLOEXEC)
    yield fd
    os.close(fd)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_send_state_encodes_for_the_target(
    case: Case, memfd: int, pair: tuple[UnixSocketStream, UnixSocketStream]
) -> None:
    sender, receiver = pair
    with anyio.fail_after(5):
        await fdchannel.send_state(
            sender, state_with(memfd, case.own), codec="qemu", qemu_target=case.target
        )
        with await fdchannel.receive_state(receiver) as got:
            assert [(e.name, e.id) for e in got.fds] == [("ram0", 0)]
            assert got.qemu_subsections == case.received


async def test_a_device_for_10_0_is_refused_unsent(
    memfd: int, pair: tuple[UnixSocketStream, UnixSocketStream]
) -> None:
    """QEMU 10.0 cannot take a VFIO device: nothing goes out, not even the magic."""
    sender, receiver = pair
    with anyio.fail_after(5):
        with pytest.raises(ProtocolError, match="takes no subsections"):
            await fdchannel.send_state(
                sender, state_with(memfd, (ONE_DEVICE,)), codec="qemu", qemu_target="10.0"
            )
        await sender.send_eof()
        with pytest.raises(anyio.EndOfStream):
            await receiver.receive()


@pytest.mark.parametrize("target", BAD_TARGETS)
async def test_send_state_refuses_unknown_targets(
    target: str, memfd: int, pair: tuple[UnixSocketStream, UnixSocketStream]
) -> None:
    sender, _ = pair
    with pytest.raises(StateError, match=r"qemu target|no cpr-transfer"):
        await fdchannel.send_state(sender, state_with(memfd, ()), codec="qemu", qemu_target=target)


@pytest.mark.parametrize("target", BAD_TARGETS)
def test_outgoing_refuses_unknown_targets_at_construction(target: str, sockdir: Path) -> None:
    with pytest.raises(StateError):
        fdchannel.Outgoing(channels(sockdir), codec="qemu", qemu_target=target)


def test_a_target_needs_the_qemu_codec(sockdir: Path) -> None:
    with pytest.raises(StateError, match="applies to the qemu codec"):
        fdchannel.Outgoing(channels(sockdir), qemu_target="10.0")


def test_no_target_is_the_default(sockdir: Path) -> None:
    assert fdchannel.Outgoing(channels(sockdir), codec="qemu").qemu_target is None


def channels(sockdir: Path) -> list[str]:
    cpr = f"cpr,addr.transport=socket,addr.type=unix,addr.path={sockdir}/cpr.sock"
    return [f"unix:{sockdir}/main.sock", cpr]


@pytest.mark.parametrize(
    ("target", "received"), [(None, (EMPTY_VFIO,)), ("10.0", ()), ("11.1", (EMPTY_VFIO,))]
)
async def test_outgoing_hands_over_for_the_target(
    target: str | None, received: tuple[Subsection, ...], memfd: int, sockdir: Path
) -> None:
    """A state as QEMU 11.1 sent it, handed on to a QEMU of ``target``."""
    with anyio.fail_after(5):
        async with (
            fdchannel.Incoming(channels(sockdir)) as incoming,
            fdchannel.Outgoing(channels(sockdir), codec="qemu", qemu_target=target) as outgoing,
        ):
            await incoming.listen_cpr()
            async with anyio.create_task_group() as tg:
                tg.start_soon(outgoing.send_cpr, state_with(memfd, (EMPTY_VFIO,)))
                with await incoming.receive_cpr() as got:
                    assert got.qemu_subsections == received
                    await incoming.listen_main()
