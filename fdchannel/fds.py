"""SCM_RIGHTS done right: one place for every descriptor-passing pitfall.

These are single non-blocking attempts on an AF_UNIX socket; the stream
(``transports/unix.py``) waits for readiness and loops.  Kernel facts that
shape this module:

* Linux attaches at most ``SCM_MAX_FD`` (253) descriptors to one message,
  and a message must carry at least one byte for them to travel on a
  stream socket.
* On a stream socket the kernel never merges bytes carrying descriptors
  with bytes before or after them into one ``recvmsg`` result, so the
  descriptors always arrive with the first byte they were sent with.
* When the control buffer is too small, or the receiver hits
  RLIMIT_NOFILE, the kernel installs what fits and sets ``MSG_CTRUNC``:
  the rest are gone.  We close what did arrive and raise.
* SO_PASSCRED makes the kernel put an SCM_CREDENTIALS message *before*
  SCM_RIGHTS; SO_PASSPIDFD puts a pidfd (SCM_PIDFD) there.  Both take
  buffer space, so we reserve room for them, and the pidfd is closed.
* Received descriptors share their open file description with the
  sender: flags such as O_NONBLOCK are the sender's, so we leave them.
* A receiver at RLIMIT_NOFILE loses what does not fit (``MSG_CTRUNC``):
  ``ensure_fd_room`` raises the soft limit first, or fails before a read.
"""

from __future__ import annotations

import array
import contextlib
import errno
import functools
import os
import resource
import socket
import struct
from collections.abc import Iterator, Sequence
from typing import TypeAlias

from .errors import FdPassingError, StateError, TruncatedFdsError

__all__ = [
    "SCM_MAX_FD",
    "FdRoom",
    "Fds",
    "close_all",
    "control_buffer_size",
    "drain_fds",
    "ensure_fd_room",
    "fd_table_size",
    "open_fd_count",
    "recvmsg_discarding",
    "recvmsg_fd_array",
    "recvmsg_fds",
    "sendmsg_fds",
    "split_for_sending",
]

#: Linux's limit of descriptors in one SCM_RIGHTS message (include/net/scm.h).
SCM_MAX_FD = 253
#: Received descriptors: a list, or an ``array('i')`` that makes no int per descriptor.
Fds: TypeAlias = "list[int] | array.array[int]"
_INT_SIZE = array.array("i").itemsize
# Not all Pythons name these constants; the values are the kernel's ABI.
_SCM_CREDENTIALS = getattr(socket, "SCM_CREDENTIALS", 2)
_SCM_PIDFD = getattr(socket, "SCM_PIDFD", 4)
# struct ucred is three 32-bit integers; a pidfd is one int; SCM_SECURITY
# carries an LSM label of bounded but varying length.
_EXTRA_CONTROL = (
    socket.CMSG_SPACE(3 * _INT_SIZE) + socket.CMSG_SPACE(_INT_SIZE) + socket.CMSG_SPACE(256)
)


#: Control room for a read that expects no descriptor: one, to notice them.
_PLAIN_CONTROL = socket.CMSG_SPACE(_INT_SIZE) + _EXTRA_CONTROL
# Plain ints: the socket module's are IntFlag members, and every ``&`` on
# one runs enum code in Python, once per message on the receive path.
_MSG_CTRUNC = int(socket.MSG_CTRUNC)
_MSG_CMSG_CLOEXEC = int(socket.MSG_CMSG_CLOEXEC)
_SOL_SOCKET = int(socket.SOL_SOCKET)
_SCM_RIGHTS = int(socket.SCM_RIGHTS)
_MSG_NOSIGNAL = int(socket.MSG_NOSIGNAL)


@functools.cache
def control_buffer_size(maxfds: int) -> int:
    """Room for ``maxfds`` descriptors plus the other messages the kernel may add first."""
    return socket.CMSG_SPACE(maxfds * _INT_SIZE) + _EXTRA_CONTROL


def close_all(fds: Sequence[int]) -> None:
    """Close every descriptor, ignoring ones already closed."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def fd_table_size() -> int:
    """The size of this process's descriptor table: more than its highest open descriptor.

    The kernel grows the table in powers of two and never shrinks it, so it
    bounds the number of open descriptors from above (FDSize in
    /proc/self/status).
    """
    fd = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
    try:
        status = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    start = status.index(b"FDSize:") + len(b"FDSize:")
    return int(status[start : status.index(b"\n", start)])


def open_fd_count() -> int | None:
    """How many descriptors this process has open, or None if the kernel does not say.

    Linux 6.2 and later report it as the size of /proc/self/fd: a count of
    the open-descriptor bitmap, a few microseconds.  Listing the directory
    instead walks the whole descriptor table.
    """
    count = os.stat("/proc/self/fd").st_size
    # Older kernels report 0; a process with nothing open has no room problem.
    return count or None


#: Descriptors kept free beyond what a state needs (the process keeps working).
_HEADROOM = 64


def ensure_fd_room(count: int) -> None:
    """Raise the soft RLIMIT_NOFILE so ``count`` more descriptors fit, or fail early."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = None if hard == resource.RLIM_INFINITY else hard
    need = _limit_needed(count, ceiling)
    if ceiling is not None and need > ceiling:
        raise FdPassingError(
            f"receiving {count} descriptors needs RLIMIT_NOFILE of at least {need}; "
            f"the hard limit is {hard} (raise it, e.g. with ulimit -Hn or LimitNOFILE=)"
        )
    if need > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


#: Descriptors a process may open between reading ahead and the count (``FdRoom``).
_SLACK = 256


class FdRoom:
    """Room for descriptors still to come, read ahead of their count.

    Made before a state arrives: it reads the soft limit and how many
    descriptors are open.  ``ensure(count)`` is then ``ensure_fd_room``
    without a system call when the count plainly fits (``_SLACK`` more open
    since, and the headroom); else it is ``ensure_fd_room`` itself, read
    afresh.  The count is known once the state's first bytes are there, the
    moment a receiver is waited on.
    """

    def __init__(self) -> None:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        open_now = open_fd_count()
        #: Descriptors that fit under the soft limit now (0: ask each time).
        self.free = 0 if open_now is None else max(0, soft - open_now)

    def ensure(self, count: int) -> None:
        """Room for ``count`` more descriptors, or the FdPassingError of ``ensure_fd_room``."""
        if count + _HEADROOM + _SLACK > self.free:
            ensure_fd_room(count)


def _limit_needed(count: int, ceiling: int | None) -> int:
    """The soft limit that leaves room for ``count`` more descriptors."""
    open_now = open_fd_count()
    if open_now is None:
        # A kernel before 6.2: the descriptor table's size bounds how many
        # are open in one small read; listing /proc/self/fd is exact but
        # walks the whole table, so it waits until the bound does not fit.
        bound = fd_table_size()
        if ceiling is None or bound + count + _HEADROOM <= ceiling:
            return bound + count + _HEADROOM
        open_now = len(os.listdir("/proc/self/fd"))
    return open_now + count + _HEADROOM


def _fd_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _send_error(exc: OSError, count: int) -> FdPassingError:
    """Name the kernel limit behind a failed sendmsg with descriptors."""
    if exc.errno == errno.ETOOMANYREFS:
        return FdPassingError(
            f"the kernel refused {count} more descriptor(s) in flight (ETOOMANYREFS): an "
            "unprivileged user may have about RLIMIT_NOFILE "
            f"({_fd_limit()}) descriptors sent and not yet received; the receiver must "
            "read before more can be sent"
        )
    if exc.errno == errno.EINVAL:
        return FdPassingError(
            f"the kernel rejected a message with {count} descriptor(s) (EINVAL): at most "
            f"{SCM_MAX_FD} (SCM_MAX_FD) per message, and the socket must be AF_UNIX"
        )
    if exc.errno == errno.EBADF:
        return FdPassingError(f"one of the {count} descriptor(s) to send is not open (EBADF)")
    if exc.errno == errno.EMFILE:
        return FdPassingError(f"descriptor limit reached (EMFILE): RLIMIT_NOFILE is {_fd_limit()}")
    raise exc


def split_for_sending(data: bytes, fds: Sequence[int]) -> Iterator[tuple[bytes, Sequence[int]]]:
    """Split one logical send into messages of at most SCM_MAX_FD descriptors.

    Every message with descriptors carries at least one byte: the first
    messages carry one byte each, the last carries the rest.
    """
    if not fds:
        yield data, ()
        return
    batches = [fds[i : i + SCM_MAX_FD] for i in range(0, len(fds), SCM_MAX_FD)]
    if len(data) < len(batches):
        raise StateError(
            f"sending {len(fds)} descriptors takes {len(batches)} messages of at most "
            f"{SCM_MAX_FD}, each carrying at least one byte; got {len(data)} byte(s)"
        )
    for i, batch in enumerate(batches[:-1]):
        yield data[i : i + 1], batch
    yield data[len(batches) - 1 :], batches[-1]


def sendmsg_fds(sock: socket.socket, data: bytes | memoryview, fds: Sequence[int]) -> int:
    """One non-blocking sendmsg with ``fds`` attached; returns the bytes sent.

    If fewer bytes than given were sent, the descriptors went with them: the
    caller sends the rest *without* attaching the descriptors again.
    """
    ancillary = [(_SOL_SOCKET, _SCM_RIGHTS, _int_array(fds))] if fds else []
    try:
        return sock.sendmsg([data], ancillary, _MSG_NOSIGNAL)
    except BlockingIOError:
        raise
    except OSError as exc:
        if fds and exc.errno in (errno.ETOOMANYREFS, errno.EINVAL, errno.EBADF, errno.EMFILE):
            raise _send_error(exc, len(fds)) from exc
        raise


def _int_array(fds: Sequence[int]) -> bytes | array.array[int]:
    """Descriptors as the kernel reads them: C ints, in native byte order (an
    ``array('i')`` is that already)."""
    if isinstance(fds, array.array) and fds.typecode == "i":
        return fds
    try:
        # A struct packs 253 ints in about 1.8 us, array.array builds from
        # them in 4.2: the sender's biggest Python cost per message.
        return _int_struct(len(fds)).pack(*fds)
    except struct.error:
        raise StateError(f"descriptors must be ints that fit a C int: {list(fds)!r}") from None


@functools.cache
def _int_struct(count: int) -> struct.Struct:
    return struct.Struct(f"{count}i")


# Made at import: a full message's first send does not build it.
_int_struct(SCM_MAX_FD)


def _descriptors(ancillary: list[tuple[int, int, bytes]], into: Fds) -> None:
    """Append the SCM_RIGHTS descriptors of a recvmsg result to ``into``; other
    messages are skipped.

    A pidfd (SCM_PIDFD) is a descriptor too, installed by the kernel: it is
    closed here, never left open.
    """
    for level, kind, payload in ancillary:
        if level != _SOL_SOCKET or kind not in (_SCM_RIGHTS, _SCM_PIDFD):
            continue
        received = array.array("i")
        # A cut-off message may end in a partial int: only whole ones are descriptors.
        partial = len(payload) % _INT_SIZE
        received.frombytes(payload[: len(payload) - partial] if partial else payload)
        if kind != _SCM_RIGHTS:
            close_all(received)
        elif isinstance(into, array.array):
            into += received  # C ints to C ints: no int object per descriptor
        else:
            into += received.tolist()  # in C; extending from the array makes each int in Python


def recvmsg_discarding(sock: socket.socket, max_bytes: int) -> tuple[bytes, int]:
    """One non-blocking read where no descriptor is expected.

    Returns the bytes and how many descriptors arrived and were closed (at
    least that many: with room for one, the kernel drops the rest itself,
    which is what we want here, and cheaper than making room for 253).
    """
    data, ancillary, flags, _ = sock.recvmsg(max_bytes, _PLAIN_CONTROL, _MSG_CMSG_CLOEXEC)
    unexpected: list[int] = []
    _descriptors(ancillary, unexpected)
    close_all(unexpected)
    dropped = len(unexpected) + (1 if flags & _MSG_CTRUNC and not unexpected else 0)
    return data, dropped


def recvmsg_fd_array(
    sock: socket.socket, max_bytes: int, maxfds: int
) -> tuple[bytes, array.array[int]]:
    """``recvmsg_fds``, the descriptors in an ``array('i')``: C ints, no Python int
    per descriptor (10,000 of them cost 150 to 300 us as a list).  Feed it to
    ``drain_fds``, which appends to it likewise."""
    fds = array.array("i")
    data, ancillary, flags, _ = sock.recvmsg(
        max_bytes, control_buffer_size(maxfds), _MSG_CMSG_CLOEXEC
    )
    if ancillary or flags & _MSG_CTRUNC:
        _take(ancillary, flags, fds, maxfds)
    return data, fds


def recvmsg_fds(sock: socket.socket, max_bytes: int, maxfds: int) -> tuple[bytes, list[int]]:
    """One non-blocking recvmsg; returns the bytes and the descriptors that came with them.

    Descriptors arrive close-on-exec.  Control messages other than
    SCM_RIGHTS are skipped (a pidfd among them is closed).  A truncated
    control buffer raises TruncatedFdsError after closing what arrived.
    """
    fds: list[int] = []
    data, ancillary, flags, _ = sock.recvmsg(
        max_bytes, control_buffer_size(maxfds), _MSG_CMSG_CLOEXEC
    )
    if ancillary or flags & _MSG_CTRUNC:
        _take(ancillary, flags, fds, maxfds)
    return data, fds


def drain_fds(
    sock: socket.socket,
    chunks: list[bytes],
    fds: Fds,
    max_bytes: int,
    maxfds: int,
    max_messages: int,
) -> bool:
    """recvmsg until nothing is queued: bytes onto ``chunks``, descriptors onto ``fds``.

    Stops after ``max_messages`` reads or ``max_bytes`` bytes; returns True
    at EOF.  A stream of many messages with descriptors spends its time
    here, so the loop keeps everything in locals.  On an error the
    descriptors of the failing message are closed; ``fds`` keeps the rest.
    ``fds`` may be an ``array('i')`` (``recvmsg_fd_array``'s): the
    descriptors then stay C ints.
    """
    recvmsg = sock.recvmsg
    control = control_buffer_size(maxfds)
    size = 0
    want = max_bytes
    most = maxfds * _INT_SIZE
    for _ in range(max_messages):
        try:
            data, ancillary, flags, _ = recvmsg(want, control, _MSG_CMSG_CLOEXEC)
        except BlockingIOError:
            return False
        if ancillary or flags & _MSG_CTRUNC:
            if (
                len(ancillary) == 1
                and not flags & _MSG_CTRUNC
                and (message := ancillary[0])[1] == _SCM_RIGHTS
                and message[0] == _SOL_SOCKET
                and len(payload := message[2]) <= most
                and not len(payload) % _INT_SIZE
            ):
                # The usual message, inline: whole ints, as many as allowed.
                if isinstance(fds, list):
                    received = array.array("i")
                    received.frombytes(payload)
                    fds += received.tolist()
                else:
                    fds.frombytes(payload)
            else:
                _take(ancillary, flags, fds, maxfds)
        if not data:
            return True  # descriptors always come with a byte: this is EOF
        chunks.append(data)
        size += len(data)
        if size >= max_bytes:
            break
        want = max_bytes - size
        if ancillary:
            # The next is most likely another message with descriptors, a
            # few bytes long: a small buffer spares allocating (and
            # shrinking) max_bytes for each.  A longer one is read on.
            want = min(want, _SMALL_READ)
    return False


#: Bytes a drain asks for after a message that carried descriptors.
_SMALL_READ = 4096


def _take(ancillary: list[tuple[int, int, bytes]], flags: int, fds: Fds, maxfds: int) -> None:
    """Append a message's descriptors to ``fds``; on truncation close them and raise."""
    before = len(fds)
    try:
        _descriptors(ancillary, fds)
        if flags & _MSG_CTRUNC:
            raise TruncatedFdsError(
                f"descriptors were lost in transit (MSG_CTRUNC): {len(fds) - before} arrived "
                f"and were closed; the sender attached more than the receiver's limit of "
                f"{maxfds} per message, or this process reached RLIMIT_NOFILE "
                f"({_fd_limit()}), or a security module refused some"
            )
        if len(fds) - before > maxfds:
            raise TruncatedFdsError(
                f"{len(fds) - before} descriptors arrived where at most {maxfds} were "
                "expected; all were closed"
            )
    except BaseException:
        arrived = fds[before:]
        del fds[before:]
        close_all(arrived)
        raise
