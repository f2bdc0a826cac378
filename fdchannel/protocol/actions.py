"""What the handoff's drivers ask an I/O loop to do, and the loop's bookkeeping, without I/O.

A driver (a side's step, ``exchange``) is a generator: it yields one request at
a time (connect this channel, send these bytes, close that stream), and the
layer's loop does it and sends back the result, or throws in what the I/O
raised, so the driver's own ``try`` blocks decide what happens next.  Each
request names the method of the layer's I/O object that does it
(``verb``), which takes the request: a layer is one small class of those
methods and a five-line loop over ``Driving``.  Both layers normalise what the I/O reports: a read
at the end is ``b""``, and a connection that broke is a ConnectionLostError.
Nothing here waits or imports an event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from ..channel import Channel
from ..codecs.encoder import Encoder
from ..errors import PeerCredentialsError
from ..state import Limits

__all__ = [
    "Accept",
    "Adopt",
    "AwaitVerdict",
    "Close",
    "Connect",
    "Discard",
    "Driver",
    "Driving",
    "Listen",
    "Receive",
    "ReceiveState",
    "Request",
    "Send",
    "SendEof",
    "SendFds",
    "SendState",
    "Sleep",
    "Step",
    "WaitPeerClosed",
    "WaitReadable",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Connect:
    """Connect ``channel``, retrying while nobody listens yet: a stream.
    ``attempts`` hears why each retried attempt failed."""

    channel: Channel
    attempts: list[str] | None = None
    verb: ClassVar[str] = "connect"


@dataclass(frozen=True, slots=True)
class Listen:
    """Listen on ``channel`` with the transport's ``options``: a listener."""

    channel: Channel
    options: dict[str, Any]
    verb: ClassVar[str] = "listen"


@dataclass(frozen=True, slots=True)
class Accept:
    """The next peer ``listener``'s credential policy admits (each refused one told
    to ``on_refused``): a stream."""

    listener: Any
    on_refused: Callable[[PeerCredentialsError], None]
    verb: ClassVar[str] = "accept"


@dataclass(frozen=True, slots=True)
class SendState:
    """Send what ``encoder`` holds on ``stream`` and half-close (``send_with``)."""

    stream: Any
    encoder: Encoder
    verb: ClassVar[str] = "send_state"


@dataclass(frozen=True, slots=True)
class AwaitVerdict:
    """Wait for the receiver's close-as-ack (``await_verdict``): its kind."""

    stream: Any
    encoder: Encoder
    verb: ClassVar[str] = "await_verdict"


@dataclass(frozen=True, slots=True)
class ReceiveState:
    """Read a state to EOF (``receive_state_and_codec``): (state, codec)."""

    stream: Any
    limits: Limits
    verb: ClassVar[str] = "receive_state"


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``data``; ``timeout`` bounds this request alone (a TransportTimeout)."""

    stream: Any
    data: bytes
    timeout: float | None = None
    verb: ClassVar[str] = "send"


@dataclass(frozen=True, slots=True)
class SendEof:
    """Half-close ``stream``."""

    stream: Any
    verb: ClassVar[str] = "send_eof"


@dataclass(frozen=True, slots=True)
class WaitPeerClosed:
    """Wait until the peer closed ``stream``."""

    stream: Any
    verb: ClassVar[str] = "wait_peer_closed"


@dataclass(frozen=True, slots=True)
class Receive:
    """Read up to ``max_bytes``: ``b""`` at the end; ``timeout`` bounds this request
    alone (a TransportTimeout)."""

    stream: Any
    max_bytes: int
    timeout: float | None = None
    verb: ClassVar[str] = "receive"


@dataclass(frozen=True, slots=True)
class SendFds:
    """Send ``data`` with ``fds`` attached (one ``sendmsg``, then the rest of ``data``)."""

    stream: Any
    data: bytes
    fds: list[int]
    verb: ClassVar[str] = "send_fds"


@dataclass(frozen=True, slots=True)
class Adopt:
    """Make a connected unix socket (ours from here on) the layer's stream."""

    sock: Any
    verb: ClassVar[str] = "adopt"


@dataclass(frozen=True, slots=True)
class WaitReadable:
    """Wait until descriptor ``fd`` is readable (a pidfd: its process exited), for
    ``timeout`` at most: True if it is, False once the time is up."""

    fd: int
    timeout: float | None
    verb: ClassVar[str] = "wait_readable"


@dataclass(frozen=True, slots=True)
class Sleep:
    """Let ``seconds`` pass (a poll of something that cannot be waited for)."""

    seconds: float
    verb: ClassVar[str] = "sleep"


@dataclass(frozen=True, slots=True)
class Close:
    """Close a stream or a listener gracefully (even when cancelled): what closing
    reports (an exec: command's status, a file's delayed write error) is raised."""

    resource: Any
    verb: ClassVar[str] = "close"


@dataclass(frozen=True, slots=True)
class Discard:
    """Close a stream a failed or abandoned handoff leaves behind: at once, quietly."""

    stream: Any
    verb: ClassVar[str] = "discard"


Request = (
    Connect
    | Listen
    | Accept
    | SendState
    | AwaitVerdict
    | ReceiveState
    | Send
    | SendEof
    | WaitPeerClosed
    | Receive
    | Close
    | Discard
    | SendFds
    | Adopt
    | WaitReadable
    | Sleep
)

#: A driver: requests out, their results in, its own result at the end.
Driver = Generator[Request, Any, T]


@dataclass(frozen=True, slots=True)
class Step(Generic[T]):
    """One step of a side (send the state, connect main, ...): what it is, for
    messages, and its driver; the layer runs it under the step's deadline."""

    what: str
    driver: Driver[T]


class Driving(Generic[T]):
    """A driver as a layer's loop runs it::

        driving = Driving(driver)
        for request in driving:
            with driving.catching():
                driving.done(io.do(request))
        return driving.result

    Whatever the I/O raised is thrown into the driver, which cleans up (it may
    ask for more I/O to do so) and raises it again, or handles it.
    """

    __slots__ = ("_driver", "_error", "_sent", "result", "unwinding")

    def __init__(self, driver: Driver[T]) -> None:
        self._driver = driver
        self._sent: object = None
        self._error: BaseException | None = None
        #: An error was thrown into the driver: what it asks for now cleans up,
        #: and must run even when the error was a cancellation.
        self.unwinding = False
        #: What the driver returned, once the loop is over.
        self.result: T

    def __iter__(self) -> Iterator[Request]:
        driver = self._driver
        while True:
            error, self._error = self._error, None
            try:
                request = driver.send(self._sent) if error is None else driver.throw(error)
            except StopIteration as stop:
                self.result = stop.value
                return
            finally:
                del error  # no cycle through the traceback
            self._sent = None
            yield request

    def done(self, result: object) -> None:
        """What the last request gave."""
        self._sent = result

    @contextmanager
    def catching(self) -> Iterator[None]:
        """Whatever the request raises inside is thrown into the driver next."""
        try:
            yield
        except BaseException as exc:
            self._error = exc
            self.unwinding = True
