"""The quadrature adjoints: :class:`GQAdjoint` (Norcliffe & Deisenroth, TMLR 2023) and the
per-step :class:`GaussAdjoint`. See ``_rules`` for the method and docs/methods/gq.md."""

from __future__ import annotations

import odeplug
from odeplug import ODEProblem, Solver

from ._rules import GaussAdjoint, GQAdjoint, IntervalNodes, QuadratureSum, StepNodes, node_count, solve_quadrature

__all__ = ["GQAdjoint", "GaussAdjoint", "QuadratureSum", "register"]


def register() -> None:
    """The plugin's hook."""

    @odeplug.register
    def solve(problem: ODEProblem, solver: Solver, rule: GQAdjoint, **options):
        return solve_quadrature(problem, solver, rule, IntervalNodes, **options)

    @odeplug.register
    def solve(problem: ODEProblem, solver: Solver, rule: GaussAdjoint, **options):  # noqa: F811
        return solve_quadrature(problem, solver, rule, StepNodes, **options)

    @odeplug.register
    def terms(policy: GQAdjoint, nfe: int, interval: float, span: float):
        return node_count(policy, nfe, interval, span)

    odeplug.export(GQAdjoint, GaussAdjoint)
    from . import _bench  # noqa: F401  (registers the `gq` and `spheres` bench tasks)
