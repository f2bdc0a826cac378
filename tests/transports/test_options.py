"""Options are checked against the transport that takes them, before anything opens."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import fdchannel
from fdchannel.errors import AddressError

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("target", "options", "taken"),
    [
        ("tcp:127.0.0.1:0", {"mode": 0o600}, "none"),
        ("unix:{dir}/s", {"backlog": 1, "colour": "red"}, "mode, policy, backlog"),
        ("exec:true", {"policy": None}, "grace"),
    ],
)
async def test_a_wrong_option_is_an_address_error(
    sockdir: Path, target: str, options: dict[str, object], taken: str
) -> None:
    with pytest.raises(AddressError, match=f"it takes: {taken}"):
        await fdchannel.listen(target.format(dir=sockdir), **options)
    assert not (sockdir / "s").exists()


def test_incoming_checks_each_channel_at_construction(sockdir: Path) -> None:
    cpr = f"cpr,addr.transport=socket,addr.type=unix,addr.path={sockdir / 'cpr'}"
    channels = ["tcp:127.0.0.1:0", cpr]
    with pytest.raises(AddressError, match="takes no option 'mode'"):
        fdchannel.Incoming(channels, listen_options={"mode": 0o600})
    with pytest.raises(AddressError, match="takes no option 'mode'"):
        fdchannel.Incoming(channels, main_options={"mode": 0o600})
    fdchannel.Incoming(channels, cpr_options={"mode": 0o600})


async def test_per_channel_options_reach_their_listener(sockdir: Path) -> None:
    cpr = f"cpr,addr.transport=socket,addr.type=unix,addr.path={sockdir / 'cpr'}"
    incoming = fdchannel.Incoming(
        [f"unix:{sockdir / 'main'}", cpr], cpr_options={"mode": 0o660}, main_options={"mode": 0o640}
    )
    async with incoming:
        await incoming.listen_cpr()
        assert stat.S_IMODE(os.stat(sockdir / "cpr").st_mode) == 0o660
