"""Did-you-mean for a mistyped name on the bench command line (a task, a rule, a device)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["did_you_mean"]


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """``"; did you mean 'X'?"`` for the known name closest to ``word`` (case ignored: ``adjoint``
    means ``Adjoint``), or ``""`` when none is close."""
    by_lower = {name.lower(): name for name in known}
    match = by_lower.get(word.lower())
    if match is None:
        close = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
        match = by_lower[close[0]] if close else None
    return f"; did you mean {match!r}?" if match is not None else ""
