"""The close-as-ack handoff: a pure state machine and the two sides that drive it.

``machine.py`` (the states and transitions, no I/O), ``sides.py`` (what an
Outgoing and an Incoming are in either layer, the events their steps
report, the rule for a step that fails), ``received.py`` (a received state
answered once) and ``ack.py`` (``Ack``) load no event loop; ``cpr.py``
(``send_cpr``, ``receive_cpr``), ``outgoing.py``, ``incoming.py`` and
``steps.py`` are the async layer's thin loops over them
(``fdchannel.blocking`` has its own).  The names below are imported on
first use (PEP 562), so that importing the loop-free modules, or this
package, loads no event loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import exports

if TYPE_CHECKING:
    from .ack import Ack as Ack
    from .cpr import ReceivedCpr as ReceivedCpr, receive_cpr as receive_cpr, send_cpr as send_cpr
    from .incoming import Incoming as Incoming
    from .machine import (
        INCOMING as INCOMING,
        OUTGOING as OUTGOING,
        Event as Event,
        Machine as Machine,
        State as State,
    )
    from .outgoing import Outgoing as Outgoing

#: Each public name and the module it lives in (the imports above, for type checkers).
_WHERE = {
    "Ack": ".ack",
    "INCOMING": ".machine",
    "OUTGOING": ".machine",
    "Event": ".machine",
    "Incoming": ".incoming",
    "Machine": ".machine",
    "Outgoing": ".outgoing",
    "ReceivedCpr": ".cpr",
    "State": ".machine",
    "receive_cpr": ".cpr",
    "send_cpr": ".cpr",
}

__all__ = sorted(_WHERE)


__getattr__, __dir__ = exports(__name__, _WHERE)
