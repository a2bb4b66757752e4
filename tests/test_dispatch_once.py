"""Dispatch happens once per solve, never per step: the number of dispatched calls of a whole
training step (forward and backward) does not grow with the number of steps the solver takes,
for every registered gradient rule, with the seminorm too."""

import pytest
import torch

import odeplug as op
from odeplug import _dispatch, _verbs
from odeplug.bench import gradient_rules

RULES = sorted(gradient_rules().items())


def dispatched_calls(monkeypatch, rule, rtol):
    calls = [0]

    class Counting:  # the verb, its dispatched calls counted (resolving once is not a call)
        def __init__(self, verb):
            self.verb = verb

        def __call__(self, *args, **kwargs):
            calls[0] += 1
            return self.verb(*args, **kwargs)

        def __getattr__(self, name):
            return getattr(self.verb, name)

    w = torch.tensor([[-0.3, 1.0], [-1.0, -0.2]], dtype=torch.float64, requires_grad=True)
    problem = op.ODEProblem(lambda t, y: torch.tanh(y @ w), torch.tensor([[1.0, 0.5]], dtype=torch.float64),
                            torch.linspace(0.0, 4.0, 3, dtype=torch.float64))
    with monkeypatch.context() as patch:
        # Every verb as plugins and the core call it (odeplug.norm(...), _verbs.norm(...)).
        for name, verb in _dispatch._VERBS.items():
            for module in (op, _verbs):
                if getattr(module, name, None) is verb:
                    patch.setattr(module, name, Counting(verb))
        sol = op.solve(problem, op.Dopri5(rtol=rtol, atol=rtol * 1e-2), rule)
        sol.ys.pow(2).sum().backward()
    return calls[0], sol.stats


@pytest.mark.parametrize("name,rule", RULES, ids=[n for n, _ in RULES])
def test_dispatched_calls_do_not_grow_with_the_steps(monkeypatch, name, rule):
    for rtol in (1e-3, 1e-9):  # first solves fill caches (quadrature tables), whatever their size
        dispatched_calls(monkeypatch, rule, rtol)
    coarse, coarse_stats = dispatched_calls(monkeypatch, rule, 1e-3)
    fine, fine_stats = dispatched_calls(monkeypatch, rule, 1e-9)
    assert fine_stats.steps_accepted > 4 * coarse_stats.steps_accepted  # the premise: many more steps
    assert fine == coarse, f"{name}: {coarse} dispatched calls at rtol 1e-3, {fine} at 1e-9"
