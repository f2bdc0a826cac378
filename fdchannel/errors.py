"""The exception tree: every error fdchannel raises derives from FdChannelError."""

from __future__ import annotations

__all__ = [
    "AddressError",
    "CapabilityError",
    "ChannelError",
    "ConnectError",
    "ConnectionLostError",
    "FdChannelError",
    "FdPassingError",
    "HandoffError",
    "HandoffTimeout",
    "PeerCredentialsError",
    "ProtocolError",
    "QemuError",
    "QmpError",
    "StateError",
    "TransportError",
    "TransportTimeout",
    "TruncatedFdsError",
    "UpgradeBusy",
    "UpgradeError",
    "UpgradeFailed",
    "VerdictGiven",
]


class FdChannelError(Exception):
    """Base class of every error fdchannel raises on purpose."""


class AddressError(FdChannelError, ValueError):
    """A URI, JSON or keyval text that does not name a valid address or channel."""

    def __init__(self, message: str, uri: object = None) -> None:
        super().__init__(message)
        self.uri = uri


class ChannelError(FdChannelError):
    """A list of channels that cannot be used together (see validate_channels)."""


class CapabilityError(FdChannelError):
    """An operation the stream or channel cannot do, e.g. descriptors over TCP."""


class TransportError(FdChannelError):
    """An operating-system failure while opening or using a transport."""

    def __init__(self, message: str, address: object = None) -> None:
        super().__init__(message)
        self.address = address


class TransportTimeout(TransportError, TimeoutError):
    """A wait on a stream or listener passed its deadline: any blocking call, or an
    async ``send_state``/``receive_state`` given a ``timeout``."""


class ConnectError(TransportError):
    """The outgoing side could not reach its peer."""


class ConnectionLostError(TransportError):
    """The peer hung up or reset the connection in the middle of an exchange."""


class FdPassingError(FdChannelError):
    """Descriptors could not be sent or received (a kernel limit was hit)."""


class TruncatedFdsError(FdPassingError):
    """The kernel cut the descriptor array (MSG_CTRUNC); what arrived was closed."""


class StateError(FdChannelError, ValueError):
    """A state or descriptor list that cannot travel: a name with a NUL, an id
    outside int32, a (name, id) twice, a descriptor number that is no C int."""


class ProtocolError(FdChannelError):
    """The peer's bytes do not follow the expected format (magic, version, frame)."""


class PeerCredentialsError(FdChannelError):
    """A peer was refused by the listener's credential policy."""


class HandoffError(FdChannelError):
    """The close-as-ack handoff failed; the outgoing side still owns its state."""


class HandoffTimeout(HandoffError, TimeoutError):
    """A handoff step did not finish before its deadline."""


class VerdictGiven(HandoffError):
    """A received state was answered twice: ``accept()`` or ``reject()`` (an Incoming's
    ``listen_main()`` or ``reject()``) after it was accepted, rejected or closed.
    The first answer stands; ``verdict`` says what it was."""

    def __init__(self, what: str, verdict: str) -> None:
        super().__init__(f"{what} was already {verdict}; the first answer stands")
        self.verdict = verdict


class UpgradeError(FdChannelError):
    """A zero-downtime upgrade (fdchannel.upgrade) did not happen; the running
    generation keeps serving."""


class UpgradeBusy(UpgradeError):
    """An upgrade was asked for while another one is under way (or before
    this generation was ready)."""


class UpgradeFailed(UpgradeError):
    """The new generation did not take over: it could not start, exited,
    reported a failure or timed out.  It was killed; the old one rolled back."""


class QemuError(FdChannelError):
    """A QEMU could not be driven: its monitor closed, it exited, or it did not
    answer in time."""


class QmpError(QemuError):
    """A QMP command was refused: QEMU's ``error`` reply (``error_class``, and its
    ``desc`` as the message)."""

    def __init__(self, message: str, command: str, error_class: str) -> None:
        super().__init__(message)
        self.command = command
        self.error_class = error_class
