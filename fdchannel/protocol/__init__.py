"""The close-as-ack handoff written once, without I/O: what both layers run.

``machine.py`` (the states and transitions), ``side.py`` (what both sides
are, and the rule for a step that fails), ``outgoing_side.py`` and
``incoming_side.py`` (each step of a side as a driver that fires its own
events), ``exchange.py`` (the cpr exchange as
drivers: ``send_cpr``'s and ``receive_cpr``'s), ``received.py`` (a
received state, answered once), ``main_framing.py`` (the main channel's
length and bytes), ``ack.py`` (``Ack``) and ``actions.py`` (the I/O
requests the drivers yield, and the bookkeeping of a loop that runs them).
The async layer (``fdchannel.handoff``) and the blocking one
(``fdchannel.blocking``) are each a small loop over these, side by side;
nothing here waits or imports an event loop.
"""
