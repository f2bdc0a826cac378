"""The transports, one registered object each: what every layer asks of them."""

from __future__ import annotations

from pathlib import Path

import pytest

import fdchannel
from fdchannel import reachability
from fdchannel.address import ADDRESS_TYPES
from fdchannel.capabilities import Capability as C
from fdchannel.registry import TRANSPORTS, FdPassing, transport_for

#: The spec's capability table: (URI, what its streams can do, passes descriptors)
TABLE = [
    ("unix:/x", C.FD_PASSING | C.HALF_CLOSE | C.MULTI_ACCEPT, FdPassing.ALWAYS),
    ("tcp:h:1", C.HALF_CLOSE | C.MULTI_ACCEPT, FdPassing.NEVER),
    ("vsock:2:1", C.HALF_CLOSE | C.MULTI_ACCEPT, FdPassing.NEVER),
    ("file:/x", C.SEEKABLE, FdPassing.NEVER),
    ("exec:true", C.HALF_CLOSE, FdPassing.NEVER),
    ("rdma:h:1", C.NONE, FdPassing.NEVER),
]


def test_every_address_class_has_one_transport() -> None:
    assert sorted(t.address_type.__name__ for t in TRANSPORTS) == sorted(
        cls.__name__ for cls in ADDRESS_TYPES
    )


@pytest.mark.parametrize(("uri", "caps", "passing"), TABLE)
def test_capability_table(uri: str, caps: C, passing: FdPassing) -> None:
    transport = transport_for(fdchannel.parse_address(uri))
    assert transport.capabilities_for({}) == caps
    assert transport.fd_passing is passing


@pytest.mark.parametrize(
    ("facts", "caps"),
    [
        ({"descriptor": {"kind": "socket", "family": "AF_UNIX", "listening": True}},
         C.FD_PASSING | C.HALF_CLOSE | C.MULTI_ACCEPT),
        ({"descriptor": {"kind": "socket", "family": "AF_INET"}}, C.HALF_CLOSE),
        ({"descriptor": {"kind": "pipe"}}, C.HALF_CLOSE),
        ({"descriptor": {"kind": "file"}}, C.SEEKABLE),
        ({"descriptor": {"kind": "closed"}}, C.NONE),
    ],
)  # fmt: skip
def test_fd_capabilities_follow_the_descriptor(facts: dict[str, object], caps: C) -> None:
    assert transport_for(fdchannel.parse_address("fd:3")).capabilities_for(facts) == caps


def test_each_transport_has_its_reachability_check(sockdir: Path) -> None:
    assert set(reachability.CHECKS) == {t.name for t in TRANSPORTS if t.module is not None}
    missing = fdchannel.parse_address(f"unix:{sockdir}/nobody")
    assert not reachability.check(missing, 1.0).ok
    rdma = fdchannel.parse_address("rdma:h:1")
    assert "not supported" in reachability.check(rdma, 1.0).detail
