"""The adjoint gradient rule, and the seminorm that makes its backward solve cheaper.

``Adjoint()`` is the backsolve adjoint of Chen et al. (NeurIPS 2018);
``Adjoint(norm=Seminorm())`` is the seminorm adjoint of Kidger, Chen & Lyons (ICML 2021).
It is a short policy over the core's backward kit (:mod:`odeplug.backward`).
"""

from __future__ import annotations

import odeplug
from odeplug import ODEProblem, Solver

from ._adjoint import Adjoint, solve_adjoint

__all__ = ["Adjoint", "register"]


def register() -> None:
    """The plugin's hook."""

    @odeplug.register
    def solve(problem: ODEProblem, solver: Solver, rule: Adjoint, **options):
        return solve_adjoint(problem, solver, rule, **options)

    odeplug.export(Adjoint)
