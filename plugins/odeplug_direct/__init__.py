"""The Direct gradient rule: backpropagate through the solver's own operations.

Discretise-then-optimise: the gradient is the exact derivative of the computed solution. The
graph holds the accepted steps only (a rejected attempt is dropped before the next one starts)
and step sizes are treated as constants, as in torchdiffeq's ``odeint``. Memory grows with the
number of steps; the adjoint rules and ACA trade that memory for recomputation.
"""

from __future__ import annotations

import odeplug
from odeplug import (
    GradientRule,
    ODEProblem,
    Solution,
    Solver,
    configuration,
)
from odeplug._solve import reject_options

__all__ = ["Direct", "register"]


@configuration
class Direct(GradientRule):
    """Backpropagation through the solver (torchdiffeq's ``odeint``; diffrax's
    ``RecursiveCheckpointAdjoint`` without checkpointing). Exact gradients of the discrete
    solution; memory proportional to the number of accepted steps."""


def solve_direct(problem: ODEProblem, solver: Solver, rule: Direct, **options) -> Solution:
    reject_options("solve(ODEProblem, Solver, Direct)", options)
    ys, stats = odeplug.solve_forward(problem, solver)
    return Solution(problem.unflatten(ys), problem.ts, stats)


def solve_direct_until_event(problem: ODEProblem, solver: Solver, rule: Direct, *,
                             through_event_time: bool = True, **options) -> Solution:
    """With an event: one forward under autograd that stops at the event (instead of the
    core's search followed by a second solve), t* then differentiated by the implicit function
    theorem (docs/methods/events.md)."""
    reject_options("solve(ODEProblem, Solver, Direct) with an event", options)
    return odeplug.solve_forward_until_event(problem, solver, through_event_time=through_event_time)


def register() -> None:
    """The plugin's hook."""

    @odeplug.register
    def solve(problem: ODEProblem, solver: Solver, rule: Direct, **options):
        return solve_direct(problem, solver, rule, **options)

    @odeplug.register
    def solve_until_event(problem: ODEProblem, solver: Solver, rule: Direct, **options):
        return solve_direct_until_event(problem, solver, rule, **options)

    odeplug.export(Direct)
