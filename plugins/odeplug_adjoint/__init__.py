"""The adjoint gradient rule, and the seminorm that makes its backward solve cheaper.

``Adjoint()`` is the backsolve adjoint of Chen et al. (NeurIPS 2018);
``Adjoint(norm=Seminorm())`` is the seminorm adjoint of Kidger, Chen & Lyons (ICML 2021).
The backward solve (``_backsolve``) is shared with the quadrature adjoints.
"""

from __future__ import annotations

import odeplug
from odeplug import ODEProblem, Solver

from ._adjoint import Adjoint, AdjointFunctionBase, _AdjointFunction, forward_without_graph, solve_adjoint
from ._backsolve import AdjointSystem, backward_solver, run_backsolve

__all__ = ["Adjoint", "AdjointSystem", "AdjointFunctionBase", "backward_solver",
           "forward_without_graph", "run_backsolve", "register"]


def register() -> None:
    """The plugin's hook."""

    @odeplug.register
    def solve(problem: ODEProblem, solver: Solver, rule: Adjoint, **options):
        return solve_adjoint(problem, solver, rule, _AdjointFunction, "Adjoint", **options)

    odeplug.export(Adjoint)
    from . import _bench  # noqa: F401  (registers the `adjoint` bench task)
