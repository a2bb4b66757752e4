"""Conformance tests, parametrised over everything registered: a new plugin is tested the moment
it registers (rules against the Direct rule; solvers against matrix exponentials; norms as norms)."""

import attrs
import pytest
import torch

import odeplug as op
from odeplug import _plugins
from odeplug.bench import gradient_rules

f64 = torch.float64


def _exported_final(base):
    return sorted(
        (name, value) for name, value in _plugins.exported().items()
        if isinstance(value, type) and issubclass(value, base) and value.__dict__.get("_odeplug_final")
    )


RULES = sorted(gradient_rules().items())
ADAPTIVE = [(n, v) for n, v in _exported_final(op.Solver) if issubclass(v, op.AdaptiveRungeKutta)]
FIXED = [(n, v) for n, v in _exported_final(op.Solver) if issubclass(v, op.FixedStepRungeKutta)]
NORMS = _exported_final(op.Norm)


class Field(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(3, 3, generator=g, dtype=f64) * 0.5)
        self.b = torch.nn.Parameter(torch.randn(3, generator=g, dtype=f64) * 0.1)

    def forward(self, t, y):
        return torch.tanh(y @ self.w.T + self.b) * (1 + 0.1 * torch.sin(t))


def _gradients(rule, solver):
    field = Field()
    y0 = torch.tensor([[0.5, -0.2, 0.1], [0.1, 0.3, -0.4]], dtype=f64, requires_grad=True)
    ts = torch.tensor([0.0, 0.4, 1.0, 1.5], dtype=f64, requires_grad=True)
    sol = op.solve(op.ODEProblem(field, y0, ts), solver, rule)
    assert sol.ys.shape == (4, 2, 3)
    for key in ("nfe", "steps_accepted", "steps_rejected"):
        assert isinstance(sol.stats[key], int) and sol.stats[key] >= 0, key
    loss = (sol.ys**2).sum()
    grads = torch.autograd.grad(loss, [y0, ts, *field.parameters()])
    return sol, torch.cat([g.reshape(-1) for g in grads])


@pytest.mark.parametrize("name,rule", RULES, ids=[n for n, _ in RULES])
def test_every_rule_matches_direct(name, rule):
    solver = op.Dopri5(rtol=1e-10, atol=1e-10)
    sol, got = _gradients(rule, solver)
    _, expected = _gradients(op.Direct(), solver)
    assert torch.allclose(got, expected, rtol=1e-6, atol=1e-8), (name, got, expected)
    assert sol.stats["nfe"] > 0


@pytest.mark.parametrize("name,rule", RULES, ids=[n for n, _ in RULES])
def test_every_rule_works_with_a_fixed_step_solver(name, rule):
    if getattr(rule, "norm", None) is not None:  # a norm means nothing to a fixed-step solve
        rule = attrs.evolve(rule, norm=None)
    sol, got = _gradients(rule, op.RK4(dt=0.05))
    _, expected = _gradients(op.Direct(), op.RK4(dt=0.05))
    # Continuous adjoints differ from the discrete gradient by the discretisation error.
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("name,cls", ADAPTIVE + FIXED, ids=[n for n, _ in ADAPTIVE + FIXED])
def test_every_solver_solves_a_linear_system(name, cls):
    A = torch.tensor([[-0.5, 1.0], [-1.0, -0.2]], dtype=f64)
    y0 = torch.tensor([1.0, 0.5], dtype=f64)
    ts = torch.linspace(0, 2, 5, dtype=f64)
    solver = cls(rtol=1e-8, atol=1e-10) if (name, cls) in ADAPTIVE else cls(dt=1e-3)
    sol = op.solve(op.ODEProblem(lambda t, y: A @ y, y0, ts), solver)
    exact = torch.stack([torch.linalg.matrix_exp(A * t) @ y0 for t in ts])
    tolerance = 1e-6 if (name, cls) in ADAPTIVE else {1: 2e-3, 2: 1e-5}.get(cls.tableau.order, 1e-8)
    assert torch.allclose(sol.ys, exact, atol=tolerance), (name, (sol.ys - exact).abs().max())


@pytest.mark.parametrize("name,cls", NORMS, ids=[n for n, _ in NORMS])
def test_every_norm_is_a_zero_dimensional_tensor(name, cls):
    layout = op.Layout((op.Block("z", (3,)), op.Block("a", (2,), role="integral")))
    x = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0], dtype=f64)
    value = op.norm(cls(), x, layout)
    assert isinstance(value, torch.Tensor) and value.ndim == 0 and float(value) > 0
