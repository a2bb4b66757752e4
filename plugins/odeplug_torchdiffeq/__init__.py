"""A bridge solver: run any torchdiffeq method through odeplug's front door.

``TorchDiffEq(method="dopri5", rtol=1e-7, atol=1e-9, options={...})`` calls
``torchdiffeq.odeint`` (rule ``Direct``). Function evaluations and accepted/rejected steps are
counted by odeplug (torchdiffeq's step callbacks), so ``Solution.stats`` compares like for like.
It runs torchdiffeq's own loop, so it cannot serve stepping rules; those say so.
"""

from __future__ import annotations

import attrs
import torch

import odeplug
from odeplug import Layout, ODEProblem, Solution, Solver, Stats, VectorField, configuration
from odeplug._solve import reject_options
from odeplug_direct import Direct

__all__ = ["TorchDiffEq", "register"]


def _known_method(instance, attribute, value):
    from torchdiffeq._impl.odeint import SOLVERS

    if value not in SOLVERS:
        raise odeplug.InvalidOptionError(
            f"TorchDiffEq: unknown method {value!r}; torchdiffeq offers: {', '.join(sorted(SOLVERS))}."
        )


@configuration
class TorchDiffEq(Solver):
    """Any ``torchdiffeq.odeint`` method (``method``, ``rtol``, ``atol``, its ``options`` dict)."""

    positional_options = ("method",)

    method: str = attrs.field(default="dopri5", validator=_known_method)
    rtol: float = 1e-7
    atol: float = 1e-9
    options: dict | None = attrs.field(default=None, hash=False)


class _CountingFunc(torch.nn.Module):
    """Wraps f for torchdiffeq, counting evaluations and (through its callbacks) steps."""

    def __init__(self, f):
        super().__init__()
        self.f = f
        self.nfe = 0
        self.accepted = 0
        self.rejected = 0

    def forward(self, t, y):
        self.nfe += 1
        return self.f(t, y)


class _AdaptiveCounting(_CountingFunc):
    def callback_accept_step(self, t0, y0, dt):
        self.accepted += 1

    def callback_reject_step(self, t0, y0, dt):
        self.rejected += 1


class _FixedGridCounting(_CountingFunc):
    # torchdiffeq's fixed-grid solvers call only callback_step, once per (always accepted) step.
    def callback_step(self, t0, y0, dt):
        self.accepted += 1


def _counting(method: str, f):
    from torchdiffeq._impl.odeint import SOLVERS

    adaptive = "callback_accept_step" in SOLVERS[method].valid_callbacks()
    return (_AdaptiveCounting if adaptive else _FixedGridCounting)(f)


def register() -> None:
    """The plugin's hook."""

    @odeplug.register
    def solve(problem: ODEProblem, solver: TorchDiffEq, rule: Direct, **options):
        import torchdiffeq

        reject_options("solve(ODEProblem, TorchDiffEq, Direct)", options)
        func = _counting(solver.method, problem.f)
        y0 = problem.y0
        ys = torchdiffeq.odeint(
            func, y0, problem.ts, rtol=solver.rtol, atol=solver.atol, method=solver.method,
            options=dict(solver.options or {}),
        )
        stats = Stats(nfe=func.nfe, steps_accepted=func.accepted, steps_rejected=func.rejected)
        return Solution(ys, problem.ts, stats)

    @odeplug.register
    def make_stepper(solver: TorchDiffEq, field: VectorField, layout: Layout):  # noqa: F811
        raise odeplug.UnsupportedCombinationError(
            "TorchDiffEq runs torchdiffeq's own loop, so it supports only the Direct rule here. "
            "For stepping rules (Adjoint, GQAdjoint, ACA, ...) use an odeplug solver such as "
            "Dopri5(), which takes the same steps as torchdiffeq's dopri5."
        )

    odeplug.export(TorchDiffEq)
