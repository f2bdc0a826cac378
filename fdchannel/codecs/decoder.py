"""The receiving side of a state, without I/O: the mirror of ``Encoder``.

``Decoder`` detects the codec from the stream's magic and parses whatever
bytes and descriptors it is fed; it owns every descriptor it was given
until it returns them inside the finished FdState.

A native state ends at its end marker.  A qemu state has none: after the
descriptor list QEMU 10.1 and later send VMState subsections, so it ends
where the stream ends, and ``finish`` tells the qemu parser so.  The qemu
codec is imported when a stream starts with its magic, not before: a
native receiver never loads it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator

from ..errors import ProtocolError
from ..fds import Fds
from ..parsing import MAY_END, ByteSource, FdQueue
from ..state import DEFAULT_LIMITS, FdState, Limits
from . import native

__all__ = ["Decoder"]


class Decoder:
    """Feed it what a stream delivers; it tells when the state is complete."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS, *, strict: bool | None = None) -> None:
        """``strict``: overrides ``limits.qemu_strict`` (unknown qemu subsections are errors)."""
        if strict is not None:
            limits = dataclasses.replace(limits, qemu_strict=strict)
        self.limits = limits
        self.codec: str | None = None
        self.progress = native.Progress()
        self._src = ByteSource()
        self._fds = FdQueue()
        self._result: FdState | None = None
        #: Started by the first read that is not a whole native state.
        self._parser: Generator[int, bool | None, FdState] | None = None
        #: What the parser last asked for (MAY_END: a qemu stream may end here).
        self._need = -1
        #: The first reads, kept while they may still be a whole native state
        #: (``native.whole_to_come``): their bytes and descriptors.
        self._early: tuple[bytes, Fds] | None = None

    def _parse(self) -> Generator[int, bool | None, FdState]:
        (magic,) = yield from self._src.unpack(">I")
        if magic == native.MAGIC:
            self.codec = "native"
            return (yield from native.parse(self._src, self._fds, self.limits, self.progress))
        from . import qemu

        if magic == qemu.MAGIC:
            self.codec = "qemu"
            return (yield from qemu.parse(self._src, self._fds, self.limits))
        raise ProtocolError(
            f"unknown state stream magic {magic:#010x}: expected {qemu.MAGIC:#010x} "
            f"('QCPR', qemu) or {native.MAGIC:#010x} ('FDCN', native)"
        )

    @property
    def done(self) -> bool:
        """True once the bytes so far are a whole state: a native end marker was
        parsed, or a qemu state is complete if the stream ends here."""
        return self._result is not None or self._may_end()

    def _may_end(self) -> bool:
        return self.codec == "qemu" and self._need == MAY_END

    def feed(self, data: bytes, fds: Fds) -> None:
        """Take the next bytes and the descriptors that came with them.

        The decoder owns ``fds`` from here on, the object included (a list,
        or an ``array('i')``, which the state it makes then holds).
        """
        if self._parser is None and self.codec is None:
            # The first reads: often the whole state (a unix socket's drain),
            # or its start, kept until the rest is there.
            if self._early is not None:
                early_data, early_fds = self._early
                self._early = None
                early_fds.extend(fds)  # a list or an array takes either
                data, fds = early_data + data, early_fds
            try:
                state = native.parse_whole(data, fds, self.limits)
            except BaseException:
                self._fds.push(fds)  # for close() to close
                raise
            if state is not None:
                self.codec, self._result = "native", state
                return
            if native.whole_to_come(data, len(fds), self.limits):
                self._early = (data, fds)
                return
            self._start()
        self._fds.push(fds)
        if self._result is not None:
            if data or fds:
                raise ProtocolError(
                    f"{len(data)} byte(s) and {len(fds)} descriptor(s) after the end of the "
                    f"{self.codec} state"
                )
            return
        self._src.append(data)
        self._resume(None)

    def _start(self) -> None:
        """Start the parser, up to its first request for bytes."""
        self._parser = self._parse()
        next(self._parser)

    def _resume(self, ended: bool | None) -> None:
        """Run the parser on; ``ended``: the stream has ended (qemu only)."""
        assert self._parser is not None
        try:
            self._need = self._parser.send(ended)
        except StopIteration as stop:
            self._result = stop.value
            self._need = -1
            if self._src.available() or len(self._fds):
                raise ProtocolError(
                    f"{self._src.available()} byte(s) and {len(self._fds)} descriptor(s) "
                    f"after the end of the {self.codec} state"
                ) from None

    def take_outgoing(self) -> list[bytes]:
        """Frames the receiver owes the sender (native acknowledgements)."""
        frames, self.progress.outgoing = self.progress.outgoing, []
        return frames

    def finish(self) -> FdState:
        """The state, once the stream ended (its ``codec`` says which); ProtocolError
        if it ended early."""
        if self._early is not None:
            # It ended before it was whole: the parser names what is missing.
            data, fds = self._early
            self._early = None
            self._start()
            self.feed(data, fds)
        if self._result is None and self._may_end():
            self._resume(True)  # a qemu state ends with its stream
        if self._result is None:
            codec = self.codec or "state"
            raise ProtocolError(
                f"the {codec} stream ended after {self._src.offset + self._src.available()} "
                "byte(s), before its end marker"
            )
        result, self._result = self._result, None
        result.codec = self.codec
        return result

    def close(self) -> None:
        """Close every descriptor received and not handed out (error paths)."""
        if self._parser is not None:
            self._parser.close()
        if self._early is not None:
            self._fds.push(self._early[1])
            self._early = None
        self._fds.close()
        if self._result is not None:
            self._result.close()
            self._result = None
