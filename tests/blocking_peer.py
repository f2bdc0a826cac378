"""The blocking API as a real process, for the wire-compatibility tests.

``python -m tests.blocking_peer ROLE CPR MAIN CODEC COUNT VERDICT``

* ``outgoing``: hand COUNT memfds (``state_of``) to CPR with a blocking
  ``Outgoing``, then MAIN_DATA on MAIN.  Its soft RLIMIT_NOFILE is set
  just above what it needs, so that the native codec's default window
  (half the limit, in whole messages) is smaller than the state: the
  acknowledgements travel.  It says which window first.
* ``incoming``: receive on CPR with a blocking ``Incoming``, check every
  memfd's contents (``check_state``), then accept (listen on MAIN, read
  MAIN_DATA) or reject, as VERDICT says; ``low-limit``: with too low a
  hard RLIMIT_NOFILE for the state, refuse it before it arrives.
* ``send-state``: no handoff: connect to CPR and ``send_state`` with a
  window of COUNT // 10 (rounded to whole messages), then wait for the close.

It prints one line per step, for the test to follow.
"""

from __future__ import annotations

import os
import resource
import sys

from fdchannel import FdState, HandoffError, NamedFd, blocking
from fdchannel.address import UnixAddress
from fdchannel.channel import Channel, ChannelType
from fdchannel.codecs import native
from fdchannel.fds import SCM_MAX_FD
from fdchannel.transfer import Codec

#: More than one socket buffer's worth of main stream.
MAIN_DATA = b"main" * (1 << 18)
REJECTION = "the new generation cannot use this state"
TIMEOUT = 30


def channels(cpr: str, main: str) -> list[Channel]:
    return [
        Channel(ChannelType.MAIN, UnixAddress(main)),
        Channel(ChannelType.CPR, UnixAddress(cpr)),
    ]


def entry(i: int) -> tuple[str, int]:
    """The (name, id) of the i-th descriptor: a memory region first, then connections."""
    return ("ram0", 0) if i == 0 else ("conn", i)


def contents(name: str, ident: int) -> bytes:
    return f"{name}/{ident}".encode()


def state_of(count: int, codec: str) -> FdState:
    """COUNT memfds, each holding its own (name, id); the caller closes them."""
    entries = []
    for i in range(count):
        name, ident = entry(i)
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.write(fd, contents(name, ident))
        entries.append(NamedFd(name, ident, fd))
    return FdState(entries, b"meta" if codec == "native" else b"")


def check_state(state: FdState, count: int, codec: str) -> None:
    """Every descriptor there, under its name, with its own contents (read here)."""
    assert state.metadata == (b"meta" if codec == "native" else b"")
    found = {(name, ident): fd for name, ident, fd in state.fds}
    assert sorted(found) == sorted(entry(i) for i in range(count))
    for (name, ident), fd in found.items():
        expected = contents(name, ident)
        assert os.pread(fd, len(expected) + 1, 0) == expected, (name, ident)


def say(line: str) -> None:
    print(line, flush=True)


def outgoing(cpr: str, main: str, codec: Codec, count: int) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (count + 100, hard))
    say(f"window {native.default_window()}")
    state = state_of(count, codec)
    try:
        with blocking.Outgoing(channels(cpr, main), codec=codec) as out:
            try:
                ack = out.send_cpr(state, timeout=TIMEOUT)
            except HandoffError as exc:
                say(f"rejected: {exc}")
                return
            say(f"ack {ack.codec} {ack.descriptors}")
            out.send_main(MAIN_DATA, timeout=TIMEOUT)
            say("done")
    finally:
        state.close()


def incoming(cpr: str, main: str, count: int, verdict: str) -> None:
    with blocking.Incoming(channels(cpr, main)) as inc:
        inc.listen_cpr()
        if verdict == "low-limit":
            # No room for the state, and no raising the limit to make some.
            low = len(os.listdir("/proc/self/fd")) + count // 2
            resource.setrlimit(resource.RLIMIT_NOFILE, (low, low))
        say("listening")
        if verdict == "low-limit":
            try:
                inc.receive_cpr(timeout=TIMEOUT)
            except HandoffError as exc:
                say(f"refused: {exc}")
            return
        with inc.receive_cpr(timeout=TIMEOUT) as state:
            assert inc.codec is not None
            check_state(state, count, inc.codec)
            say(f"received {inc.codec} {len(state)}")
            if verdict == "reject":
                inc.reject(REJECTION)
                say("rejected")
                return
            inc.listen_main()
        assert inc.receive_main(timeout=TIMEOUT) == MAIN_DATA
        say("done")


def send_only(cpr: str, count: int) -> None:
    window = max(SCM_MAX_FD, count // 10 // SCM_MAX_FD * SCM_MAX_FD)
    with state_of(count, "native") as state, blocking.connect(UnixAddress(cpr)) as stream:
        blocking.send_state(stream, state, window=window, timeout=TIMEOUT)
        say(f"sent {count} window {window}")
        stream.wait_peer_closed(TIMEOUT)
        say("done")


def main() -> None:
    role, cpr, main_path, codec, count, verdict = sys.argv[1:7]
    if role == "outgoing":
        outgoing(cpr, main_path, "qemu" if codec == "qemu" else "native", int(count))
    elif role == "incoming":
        incoming(cpr, main_path, int(count), verdict)
    else:
        send_only(cpr, int(count))


if __name__ == "__main__":
    main()
