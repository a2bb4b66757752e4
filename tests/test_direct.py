"""The Direct rule: backpropagation through the solver.

Checked against things we did not write: float64 finite differences (``gradcheck``), the analytic
gradients of dz/dt = az, L = z(T)², and torchdiffeq's own backpropagation through dopri5. The
graph is inspected with a hand-written autograd Function that counts its backward calls and
tracks which of its graph nodes are still alive.
"""

from __future__ import annotations

import gc
import math
import weakref

import pytest
import torch
import torchdiffeq
from hypothesis import given
from hypothesis import strategies as st
from torchdiffeq._impl.misc import _mixed_norm, _rms_norm

import odeplug as op

from odeplug.testing.strategies import MLPField, TupleMLPField

F64 = torch.float64


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


# ---------------------------------------------------------------------------------------------
# float64 finite differences with a fixed-step solver
# ---------------------------------------------------------------------------------------------
# central differences with eps = 1e-6 in float64 are good to ~1e-10 here: tighter than
# gradcheck's defaults (atol 1e-5, rtol 1e-3), which would hide O(dt^p) gradient errors
TIGHT = dict(eps=1e-6, atol=1e-8, rtol=1e-6)


def _field_with_params(w: torch.Tensor):
    def f(t, y, theta):
        return torch.tanh(y @ w.T + theta * t) - 0.3 * y

    return f


def _solve_fixed(y0, theta, ts, w, solver):
    f = _field_with_params(w)
    problem = op.ODEProblem(lambda t, y: f(t, y, theta), y0, ts, params=[theta])
    return op.solve(problem, solver, op.Direct()).ys


@pytest.mark.parametrize("solver", [op.Euler(dt=0.13), op.Midpoint(dt=0.1), op.RK4(dt=0.07)],
                         ids=lambda s: type(s).__name__)
def test_gradcheck_y0_theta_interior_times(solver):
    """dys/dy0, dys/dθ and dys/d(interior output times) equal float64 finite differences."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(3, 3, generator=g, dtype=F64) * 0.7
    y0 = torch.randn(2, 3, generator=g, dtype=F64, requires_grad=True)
    theta = torch.randn(3, generator=g, dtype=F64, requires_grad=True)
    t0 = torch.tensor(0.05, dtype=F64)
    t_end = torch.tensor(1.31, dtype=F64)
    # interior output times, away from the step grid (the outputs are piecewise polynomial in t)
    interior = torch.tensor([0.331, 0.77, 1.003], dtype=F64, requires_grad=True)

    def fn(y0, theta, interior):
        ts = torch.cat([t0.reshape(1), interior, t_end.reshape(1)])
        return _solve_fixed(y0, theta, ts, w, solver)

    assert torch.autograd.gradcheck(fn, (y0, theta, interior), **TIGHT)


def test_gradcheck_tuple_state():
    g = torch.Generator().manual_seed(4)
    field = TupleMLPField((2, 1), 6, seed=7)
    a = torch.randn(2, 2, generator=g, dtype=F64, requires_grad=True)
    b = torch.randn(2, 1, generator=g, dtype=F64, requires_grad=True)
    ts = torch.tensor([0.0, 0.45, 1.1], dtype=F64)
    params = list(field.parameters())

    def fn(a, b, *params):
        return op.solve(op.ODEProblem(field, (a, b), ts), op.RK4(dt=0.1), op.Direct()).ys

    assert torch.autograd.gradcheck(fn, (a, b, params[0], params[-1]), **TIGHT)


@pytest.mark.parametrize("which", ["t0", "t_end"])
@pytest.mark.parametrize("solver", [
    pytest.param(op.Euler(dt=0.1), id="Euler"),
    pytest.param(op.Midpoint(dt=0.1), id="Midpoint"),
    pytest.param(op.RK4(dt=0.1), id="RK4"),
])
def test_gradcheck_end_times_fixed_step(solver, which):
    """dys/dt0 and dys/dt_end: the last, shortened step depends on both, and that dependence is
    differentiated (otherwise the error is O(dt^p): 1.5e-2 for Euler at dt = 0.1)."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(3, 3, generator=g, dtype=F64) * 0.7
    y0 = torch.randn(2, 3, generator=g, dtype=F64)
    theta = torch.randn(3, generator=g, dtype=F64)
    times = {"t0": torch.tensor(0.05, dtype=F64), "t_end": torch.tensor(1.27, dtype=F64)}
    mid = torch.tensor([0.53], dtype=F64)

    def fn(x):
        t = dict(times, **{which: x})
        ts = torch.cat([t["t0"].reshape(1), mid, t["t_end"].reshape(1)])
        return _solve_fixed(y0, theta, ts, w, solver)

    assert torch.autograd.gradcheck(fn, (times[which].clone().requires_grad_(),), **TIGHT)


def test_tuple_state_equals_concatenated_state():
    """A tuple state and the same state as one tensor give the same outputs and gradients
    (fixed steps, so the step sequence cannot differ)."""
    field = TupleMLPField((2, 3), 8, seed=11)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 2, generator=g, dtype=F64, requires_grad=True)
    b = torch.randn(4, 3, generator=g, dtype=F64, requires_grad=True)
    ts = torch.tensor([0.0, 0.3, 0.9, 1.4], dtype=F64)
    sol = op.solve(op.ODEProblem(field, (a, b), ts), op.RK4(dt=0.05), op.Direct())
    assert isinstance(sol.ys, tuple) and sol.ys[0].shape == (4, 4, 2) and sol.ys[1].shape == (4, 4, 3)
    loss = (sol.ys[0] ** 2).sum() + sol.ys[1].sin().sum()
    grads = torch.autograd.grad(loss, [a, b, *field.parameters()])

    y = torch.cat([a, b], -1).detach().requires_grad_()
    sol_cat = op.solve(op.ODEProblem(field.inner, y, ts), op.RK4(dt=0.05), op.Direct())
    ya, yb = sol_cat.ys.split([2, 3], -1)
    loss_cat = (ya**2).sum() + yb.sin().sum()
    grads_cat = torch.autograd.grad(loss_cat, [y, *field.inner.parameters()])

    assert _rel(sol.ys[0], ya) < 1e-13 and _rel(sol.ys[1], yb) < 1e-13
    assert _rel(torch.cat(grads[:2], -1), grads_cat[0]) < 1e-12
    for ours, theirs in zip(grads[2:], grads_cat[1:]):
        assert _rel(ours, theirs) < 1e-12


# ---------------------------------------------------------------------------------------------
# the analytic problem dz/dt = a z, L = z(t1)²
# ---------------------------------------------------------------------------------------------
class _Growth(torch.nn.Module):
    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(a, dtype=F64))

    def forward(self, t, z):
        return self.a * z


@pytest.mark.parametrize("tol", [1e-5, 1e-7, 1e-9])
@pytest.mark.parametrize("times", [(0.0, 24.0), (2.0, 24.0), (24.0, 0.0)], ids=str)
def test_analytic_gradients_dopri5(times, tol):
    """z0 = 10, a = 0.2: with τ = t1 − t0, L = z0² e^{2aτ}, so dL/dz0 = 2 z0 e^{2aτ},
    dL/da = 2 τ z0² e^{2aτ}, dL/dt1 = 2 a z0² e^{2aτ} = −dL/dt0 (the issue's figures at t0 = 0).

    Bounds: y0 and θ gradients come from the solution (error ~ tol); time gradients come from
    the derivative of the order-4 dense output at the output time (error ~ h⁴ ~ tol^(4/5))."""
    z0v, a, (t0v, t1v) = 10.0, 0.2, times
    field = _Growth(a)
    z0 = torch.tensor(z0v, dtype=F64, requires_grad=True)
    t0 = torch.tensor(t0v, dtype=F64, requires_grad=True)
    t1 = torch.tensor(t1v, dtype=F64, requires_grad=True)
    sol = op.solve(op.ODEProblem(field, z0, torch.stack([t0, t1])), op.Dopri5(rtol=tol, atol=tol),
                   op.Direct())
    (sol.ys[-1] ** 2).backward()

    tau = t1v - t0v
    e = math.exp(2 * a * tau)
    exact = {"z0": 2 * z0v * e, "a": 2 * tau * z0v**2 * e, "t1": 2 * a * z0v**2 * e,
             "t0": -2 * a * z0v**2 * e}
    got = {"z0": z0.grad, "a": field.a.grad, "t1": t1.grad, "t0": t0.grad}
    bound = {"z0": 20 * tol, "a": 20 * tol, "t1": 20 * tol**0.8, "t0": 20 * tol**0.8}
    for key in exact:
        rel = abs(float(got[key]) - exact[key]) / abs(exact[key])
        assert rel < bound[key], (key, float(got[key]), exact[key], rel)


def test_analytic_gradient_error_shrinks_with_tolerance():
    errors = []
    for tol in (1e-4, 1e-7, 1e-10):
        field = _Growth(0.2)
        z0 = torch.tensor(10.0, dtype=F64, requires_grad=True)
        ts = torch.tensor([0.0, 24.0], dtype=F64)
        sol = op.solve(op.ODEProblem(field, z0, ts), op.Dopri5(rtol=tol, atol=tol), op.Direct())
        (sol.ys[-1] ** 2).backward()
        errors.append(abs(float(z0.grad) - 20 * math.exp(9.6)) / (20 * math.exp(9.6)))
    assert errors[0] > errors[1] > errors[2]


# ---------------------------------------------------------------------------------------------
# torchdiffeq's backpropagation through dopri5
# ---------------------------------------------------------------------------------------------
def _detached(norm):
    """torchdiffeq differentiates its step sizes (its error ratio carries a graph); odeplug's
    Direct treats them as constants, as the issue specifies. A norm that detaches its input makes
    torchdiffeq do the same, with the same steps."""
    return lambda x: norm(tuple(t.detach() for t in x) if isinstance(x, tuple) else x.detach())


@given(
    seed=st.integers(0, 10_000),
    tol=st.sampled_from([1e-3, 1e-5, 1e-7]),
    use_tuple=st.booleans(),
    decreasing=st.booleans(),
)
def test_gradients_equal_torchdiffeq_backprop(seed, tol, use_tuple, decreasing):
    g = torch.Generator().manual_seed(seed)
    if use_tuple:
        field = TupleMLPField((2, 2), 8, seed)
        y0 = tuple(torch.randn(3, 2, generator=g, dtype=F64, requires_grad=True) for _ in range(2))
        inputs, norm = list(y0), _mixed_norm
    else:
        field = MLPField(3, 8, seed, scale=2.0)
        y0 = torch.randn(3, 3, generator=g, dtype=F64, requires_grad=True)
        inputs, norm = [y0], _rms_norm
    ts = torch.tensor([0.0, 0.7, 1.6, 2.5], dtype=F64)
    if decreasing:
        ts = ts.flip(0)
    ts.requires_grad_()
    params = list(field.parameters())

    sol = op.solve(op.ODEProblem(field, y0, ts), op.Dopri5(rtol=tol, atol=tol), op.Direct())
    ref = torchdiffeq.odeint(field, y0, ts, rtol=tol, atol=tol, method="dopri5",
                             options=dict(norm=_detached(norm)))
    ours = sol.ys if use_tuple else (sol.ys,)
    theirs = ref if use_tuple else (ref,)
    weights = [torch.randn(o.shape, generator=g, dtype=F64) for o in ours]
    wrt = [*inputs, ts, *params]
    grads = torch.autograd.grad(sum((w * o).sum() for w, o in zip(weights, ours)), wrt)
    grads_ref = torch.autograd.grad(sum((w * o).sum() for w, o in zip(weights, theirs)), wrt)
    for o, r in zip(ours, theirs):
        assert _rel(o, r) < 1e-10
    for name, a, b in zip(["y0"] * len(inputs) + ["ts"] + ["param"] * len(params), grads, grads_ref):
        assert _rel(a, b) < 1e-10, (name, a, b)


# ---------------------------------------------------------------------------------------------
# the graph holds accepted steps only
# ---------------------------------------------------------------------------------------------
class _Token:
    pass


class _TrackedLinear(torch.autograd.Function):
    """y ↦ y Wᵀ, whose graph nodes can be watched: each forward call leaves a token on its ctx
    (alive exactly as long as the node is), each backward call is counted."""

    created: list[weakref.ref] = []
    backward_calls = 0

    @staticmethod
    def forward(ctx, y, w):
        ctx.save_for_backward(y, w)
        ctx.token = _Token()
        _TrackedLinear.created.append(weakref.ref(ctx.token))
        return y @ w.T

    @staticmethod
    def backward(ctx, grad):
        _TrackedLinear.backward_calls += 1
        y, w = ctx.saved_tensors
        return grad @ w, grad.T @ y if grad.ndim > 1 else torch.outer(grad, y)


class _TrackedField(torch.nn.Module):
    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(w)

    def forward(self, t, y):
        return _TrackedLinear.apply(y, self.w)


def test_graph_holds_accepted_steps_only():
    """A solve with rejected steps keeps alive exactly the graph nodes of f used by accepted
    steps (for Dopri5, FSAL: the first f0 plus 6 new stages per accepted step), and backward
    evaluates exactly those VJPs."""
    _TrackedLinear.created.clear()
    _TrackedLinear.backward_calls = 0
    g = torch.Generator().manual_seed(0)
    # eigenvalues spread over two orders of magnitude: a step that suits the slow modes is
    # rejected by the fast one
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=F64))
    w = q @ torch.diag(torch.tensor([-0.1, -1.0, -8.0, -30.0], dtype=F64)) @ q.T
    field = _TrackedField(w)
    y0 = torch.randn(2, 4, generator=g, dtype=F64, requires_grad=True)
    ts = torch.tensor([0.0, 0.5, 3.0], dtype=F64)
    sol = op.solve(op.ODEProblem(field, y0, ts), op.Dopri5(rtol=1e-4, atol=1e-6), op.Direct())
    stats = sol.stats
    assert stats.steps_rejected >= 1, "the problem must exercise rejections"

    gc.collect()
    created = len(_TrackedLinear.created)
    alive = sum(ref() is not None for ref in _TrackedLinear.created)
    expected = 1 + 6 * stats.steps_accepted
    # every evaluation went through f (the Hairer probe runs without a graph)
    assert created == stats.nfe
    assert alive == expected, (alive, expected, dict(stats))

    (sol.ys**2).sum().backward()
    assert _TrackedLinear.backward_calls == expected
    assert y0.grad is not None and field.w.grad is not None

    del sol
    gc.collect()
    assert sum(ref() is not None for ref in _TrackedLinear.created) == 0
