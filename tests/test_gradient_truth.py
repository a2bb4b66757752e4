"""The gradient-truth matrix over every registered gradient rule (odeplug.testing's cases): a
rule gives Direct's gradients on every case, or refuses with an error naming a rule that can.
A rule is checked the moment it registers; the built-in rules' promises are pinned below."""

import pytest
import torch

import odeplug as op
import odeplug_adjoint._adjoint as adjoint
from odeplug import _dispatch
from odeplug.backward import BacksolveRule, Gradients, differentiate, forward_outputs
from odeplug.bench import gradient_rules
from odeplug.testing import check_gradient_case, gradient_cases

RULES = sorted(gradient_rules().items())
CASES = gradient_cases()

# What the built-in rules promise where a rule may refuse: (case outcome) -> rules that must
# give Direct's result. Every other built-in rule must refuse, with a clear error.
SUPPORTS = {"randomness": {"Direct", "ACA"}, "second": {"Direct", "ACA"}}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize("name,rule", RULES, ids=[n for n, _ in RULES])
def test_gradient_truth(name, rule, case):
    promised = type(rule).__name__ in SUPPORTS.get(case.outcome, ())
    outcome = check_gradient_case(rule, case, must_support=promised)
    if case.outcome in SUPPORTS:
        assert outcome == ("ok" if promised else "refused"), (name, case.name, outcome)


@op.configuration
class ExplicitParamsOnly(BacksolveRule):
    """A planted bug: the Adjoint rule's backward, but gradients only for ``params=``: what
    every rule but Direct returned for closures before the backward kit."""


def _forgetful_backward(tape, grad_ys, needs):
    grads = adjoint._backward(tape, grad_ys, needs)
    named = {id(p) for p in tape.problem.params}
    kept = tuple(g if id(p) in named else torch.zeros_like(p) for p, g in zip(tape.inputs, grads.inputs))
    return Gradients(grads.y0, grads.ts, kept)


def solve(problem: op.ODEProblem, solver: op.Solver, rule: ExplicitParamsOnly, **options):
    return differentiate(problem, solver, rule, forward_outputs, _forgetful_backward)


@pytest.fixture
def forgetful_rule():
    op.register(solve)
    yield ExplicitParamsOnly()
    _dispatch.unregister_for_tests("solve", (op.ODEProblem, op.Solver, ExplicitParamsOnly))


def test_the_matrix_catches_a_rule_that_drops_closures(forgetful_rule):
    closure = next(c for c in CASES if c.name == "closure over a leaf")
    with pytest.raises(AssertionError, match="closure over a leaf: gradient 2 differs"):
        check_gradient_case(forgetful_rule, closure)
    # ...while it is right where f's tensors are all named.
    explicit = next(c for c in CASES if c.name == "params=[w, w]")
    assert check_gradient_case(forgetful_rule, explicit) == "ok"
