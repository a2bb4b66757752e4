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


def _options(solver: TorchDiffEq, problem: ODEProblem) -> dict:
    """The solver's options, with the problem's stop and jump times as torchdiffeq's ``step_t``
    and ``jump_t``; what torchdiffeq would ignore (those times on a fixed-grid method, the
    problem's step callbacks, which it calls on its own wrapper of f) is refused instead."""
    from torchdiffeq._impl.rk_common import RKAdaptiveStepsizeODESolver
    from torchdiffeq._impl.odeint import SOLVERS

    options = dict(solver.options or {})
    times = {"step_t": problem.stop_times, "jump_t": problem.jump_times}
    given = {key: value for key, value in times.items() if value is not None}
    if given and not issubclass(SOLVERS[solver.method], RKAdaptiveStepsizeODESolver):
        raise odeplug.UnsupportedCombinationError(
            f"TorchDiffEq({solver.method!r}) would ignore the problem's stop/jump times "
            "(torchdiffeq honours step_t and jump_t only in its adaptive Runge–Kutta methods); "
            f"use odeplug's own {solver.method} solver, which lands on them, or an adaptive method."
        )
    for key, value in given.items():
        if key in options:
            raise odeplug.InvalidOptionError(
                f"TorchDiffEq: options[{key!r}] and the problem's "
                f"{'stop_times' if key == 'step_t' else 'jump_times'} both given; give one."
            )
        options[key] = value.to(problem.ts.dtype)
    if problem.step_callbacks() is not None:
        raise odeplug.UnsupportedCombinationError(
            "TorchDiffEq counts steps through torchdiffeq's callbacks on its own wrapper of f, so "
            "the problem's step callbacks would not be called; use an odeplug solver (e.g. "
            "Dopri5()), which calls them as torchdiffeq does."
        )
    return options


def register() -> None:
    """The plugin's hook."""

    @odeplug.register
    def solve(problem: ODEProblem, solver: TorchDiffEq, rule: Direct, **options):
        import torchdiffeq

        reject_options("solve(ODEProblem, TorchDiffEq, Direct)", options)
        func = _counting(solver.method, problem.f)
        ys = torchdiffeq.odeint(
            func, problem.y0, problem.ts, rtol=solver.rtol, atol=solver.atol,
            method=solver.method, options=_options(solver, problem),
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
