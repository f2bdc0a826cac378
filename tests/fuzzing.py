"""How many examples a property test tries: the short default, or ``make fuzz``'s.

``make fuzz`` sets FDCHANNEL_FUZZ_SCALE (100): every property test then
tries that many times its default, over a million inputs in all.  A
failing example hypothesis finds there belongs in the test as an
``@example`` so that the short run keeps checking it.
"""

from __future__ import annotations

import os

SCALE = max(1, int(os.environ.get("FDCHANNEL_FUZZ_SCALE", "1")))


def examples(default: int) -> int:
    """``default`` examples, times the fuzzing scale."""
    return default * SCALE
