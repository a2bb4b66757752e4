"""The forward loop shared by gradient rules: step through the output times, read the dense output."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._solution import Stats
from ._stepping import Counts, Step, StepState, Stepper, VectorField, advance

__all__ = ["solver_times", "integrate", "solve_forward"]


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
    stops), as in torchdiffeq, so the step sequence does not depend on the output grid."""
    state = stepper.start(s[0], y0, s[-1])
    outputs = [y0]
    last: Step | None = None
    for k in range(1, len(s)):
        state, last = advance(stepper, state, s[k], counts, on_step, last)
        outputs.append(stepper.interpolate(last, s[k]))
    return torch.stack(outputs), state


def solve_forward(problem, solver) -> tuple[torch.Tensor, Stats]:  # noqa: ANN001
    """The forward solve every stepping rule starts with: the stacked flat outputs (K+1, n) and the
    counted ``nfe``, ``steps_accepted``, ``steps_rejected``. Records a graph iff grad is enabled."""
    from ._verbs import make_stepper

    field = VectorField(problem.flat_field(), problem.direction)
    stepper = make_stepper(solver, field, problem.layout)
    counts = Counts()
    ys, _ = integrate(stepper, problem.flat_y0(), solver_times(problem.ts, problem.direction), counts)
    return ys, Stats(nfe=field.nfe, steps_accepted=counts.accepted, steps_rejected=counts.rejected)
