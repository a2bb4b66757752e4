"""The adaptive checkpoint adjoint (ACA) gradient rule, as a plugin.

Zhuang, Dvornek, Li, Tatikonda, Papademetris & Duncan, "Adaptive Checkpoint Adjoint Method for
Gradient Estimation in Neural ODE", ICML 2020. ``ACA()`` gives the Direct rule's gradients
(discretise-then-optimise) with the memory of one step's graph plus one checkpoint per accepted
step; ``ACA(max_checkpoints=B)`` stores at most B checkpoints and recomputes between them.
Its bench task ``aca`` (memory and time against Direct and Adjoint, and ACA's floor: Direct's
step plus a graph-free forward solve, timed in the same rounds) lives in ``_bench``, which only
``odeplug bench`` imports (the ``odeplug.bench`` entry point ``aca``).
"""

from __future__ import annotations

import odeplug
from odeplug import ODEProblem, Solver

from ._aca import ACA, solve_aca

__all__ = ["ACA", "solve_aca", "register"]


def register() -> None:
    """The plugin's hook: ``solve(ODEProblem, Solver, ACA)`` and the name ``ACA``."""

    @odeplug.register
    def solve(problem: ODEProblem, solver: Solver, rule: ACA, **options):
        return solve_aca(problem, solver, rule, **options)

    odeplug.export(ACA)
