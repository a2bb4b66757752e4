"""The quadrature adjoints: :class:`GQAdjoint` (Norcliffe & Deisenroth, TMLR 2023) and the
per-step :class:`GaussAdjoint`. See ``_rules`` for the method and docs/methods/gq.md."""

from __future__ import annotations

import torch

import odeplug
from odeplug import ODEProblem, Solver

from ._adaptive import AdaptiveNodes, NodePolicy, PaperNodes, adaptive_count, paper_count
from ._rules import GaussAdjoint, GQAdjoint, QuadratureSum, StepNodes, gq_placement, solve_quadrature

__all__ = ["GQAdjoint", "GaussAdjoint", "NodePolicy", "AdaptiveNodes", "PaperNodes", "QuadratureSum",
           "register"]


def register() -> None:
    """The plugin's hook."""

    @odeplug.register
    def solve(problem: ODEProblem, solver: Solver, rule: GQAdjoint, **options):
        return solve_quadrature(problem, solver, rule, gq_placement, **options)

    @odeplug.register
    def solve(problem: ODEProblem, solver: Solver, rule: GaussAdjoint, **options):  # noqa: F811
        return solve_quadrature(problem, solver, rule, StepNodes, **options)

    @odeplug.register
    def terms(policy: PaperNodes, nfe: int, interval: float, span: float):  # noqa: F811
        return paper_count(policy, nfe, interval, span)

    @odeplug.register
    def terms(policy: AdaptiveNodes, errors: torch.Tensor):  # noqa: F811
        return adaptive_count(policy, errors)

    odeplug.export(GQAdjoint, GaussAdjoint, NodePolicy, AdaptiveNodes, PaperNodes)
