"""fdchannel: hand a running service's descriptors and state to a new process.

The public names are the imports in the ``TYPE_CHECKING`` block below: the
one list of exports.  Type checkers read it as it stands; at run time
nothing is imported until a name is first used (PEP 562), so that
``import fdchannel.cli`` and ``fdchannel --help`` do not load the event
loop, and the same block, read once, says where each name lives.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .address import (
        Address as Address,
        ExecAddress as ExecAddress,
        FdAddress as FdAddress,
        FileAddress as FileAddress,
        RdmaAddress as RdmaAddress,
        TcpAddress as TcpAddress,
        UnixAddress as UnixAddress,
        VsockAddress as VsockAddress,
        parse_address as parse_address,
    )
    from .capabilities import (
        Capability as Capability,
    )
    from .channel import (
        Channel as Channel,
        ChannelType as ChannelType,
        parse_channel as parse_channel,
        validate_channels as validate_channels,
    )
    from .cpr_exec import (
        CprExecState as CprExecState,
        InheritedFdState as InheritedFdState,
        read_cpr_exec_state as read_cpr_exec_state,
    )
    from .detached import (
        Detached as Detached,
        Unpacked as Unpacked,
        pack_connections as pack_connections,
        unpack_connections as unpack_connections,
    )
    from .errors import (
        AddressError as AddressError,
        CapabilityError as CapabilityError,
        ChannelError as ChannelError,
        ConnectError as ConnectError,
        ConnectionLostError as ConnectionLostError,
        FdChannelError as FdChannelError,
        FdPassingError as FdPassingError,
        HandoffError as HandoffError,
        HandoffTimeout as HandoffTimeout,
        PeerCredentialsError as PeerCredentialsError,
        ProtocolError as ProtocolError,
        QemuError as QemuError,
        QmpError as QmpError,
        StateError as StateError,
        TransportError as TransportError,
        TransportTimeout as TransportTimeout,
        TruncatedFdsError as TruncatedFdsError,
        UpgradeBusy as UpgradeBusy,
        UpgradeError as UpgradeError,
        UpgradeFailed as UpgradeFailed,
        VerdictGiven as VerdictGiven,
    )
    from .handoff import (
        Ack as Ack,
        Incoming as Incoming,
        Outgoing as Outgoing,
        ReceivedCpr as ReceivedCpr,
        receive_cpr as receive_cpr,
        send_cpr as send_cpr,
    )
    from .qemu_update import (
        UpdateReport as UpdateReport,
        check_qemu as check_qemu,
        update_qemu as update_qemu,
    )
    from .relaying import (
        RelayStats as RelayStats,
        relay as relay,
    )
    from .state import (
        FdState as FdState,
        Limits as Limits,
        NamedFd as NamedFd,
    )
    from .transfer import (
        receive_state as receive_state,
        send_state as send_state,
    )
    from .transports import (
        Listener as Listener,
        Stream as Stream,
        connect as connect,
        listen as listen,
    )
    from .transports.datagram import (
        DatagramListener as DatagramListener,
    )

__version__ = "0.1.0.dev0"
#: The names imported above and __version__, listed on first use (see __getattr__).
__all__: list[str]


def _exports() -> dict[str, str]:
    """Each public name and its module, read from the TYPE_CHECKING imports above.

    A line scan, not ``ast``: importing and running ``ast`` cost 3 ms on the
    first use of any name, a start-up cost every program paid.  The block's
    shape is fixed by ruff's formatting: ``from .module import (``, one
    ``Name as Name,`` per line, ``)``; ``tests/test_exports.py`` checks the
    scan against ``ast``.
    """
    where: dict[str, str] = {}
    module = None
    with open(__file__, encoding="utf-8") as source:
        lines = iter(source)
        for line in lines:
            if line.startswith("if TYPE_CHECKING:"):
                break
        for line in lines:
            text = line.strip()
            if line[:1] not in (" ", "\n"):
                break  # the block ended
            if text.startswith("from "):
                module, _, rest = text[len("from ") :].partition(" import ")
                rest = rest.strip("()")
                if rest:  # all on one line
                    for alias in rest.split(","):
                        if alias.strip():
                            where[alias.split(" as ")[0].strip()] = module
            elif text and text != ")" and module is not None:
                where[text.rstrip(",").split(" as ")[0].strip()] = module
    return where


_where: dict[str, str] | None = None


def __getattr__(name: str) -> object:
    if name == "__all__":
        return [*_lazy(), "__version__"]
    module = _lazy().get(name)
    if module is None:
        raise AttributeError(f"module 'fdchannel' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def _lazy() -> dict[str, str]:
    global _where
    if _where is None:
        _where = _exports()
    return _where


def __dir__() -> list[str]:
    return sorted([*globals(), *_lazy()])
