"""The result of a solve: the outputs and the counts of what it cost."""

from __future__ import annotations

from typing import Any

import attrs
import torch

from ._nouns import final

__all__ = ["Solution", "Stats"]


@final
class Stats(dict):
    """Counts of a solve, filled in by the library (never estimated).

    Forward keys (every rule): ``nfe`` (function evaluations, including the initial-step probe
    and rejected steps), ``steps_accepted``, ``steps_rejected``. Gradient rules that run their own
    backward solve add ``nfe_backward``, ``steps_accepted_backward``, ``steps_rejected_backward``
    and rule-specific counts when ``backward()`` runs. A problem with an ``event`` adds the
    counts of the search for it (a graph-free solve before the rule's): ``nfe_event``,
    ``steps_accepted_event``, ``steps_rejected_event`` and ``event_evaluations`` (calls of the
    event function). Keys are also readable as attributes.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(
                f"Stats has no count {name!r}; available: {', '.join(sorted(self))}"
            ) from None


@final
@attrs.define(eq=False)
class Solution:
    """What :func:`odeplug.solve` returns.

    Attributes:
        ys: the state at each output time, shaped ``(len(ts), *y0.shape)``, or a tuple of such
            when ``y0`` is a tuple. Differentiable with the problem's gradient rule.
        ts: the output times.
        stats: :class:`Stats` (backward counts appear after ``backward()``).
        event_t: for a problem with an ``event`` that happened, its time t* (a 0-d tensor,
            differentiable); then ``ts`` ends with t* and ``ys`` with y(t*). ``None`` otherwise.
        event_index: which element of the event function crossed zero at t*, or ``None``.
    """

    ys: torch.Tensor | tuple[torch.Tensor, ...]
    ts: torch.Tensor
    stats: Stats = attrs.field(factory=Stats)
    event_t: torch.Tensor | None = None
    event_index: int | None = None
