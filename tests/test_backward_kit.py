"""The core's backward kit (odeplug.backward): what f depends on, the autograd shell's checks,
and the reset of z in the backsolve."""

import functools
import pytest
import torch

import odeplug as op
from odeplug.backward import field_inputs

F64 = torch.float64


def _ids(tensors):
    return [id(t) for t in tensors]


def test_field_inputs_finds_closures_attributes_and_derived_tensors():
    w = torch.randn(3, 3, dtype=F64, requires_grad=True)
    raw = torch.randn(3, dtype=F64, requires_grad=True)
    rate = torch.nn.functional.softplus(raw)
    constant = torch.randn(3, dtype=F64)  # requires no grad: not an input

    def f(t, y):
        return torch.tanh(y @ w.T) * rate + constant

    y0 = torch.randn(3, dtype=F64)
    found = field_inputs(op.VectorField(f), torch.tensor(0.0, dtype=F64), y0)
    assert _ids(found.tensors) == [id(w), id(rate)]
    assert torch.equal(found.value, f(0.0, y0)) and not found.uses_rng
    # raw named explicitly next to rate = softplus(raw) would count its gradient twice: dropped;
    # an explicit tensor f does not read through another is kept, each tensor once.
    other = torch.zeros(2, requires_grad=True)
    found = field_inputs(op.VectorField(f), torch.tensor(0.0, dtype=F64), y0, (raw, other, w, w))
    assert _ids(found.tensors) == [id(w), id(rate), id(other)]


def test_field_inputs_sees_randomness():
    drop = torch.nn.Dropout(0.5)
    found = field_inputs(op.VectorField(lambda t, y: drop(y)), torch.tensor(0.0), torch.ones(4))
    assert found.uses_rng
    drop.eval()
    assert not field_inputs(op.VectorField(lambda t, y: drop(y)), torch.tensor(0.0), torch.ones(4)).uses_rng


def test_the_discovery_evaluation_is_the_forwards_first():
    """Finding the inputs costs no evaluation: it primes the forward's first stage."""
    field = torch.nn.Linear(2, 2, dtype=F64)
    y0 = torch.randn(2, dtype=F64, requires_grad=True)
    ts = torch.linspace(0, 1, 3, dtype=F64)
    nfe = {type(rule).__name__: op.solve(op.ODEProblem(lambda t, y: field(y), y0, ts), op.Dopri5(), rule).stats["nfe"]
           for rule in (op.Direct(), op.Adjoint(), op.GQAdjoint())}
    assert len(set(nfe.values())) == 1, nfe


def test_params_must_be_a_sequence():
    w = torch.ones(2, requires_grad=True)
    with pytest.raises(op.InvalidArgumentError, match=r"params=\[w\]"):
        op.ODEProblem(lambda t, y: w * y, torch.ones(2), torch.tensor([0.0, 1.0]), params=w)
    problem = op.ODEProblem(lambda t, y: w * y, torch.ones(2), torch.tensor([0.0, 1.0]), params=[w, w])
    assert len(problem.params) == 1


@pytest.mark.parametrize("rule", [op.Adjoint(), op.GQAdjoint(), op.GaussAdjoint()], ids=lambda r: type(r).__name__)
def test_backsolve_rules_refuse_second_derivatives_naming_the_rules_that_can(rule):
    a = torch.tensor(0.3, dtype=F64, requires_grad=True)
    sol = op.solve(op.ODEProblem(lambda t, z: a * z, torch.ones(1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)),
                   op.Dopri5(), rule)
    with pytest.raises(op.UnsupportedCombinationError, match=r"second derivatives.*Direct\(\) or ACA\(\)"):
        torch.autograd.grad(sol.ys[-1].sum(), a, create_graph=True)


@pytest.mark.parametrize("rule", [op.Adjoint(), op.GQAdjoint()], ids=lambda r: type(r).__name__)
def test_backsolve_rules_refuse_randomness_in_f(rule):
    net = torch.nn.Sequential(torch.nn.Linear(2, 4, dtype=F64), torch.nn.Dropout(0.2), torch.nn.Linear(4, 2, dtype=F64))
    problem = op.ODEProblem(lambda t, y: net(y), torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64))
    solver = op.RK4(dt=0.1)  # with new masks at every evaluation, error control never settles
    with pytest.raises(op.UnsupportedCombinationError, match=r"random numbers.*ACA\(\).*Direct\(\).*model.eval\(\)"):
        op.solve(problem, solver, rule)
    net.eval()
    op.solve(problem, solver, rule).ys.sum().backward()  # deterministic now: fine
    with torch.no_grad():  # nothing to differentiate: randomness is fine too
        net.train()
        op.solve(problem, solver, rule)


def test_an_in_place_change_before_backward_names_the_cause():
    net = torch.nn.Linear(2, 2, dtype=F64)
    sol = op.solve(op.ODEProblem(lambda t, y: net(y), torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)),
                   op.Dopri5(), op.Adjoint())
    with torch.no_grad():
        net.weight.mul_(2)
    with pytest.raises(op.SolveError, match="changed in place.*optimizer.step"):
        sol.ys.sum().backward()


class _Normed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(3, dtype=F64)
        self.lin = torch.nn.Linear(3, 3, dtype=F64)

    def forward(self, t, y):
        return self.lin(self.norm(y)) - y


@pytest.mark.parametrize("closure", [False, True], ids=["module", "closure over a module"])
@pytest.mark.parametrize("rule", [op.Adjoint(), op.GQAdjoint(), op.ACA()], ids=lambda r: type(r).__name__)
def test_backward_leaves_batchnorm_statistics_as_the_forward_left_them(rule, closure):
    net = _Normed()
    field = (lambda t, y: net(t, y)) if closure else net
    sol = op.solve(op.ODEProblem(field, torch.randn(5, 3, dtype=F64), torch.tensor([0.0, 0.5], dtype=F64)),
                   op.Dopri5(rtol=1e-3, atol=1e-3), rule)
    after_forward = net.norm.running_mean.clone(), int(net.norm.num_batches_tracked)
    sol.ys.pow(2).sum().backward()
    assert torch.equal(net.norm.running_mean, after_forward[0])
    assert int(net.norm.num_batches_tracked) == after_forward[1] == sol.stats["nfe"]
    assert net.lin.weight.grad is not None


def test_backsolve_resets_z_at_output_times():
    """With many output times on a contracting field, the reset keeps the backward z on the
    forward trajectory: the gradient matches Direct's to the tolerance."""
    theta = torch.tensor(0.9, dtype=F64, requires_grad=True)

    def f(t, z):
        return -4 * z + torch.sin(theta * z) + torch.cos(t)

    y0 = torch.tensor([1.5, -2.0], dtype=F64, requires_grad=True)
    ts = torch.linspace(0, 6, 4, dtype=F64)
    grads = {}
    for rule in (op.Direct(), op.Adjoint()):
        sol = op.solve(op.ODEProblem(f, y0, ts), op.Dopri5(rtol=1e-8, atol=1e-8), rule)
        grads[type(rule).__name__] = torch.autograd.grad(sol.ys.pow(2).sum(), [y0, theta])
    for mine, direct in zip(grads["Adjoint"], grads["Direct"]):
        assert torch.allclose(mine, direct, rtol=1e-5, atol=1e-7), (mine, direct)


_GLOBAL_WEIGHT = torch.ones(2, dtype=torch.float64, requires_grad=True)


def test_held_tensors_finds_what_f_holds_but_one_evaluation_may_not_read():
    from odeplug._inputs import held_tensors

    cell = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    untracked = torch.zeros(2, dtype=torch.float64)
    derived = torch.nn.functional.softplus(cell)

    def closure(t, y):
        return (cell if t > 1 else derived) * y + untracked

    def global_reader(t, y):
        return _GLOBAL_WEIGHT * y

    module = torch.nn.Linear(2, 2, dtype=torch.float64)
    module.extra = torch.ones(2, dtype=torch.float64, requires_grad=True)
    found = {id(t) for t in held_tensors(closure)}
    assert found == {id(cell), id(derived)}
    assert [id(t) for t in held_tensors(global_reader)] == [id(_GLOBAL_WEIGHT)]
    assert {id(t) for t in held_tensors(module.forward)} == {
        id(module.weight), id(module.bias), id(module.extra)}
    assert {id(t) for t in held_tensors(functools.partial(closure, torch.tensor(0.0)))} == found
