"""The forward loop shared by gradient rules: step through the output times, read the dense output."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._solution import Stats
from ._stepping import Counts, Step, StepState, Stepper, VectorField, advance

__all__ = ["solver_times", "integrate", "solve_forward", "forward_stats", "check_stops"]


def solver_times(ts: torch.Tensor, direction: float) -> torch.Tensor:
    """Output times in the stepper's increasing time s = direction · t, in float64 (or wider)."""
    time_dtype = torch.promote_types(ts.dtype, torch.float64)
    s = ts.to(time_dtype)
    return s if direction > 0 else -s


def integrate(
    stepper: Stepper,
    y0: torch.Tensor,
    s: torch.Tensor,
    counts: Counts,
    on_step: Callable[[Step], None] | None = None,
) -> tuple[torch.Tensor, StepState]:
    """Solve from ``s[0]`` through every output time; return the stacked flat outputs and the
    final state. Outputs come from the dense output of the step covering each time (no forced
    stops), as in torchdiffeq, so the step sequence does not depend on the output grid; all the
    outputs one step covers are read in one call (one device synchronisation per step)."""
    check_stops(stepper)
    state = stepper.start(s[0], y0, s[-1])
    outputs = [y0.unsqueeze(0)]
    k, count = 1, len(s)
    while k < count:
        state, last = advance(stepper, state, s[k], counts, on_step)
        # The outputs s[k], …, s[j − 1] lie in this step (s is increasing; s[k] <= t1 at least).
        j = min(max(int(torch.searchsorted(s, last.t1.to(s.dtype), right=True)), k + 1), count)
        outputs.append(stepper.interpolate(last, s[k:j]))
        k = j
    return torch.cat(outputs), state


def check_stops(stepper: Stepper) -> None:
    """Refuse a problem with stop or jump times for a stepper that cannot land on them."""
    if stepper.field.stops is not None and not getattr(stepper, "supports_stops", False):
        from ._errors import UnsupportedCombinationError

        raise UnsupportedCombinationError(
            f"{type(stepper).__name__} does not support stop_times/jump_times (it cannot land "
            "steps on given times); use a Runge–Kutta solver such as Dopri5(), or drop "
            "stop_times/jump_times from the ODEProblem."
        )


def forward_stats(field: VectorField, counts: Counts, stepper: Stepper) -> Stats:
    """The forward counts: ``nfe``, ``steps_accepted``, ``steps_rejected``, ``steps_forced``
    when the solver has a ``min_step``, and the stepper's own counts (its ``stats()``, if any:
    e.g. an implicit solver's Jacobian evaluations and LU factorisations)."""
    stats = Stats(nfe=field.nfe, steps_accepted=counts.accepted, steps_rejected=counts.rejected)
    if counts.forced or getattr(stepper, "min_step", 0):
        stats["steps_forced"] = counts.forced
    extra = getattr(stepper, "stats", None)  # a stepper's own counts (Stepper rule 7)
    if extra is not None:
        stats.update(extra())
    return stats


def solve_forward(problem, solver) -> tuple[torch.Tensor, Stats]:  # noqa: ANN001
    """The forward solve every stepping rule starts with: the stacked flat outputs (K+1, n) and the
    counted ``nfe``, ``steps_accepted``, ``steps_rejected``. Records a graph iff grad is enabled."""
    from ._verbs import make_stepper

    field = VectorField(problem.flat_field(), problem.direction)
    stepper = make_stepper(solver, field, problem.layout)
    counts = Counts()
    ys, _ = integrate(stepper, problem.flat_y0(), solver_times(problem.ts, problem.direction), counts)
    return ys, forward_stats(field, counts, stepper)
