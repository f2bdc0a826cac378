"""The close-as-ack handoff on an event loop: the async layer's Outgoing, Incoming and cpr calls.

``cpr.py`` (``send_cpr``, ``receive_cpr``), ``outgoing.py``, ``incoming.py``
and ``steps.py`` (the loop that does a driver's I/O on anyio, a step under
its deadline) are thin loops over the handoff written once, without I/O,
in ``fdchannel.protocol`` (``fdchannel.blocking`` is the other loop over
it).  ``machine``, ``sides``, ``received`` and ``ack`` still import from
here, as before they moved there.  The names below are imported on first
use (PEP 562), so that importing this package loads no event loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import exports

if TYPE_CHECKING:
    from ..protocol.ack import Ack as Ack
    from ..protocol.machine import (
        INCOMING as INCOMING,
        OUTGOING as OUTGOING,
        Event as Event,
        Machine as Machine,
        State as State,
    )
    from .cpr import ReceivedCpr as ReceivedCpr, receive_cpr as receive_cpr, send_cpr as send_cpr
    from .incoming import Incoming as Incoming
    from .outgoing import Outgoing as Outgoing

#: Each public name and the module it lives in (the imports above, for type checkers).
_WHERE = {
    "Ack": "..protocol.ack",
    "INCOMING": "..protocol.machine",
    "OUTGOING": "..protocol.machine",
    "Event": "..protocol.machine",
    "Incoming": ".incoming",
    "Machine": "..protocol.machine",
    "Outgoing": ".outgoing",
    "ReceivedCpr": ".cpr",
    "State": "..protocol.machine",
    "receive_cpr": ".cpr",
    "send_cpr": ".cpr",
}

__all__ = sorted(_WHERE)


__getattr__, __dir__ = exports(__name__, _WHERE)
