"""The docs' code runs as written: the gradient rule of docs/plugins.md, built on the backward
kit, passes the gradient-truth matrix where a backsolve rule must."""

import pathlib
import re

import pytest
import torch

import odeplug as op
from odeplug import _dispatch, _plugins
from odeplug.testing import check_gradient_case, gradient_cases

DOCS = pathlib.Path(__file__).parent.parent / "docs"


def _python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)


@pytest.fixture(scope="module")
def checkpointed_adjoint():
    code = next(b for b in _python_blocks("plugins.md") if "class CheckpointedAdjoint" in b)
    namespace: dict = {}
    exec(compile(code, "docs/plugins.md", "exec"), namespace)  # noqa: S102
    namespace["register"]()
    rule = namespace["CheckpointedAdjoint"]
    yield rule
    _dispatch.unregister_for_tests("solve", (op.ODEProblem, op.Solver, rule))
    _plugins.unexport_for_tests("CheckpointedAdjoint")


CASES = {c.name: c for c in gradient_cases()}


@pytest.mark.parametrize("case", ["closure over softplus(raw)", "contracting field, 24 time constants",
                                  "tuple state", "decreasing times", "Dropout in f",
                                  "parameter changed in place"])
def test_the_docs_gradient_rule_passes_the_matrix(checkpointed_adjoint, case):
    outcome = check_gradient_case(checkpointed_adjoint(every=3), CASES[case])
    assert outcome == ("refused" if CASES[case].outcome != "gradients" else "ok")


def test_the_docs_gradient_rule_resets_at_its_checkpoints(checkpointed_adjoint):
    """Its checkpoints are stops of the backward solve: each costs one evaluation (the reset)."""
    f = lambda t, y: -torch.sin(y) + torch.cos(t)  # noqa: E731
    y0 = torch.tensor([0.3, -1.0], dtype=torch.float64, requires_grad=True)
    ts = torch.tensor([0.0, 3.0], dtype=torch.float64)
    costs = {}
    for every in (1000, 2):
        sol = op.solve(op.ODEProblem(f, y0, ts), op.Dopri5(rtol=1e-8, atol=1e-8),
                       checkpointed_adjoint(every=every))
        sol.ys.sum().backward()
        costs[every] = sol.stats
    stops = costs[1000]["steps_accepted"] // 2  # kept ends strictly before the last output
    assert costs[2]["nfe_backward"] >= costs[1000]["nfe_backward"] + stops - 1
