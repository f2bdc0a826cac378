"""QEMU's cpr-exec: read the state an old QEMU left before it exec'd this process.

In cpr-exec mode (QEMU 10.2 and later, migration/cpr-exec.c) the old QEMU
writes its cpr state into a memfd named ``QEMU_CPR_EXEC_STATE``, dups it
without close-on-exec, puts the dup's number in the environment variable
``QEMU_CPR_EXEC_STATE``, clears close-on-exec on every descriptor of the
state and execs its ``cpr-exec-command``.  The state is the cpr-transfer
stream (``fdchannel.codecs.qemu``) with each descriptor's number written
in place of its SCM_RIGHTS marker: the descriptors are not passed, they
are inherited under the same numbers.

Reading here changes nothing a new QEMU relies on: the memfd is read with
``pread`` (its file offset, which QEMU leaves at the end of the state,
stays), nothing is opened, and the descriptors stay open: the state
returned does not own them, and its ``close`` closes nothing.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass

from .codecs import qemu
from .errors import ProtocolError, StateError, TransportError
from .state import DEFAULT_LIMITS, FdState, Limits

__all__ = [
    "CPR_EXEC_STATE_VARIABLE",
    "MAX_CPR_EXEC_STATE",
    "CprExecState",
    "InheritedFdState",
    "cpr_exec_state_fd",
    "read_cpr_exec_state",
]

#: The variable naming the state's descriptor (CPR_EXEC_STATE_NAME in QEMU).
CPR_EXEC_STATE_VARIABLE = "QEMU_CPR_EXEC_STATE"
#: Largest state read, in bytes (QEMU 11.1's for a small guest is 197).
MAX_CPR_EXEC_STATE = 64 << 20
#: Descriptors are C ints.
_INT_MAX = (1 << 31) - 1


class InheritedFdState(FdState):
    """A state whose descriptors this process inherited and hands on: ``close``
    closes nothing (the descriptors are forgotten, not closed)."""

    def close(self) -> None:
        """Forget the descriptors; they stay open for whoever comes next."""
        names, ids, fds = self.columns()
        self._columns = (names, ids, [-1] * len(fds))
        self._entries = None


@dataclass(frozen=True)
class CprExecState:
    """What an old QEMU left: the state's memfd and the state in it."""

    #: The memfd's descriptor, as the variable names it.
    state_fd: int
    #: The memfd's size: the state's length.
    size: int
    #: Its file offset, untouched (QEMU leaves it at the end of the state).
    offset: int
    #: The descriptors by (name, id), numbers of this process's own.
    state: InheritedFdState


def cpr_exec_state_fd(environ: Mapping[str, str] | None = None) -> int:
    """The descriptor number ``QEMU_CPR_EXEC_STATE`` holds; ProtocolError if none."""
    env = os.environ if environ is None else environ
    text = env.get(CPR_EXEC_STATE_VARIABLE)
    if text is None:
        raise ProtocolError(
            f"{CPR_EXEC_STATE_VARIABLE} is not set: this process was not started by a "
            "QEMU in cpr-exec mode"
        )
    # QEMU writes it with "%d" and reads it back with qemu_strtoi, base 10.
    if not (text.isascii() and text.isdigit() and len(text) <= 10 and int(text) <= _INT_MAX):
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise ProtocolError(f"{CPR_EXEC_STATE_VARIABLE}={shown!r} is not a descriptor number")
    return int(text)


def read_cpr_exec_state(
    fd: int | None = None,
    environ: Mapping[str, str] | None = None,
    limits: Limits = DEFAULT_LIMITS,
    *,
    max_size: int = MAX_CPR_EXEC_STATE,
) -> CprExecState:
    """Decode the cpr-exec state in ``fd`` (default: the one the environment names).

    Every descriptor the state names must be open.  Raises ProtocolError for
    a missing or malformed variable or state, TransportError if the memfd
    cannot be read.
    """
    if fd is not None and not 0 <= fd <= _INT_MAX:
        raise StateError(f"{fd} is not a descriptor number (0 to {_INT_MAX})")
    state_fd = cpr_exec_state_fd(environ) if fd is None else fd
    size, offset = _state_file(state_fd)
    if size > max_size:
        raise ProtocolError(
            f"cpr-exec state in descriptor {state_fd} has {size} bytes, more than {max_size}"
        )
    data = _pread_all(state_fd, size)
    decoded = qemu.decode_exec(data, limits)
    state = InheritedFdState(decoded.fds)
    state.qemu_subsections = decoded.qemu_subsections
    _check_open(state, state_fd)
    return CprExecState(state_fd, len(data), offset, state)


def _state_file(fd: int) -> tuple[int, int]:
    """Size and offset of the state's file; ProtocolError if it is no file."""
    try:
        info = os.fstat(fd)
    except OSError as exc:
        if exc.errno == errno.EBADF:
            raise ProtocolError(
                f"{CPR_EXEC_STATE_VARIABLE} names descriptor {fd}, which is not open"
            ) from None
        raise TransportError(f"cpr-exec state descriptor {fd}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ProtocolError(
            f"cpr-exec state descriptor {fd} is not a memfd or file ({stat.filemode(info.st_mode)})"
        )
    try:
        # SEEK_CUR by 0 reads the offset without moving it.
        offset = os.lseek(fd, 0, os.SEEK_CUR)
    except OSError as exc:
        raise TransportError(f"cpr-exec state descriptor {fd}: {exc.strerror}") from None
    return info.st_size, offset


def _pread_all(fd: int, size: int) -> bytes:
    """``size`` bytes from offset 0 with pread: the file offset never moves."""
    parts: list[bytes] = []
    done = 0
    while done < size:
        try:
            chunk = os.pread(fd, size - done, done)
        except OSError as exc:
            # A write-only descriptor (EBADF) or a failing read.
            raise TransportError(
                f"cannot read the cpr-exec state in descriptor {fd}: {exc.strerror}"
            ) from None
        if not chunk:
            break  # shrunk under us: the decoder reports what is missing
        parts.append(chunk)
        done += len(chunk)
    return b"".join(parts)


def _check_open(state: FdState, state_fd: int) -> None:
    """Every descriptor named must be open (QEMU cleared close-on-exec on each)."""
    for entry in state.fds:
        if entry.fd == state_fd:
            raise ProtocolError(
                f"cpr-exec state entry {entry.name!r} id {entry.id} names the state's "
                f"own descriptor {state_fd}"
            )
        try:
            os.fstat(entry.fd)
        except OSError:
            raise ProtocolError(
                f"cpr-exec state entry {entry.name!r} id {entry.id} names descriptor "
                f"{entry.fd}, which is not open"
            ) from None
