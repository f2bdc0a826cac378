"""How an OSError met while opening a file, FIFO or command is reported."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ..errors import ConnectError, TransportError

if TYPE_CHECKING:
    from ..address import Address

__all__ = ["open_error"]


def open_error(
    exc: OSError, action: str, what: str, address: Address | None, *, outgoing: bool
) -> TransportError:
    """An OSError met while opening ``what``, as ConnectError (outgoing) or TransportError."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENXIO:
        reason = "it is a FIFO that nobody has open for reading"
    cls = ConnectError if outgoing else TransportError
    return cls(f"cannot {action} {what}: {reason}", address)
