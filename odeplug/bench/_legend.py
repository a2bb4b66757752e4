"""The legend under a bench table: what each column means, in which unit.

Tasks share most column names (``rule``, ``width``, ``step_s``, ``nfe_backward``, ``peak_MB``,
...): those are described once, here, in :data:`COLUMNS`. A task describes the columns only it
has where it is registered, ``@task(name, summary, columns={"vs_floor": "..."})``; its own
description wins over the shared one. A ratio column ``vs_X`` no one described reads as a ratio
to ``X``'s row. A column with no description at all is left out of the legend, not guessed at.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

__all__ = ["COLUMNS", "describe", "legend_lines"]

#: Descriptions of the column names several tasks use (a task's own ``columns=`` win).
COLUMNS: dict[str, str] = {
    # what a row is
    "rule": "gradient rule measured (or the reference it is compared with)",
    "route": "what is measured: the solver, rule or library, and the direction",
    "problem": "the test problem",
    "width": "hidden width W of the vector field's MLP",
    "outputs": "output times the loss reads",
    "tol": "solver tolerance, rtol = atol",
    "rtol": "solver's relative tolerance",
    "batch": "trajectories per batch",
    "jumps": "jump times the problem declares",
    "processes": "data-parallel processes training the model (--processes)",
    "threads_per_process": "torch intra-op threads of each process",
    "skipped": "why the row was not measured",
    # time
    "step_s": "seconds per training step (solve, loss, backward, optimiser step)",
    "epoch_s": "seconds per training epoch",
    "bwd_s": "seconds of one backward pass (loss.backward())",
    "odeplug_s": "seconds of odeplug's solve (forward) or backward pass",
    "time_ratio": "time ÷ the compared route's, same round",
    "vs_fastest": "step_s ÷ the fastest rule's in the same setting",
    "speedup": "the reference's time ÷ this row's",
    "loop_over_evaluations": "solve time ÷ the same number of bare evaluations timed alone",
    "step_s_1proc": "step_s of the same training in one process",
    "efficiency": "step_s_1proc ÷ (processes × step_s): 1 is perfect scaling",
    # work
    "nfe": "vector-field evaluations of the route",
    "nfe_forward": "vector-field evaluations in the forward solve",
    "nfe_fwd": "vector-field evaluations in the forward solve",
    "nfe_backward": "evaluations (and VJPs) in the backward pass; — where autograd "
                    "backpropagates through the solver",
    "nfe_bwd": "evaluations (and VJPs) in the backward pass; — where autograd "
               "backpropagates through the solver",
    "nfe_torchdiffeq": "torchdiffeq's evaluations on the same solve",
    "nfe_torchode": "torchode's evaluations on the same solve (per batch element)",
    "steps": "accepted steps of the forward solve",
    "accepted_without": "accepted steps without the jump times declared",
    "accepted_with": "accepted steps with the jump times declared",
    "rejected_without": "rejected steps without the jump times declared",
    "rejected_with": "rejected steps with the jump times declared",
    "nfe_without": "evaluations without the jump times declared",
    "nfe_with": "evaluations with the jump times declared",
    # memory
    "peak_MB": "peak memory allocated by solve + loss + backward, MiB",
    "held_MB": "peak memory autograd holds for backward (saved tensors, parameters excluded), MiB",
    "vs_Direct_memory": "peak_MB ÷ the Direct rule's",
    # accuracy
    "final_loss": "training loss after the last step",
    "grad_rel_error": "largest relative error of dL/dz0, dL/da, dL/dT on dz/dt = az against "
                      "the exact gradients (float64, tol 1e-8)",
}

_RATIO = re.compile(r"vs_(?P<other>.+)")


def describe(column: str, own: Mapping[str, str]) -> str | None:
    """The description of ``column``: the task's own, else the shared one, else (for ``vs_X``)
    a ratio to ``X``; None when nothing describes it."""
    if column in own:
        return own[column]
    if column in COLUMNS:
        return COLUMNS[column]
    ratio = _RATIO.fullmatch(column)
    if ratio:
        return f"this row ÷ {ratio['other']}'s (same round where timed)"
    return None


def legend_lines(columns: Iterable[str], own: Mapping[str, str], timed: Iterable[str]) -> list[str]:
    """The legend of a table with ``columns`` (in order): one line per described column, and a
    last line saying how the ``timed`` columns (printed ``median (min–max)``) read."""
    described = [(c, text) for c in columns if (text := describe(c, own)) is not None]
    lines = []
    if described:
        width = max(len(c) for c, _ in described)
        lines = ["columns:"] + [f"  {c.ljust(width)}  {text}" for c, text in described]
    if set(timed):
        lines.append("timed columns: median (min–max) over the timed rounds")
    return lines
