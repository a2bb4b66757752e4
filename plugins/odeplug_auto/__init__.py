"""The ``Auto`` gradient rule: picks Direct, ACA, GQAdjoint, GaussAdjoint or
Adjoint(Seminorm) for each solve from what it can measure cheaply (state size, parameter count,
output times, the forward's step count and NFE, one step's graph) and a memory budget, then
hands the whole solve to the rule it picked. See ``_auto`` and docs/methods/auto.md.
"""

from __future__ import annotations

import odeplug
from odeplug import ODEProblem, Solver

from ._auto import Auto, Estimate, Measurements, available_memory, solve_auto

__all__ = ["Auto", "Estimate", "Measurements", "available_memory", "register"]


def register() -> None:
    """The plugin's hook: ``solve(ODEProblem, Solver, Auto)`` and the name ``Auto``.

    With an event, the core's ``solve_until_event`` (search, then solve to t*) calls this
    ``solve`` for the second part, so Auto picks the rule for the solve up to t*."""

    @odeplug.register
    def solve(problem: ODEProblem, solver: Solver, rule: Auto, **options):
        return solve_auto(problem, solver, rule, **options)

    odeplug.export(Auto)
