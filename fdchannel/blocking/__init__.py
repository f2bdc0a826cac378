"""fdchannel without an event loop: the same protocol for synchronous tools and prefork servers.

``connect``, ``listen``, ``send_state``, ``receive_state``, ``send_cpr``,
``receive_cpr``, ``Outgoing`` and ``Incoming`` behave as their async
namesakes in ``fdchannel``, with the same parameters and results, on the
wire and in their errors (the ``fdchannel.errors`` tree only), and are
driven by the same sans-I/O drivers, codecs and state machine; only waiting
differs: every
call that may wait takes ``timeout`` (seconds) and waits with ``poll(2)``.
A wait that passes its deadline raises ``TransportTimeout`` (a
``TransportError`` and a ``TimeoutError``), or ``HandoffTimeout`` inside a
handoff step.  Nothing here uses signals or an event loop, so it runs in
any thread, a thread of a program whose main thread runs one included.
It stands beside the async layer on the loop-free core both share (the
handoff's state machine, sides and drivers in ``fdchannel.protocol``, the
codecs and their choice, deadlines and the retry policy, the socket
steps), and importing it loads no event-loop library.

Transports: ``unix:`` (paths and abstract names, with the async listener's
security), ``tcp:`` (for main channels) and ``fd:`` sockets (numbers,
registered and inherited names).  The others raise CapabilityError.
"""

from __future__ import annotations

from ..detached import Detached
from ..protocol.ack import Ack
from ..protocol.machine import State
from ..protocol.qemu_update import UpdateReport
from ._cpr import ReceivedCpr, receive_cpr, send_cpr
from ._deadline import TransportTimeout
from ._incoming import Incoming
from ._listener import Listener
from ._open import connect, listen
from ._outgoing import Outgoing
from ._qemu_update import check_qemu, update_qemu
from ._stream import Stream
from ._transfer import receive_state, receive_state_and_codec, send_state

__all__ = [
    "Ack",
    "Detached",
    "Incoming",
    "Listener",
    "Outgoing",
    "ReceivedCpr",
    "State",
    "Stream",
    "TransportTimeout",
    "UpdateReport",
    "check_qemu",
    "connect",
    "listen",
    "receive_cpr",
    "receive_state",
    "receive_state_and_codec",
    "send_cpr",
    "send_state",
    "update_qemu",
]
