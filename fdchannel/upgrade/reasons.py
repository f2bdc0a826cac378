"""One line for what made a generation give up."""

from __future__ import annotations

__all__ = ["reason"]


def reason(error: BaseException) -> str:
    """The error's text, task groups unwrapped."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(reason(e) for e in error.exceptions)
    return str(error) or type(error).__name__
