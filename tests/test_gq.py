"""The quadrature adjoints (issue 4): quadrature exactness, analytic gradients, convergence in C,
tuple states and decreasing times, and memory that does not grow with the tolerance."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import odeplug as op
from odeplug import _dispatch
from odeplug._memory import AllocatedBytes
from strategies import Linear, MLPField, TupleMLPField

f64 = torch.float64


@given(n=st.integers(1, 64), data=st.data())
def test_gauss_legendre_is_exact_for_degree_up_to_2n_minus_1(n, data):
    degree = data.draw(st.integers(0, 2 * n - 1))
    coefficients = data.draw(st.lists(st.floats(-1, 1), min_size=degree + 1, max_size=degree + 1))
    a = data.draw(st.floats(-3, 3))
    b = a + data.draw(st.floats(0.1, 3)) * data.draw(st.sampled_from([-1, 1]))
    nodes, weights = op.quadrature(op.GaussLegendre(), n)
    x = (a + b) / 2 + (b - a) / 2 * nodes.numpy()
    approx = float(((b - a) / 2 * weights.numpy() * np.polyval(coefficients, x)).sum())
    antiderivative = np.polyint(coefficients)
    exact = float(np.polyval(antiderivative, b) - np.polyval(antiderivative, a))
    scale = sum(abs(c) for c in coefficients) * max(abs(a), abs(b), 1) ** (degree + 1) * abs(b - a)
    assert abs(approx - exact) <= 1e-12 * max(scale, 1.0)


@given(n=st.integers(1, 128))
def test_gauss_legendre_weights_sum_to_two_and_nodes_are_symmetric(n):
    nodes, weights = op.quadrature(op.GaussLegendre(), n)
    assert nodes.dtype == f64 and len(nodes) == n
    assert abs(float(weights.sum()) - 2.0) < 1e-13
    assert torch.allclose(nodes, -nodes.flip(0), atol=1e-14)
    assert torch.allclose(weights, weights.flip(0), atol=1e-14)
    assert bool((weights > 0).all())


def analytic_errors(T, rule):
    f = Linear()
    z0 = torch.tensor([10.0], dtype=f64, requires_grad=True)
    ts = torch.tensor([0.0, T], dtype=f64, requires_grad=True)
    sol = op.solve(op.ODEProblem(f, z0, ts), op.Dopri5(rtol=1e-8, atol=1e-8), rule)
    (sol.ys[-1] ** 2).sum().backward()
    zT2 = 100 * math.exp(0.4 * T)
    exact = (20 * math.exp(0.4 * T), 2 * T * zT2, 0.4 * zT2, -0.4 * zT2)
    got = (z0.grad.item(), f.a.grad.item(), ts.grad[-1].item(), ts.grad[0].item())
    return [abs(g - e) / abs(e) for g, e in zip(got, exact)]


@pytest.mark.parametrize("T", [19.0, 24.0, 29.0])
def test_analytic_gradients_against_adjoint(T):
    adjoint = analytic_errors(T, op.Adjoint())
    gq = analytic_errors(T, op.GQAdjoint())
    gauss = analytic_errors(T, op.GaussAdjoint())
    for a, q, g in zip(adjoint, gq, gauss):
        assert q <= 10 * a + 1e-15, (gq, adjoint)
        assert g <= 2 * a + 1e-15, (gauss, adjoint)


def _mlp_grads(rule, ts, tuple_state=False, tol=1e-10):
    if tuple_state:
        field = TupleMLPField((2, 1), 12, seed=4)
        y0 = (torch.randn(3, 2, dtype=f64, generator=torch.Generator().manual_seed(0)).requires_grad_(),
              torch.randn(3, 1, dtype=f64, generator=torch.Generator().manual_seed(1)).requires_grad_())
        leaves = list(y0)
    else:
        field = MLPField(3, 12, seed=4)
        y0 = torch.randn(3, 3, dtype=f64, generator=torch.Generator().manual_seed(0)).requires_grad_()
        leaves = [y0]
    ts = ts.clone().requires_grad_(True)
    sol = op.solve(op.ODEProblem(field, y0, ts), op.Dopri5(rtol=tol, atol=tol), rule)
    ys = sol.ys if isinstance(sol.ys, tuple) else (sol.ys,)
    loss = sum((torch.linspace(1, 2, len(ts), dtype=f64).view(-1, 1, 1) * torch.sin(y)).sum() for y in ys)
    grads = torch.autograd.grad(loss, leaves + list(field.parameters()) + [ts])
    n_y = len(leaves)
    flat = lambda gs: torch.cat([g.reshape(-1) for g in gs])  # noqa: E731
    return flat(grads[:n_y]), flat(grads[n_y:-1]), grads[-1], sol.stats


def test_gq_parameter_gradient_converges_to_the_adjoints_as_C_grows():
    ts = torch.tensor([0.0, 0.7, 1.6, 3.0], dtype=f64)
    _, reference, _, _ = _mlp_grads(op.Adjoint(), ts, tol=1e-12)
    errors = []
    for C in (0.001, 0.003, 0.01, 0.03, 0.1, 1.0, 100.0):
        y0g, params, tg, stats = _mlp_grads(op.GQAdjoint(C=C), ts, tol=1e-12)
        errors.append(float((params - reference).norm() / reference.norm()))
    # Non-increasing down to the round-off floor of the two backward solves.
    assert all(b <= a * 1.0001 + 1e-11 for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] <= 1e-6, errors
    assert errors[0] > errors[-1], errors


@pytest.mark.parametrize("rule", [op.GQAdjoint(C=10.0), op.GaussAdjoint()], ids=["GQ", "Gauss"])
@pytest.mark.parametrize("decreasing", [False, True])
@pytest.mark.parametrize("tuple_state", [False, True])
def test_all_gradients_agree_with_adjoint(rule, decreasing, tuple_state):
    ts = torch.tensor([0.0, 0.5, 1.1, 2.0], dtype=f64)
    if decreasing:
        ts = ts.flip(0)
    expected = _mlp_grads(op.Adjoint(), ts, tuple_state)
    got = _mlp_grads(rule, ts, tuple_state)
    for e, g in zip(expected[:3], got[:3]):
        assert torch.allclose(g, e, rtol=1e-6, atol=1e-8), (g, e)
    stats = got[3]
    assert stats["vjp_backward"] == sum(stats["quadrature_nodes"]) > 0
    assert len(stats["quadrature_nodes"]) == len(ts) - 1


def test_node_count_follows_the_papers_rule():
    ts = torch.tensor([0.0, 1.0, 3.0], dtype=f64)
    field = MLPField(2, 8, seed=1)
    y0 = torch.randn(2, 2, dtype=f64, requires_grad=True)
    rule = op.GQAdjoint(C=0.5, max_terms=7)
    sol = op.solve(op.ODEProblem(field, y0, ts), op.Dopri5(rtol=1e-6, atol=1e-6), rule)
    sol.ys.sum().backward()
    nfe = sol.stats["nfe"]
    expected = [min(max(math.ceil(0.5 * nfe * d / 3.0), 1), 7) for d in (1.0, 2.0)]
    assert sol.stats["quadrature_nodes"] == expected


def _peak_bytes(rule, tol):
    field = MLPField(4, 64, seed=2)
    y0 = torch.randn(16, 4, dtype=f64, generator=torch.Generator().manual_seed(3)).requires_grad_()
    ts = torch.linspace(0, 4, 5, dtype=f64)
    with AllocatedBytes() as meter:
        sol = op.solve(op.ODEProblem(field, y0, ts), op.Dopri5(rtol=tol, atol=tol), rule)
        sol.ys.pow(2).sum().backward()
    return meter.peak, sol.stats


def test_memory_does_not_grow_with_tolerance_but_directs_does():
    gq_loose, loose_stats = _peak_bytes(op.GQAdjoint(), 1e-3)
    gq_tight, tight_stats = _peak_bytes(op.GQAdjoint(), 1e-7)
    assert tight_stats["nfe"] > 3 * loose_stats["nfe"]  # the tight solve really does more work
    # Constant, up to one backward step's stage buffer (7 stages of [z, a_z]) that a rejected
    # attempt keeps in flight at the tighter tolerance; it does not grow with the step count.
    one_step_buffer = 7 * 2 * 16 * 4 * 8
    assert gq_tight <= gq_loose + one_step_buffer, (gq_loose, gq_tight)
    gq_tighter, tighter_stats = _peak_bytes(op.GQAdjoint(), 1e-9)
    assert tighter_stats["nfe"] > 2 * tight_stats["nfe"]
    assert gq_tighter <= gq_tight * 1.01, (gq_tight, gq_tighter)
    direct_loose, _ = _peak_bytes(op.Direct(), 1e-3)
    direct_tight, _ = _peak_bytes(op.Direct(), 1e-7)
    assert direct_tight > 2 * direct_loose, (direct_loose, direct_tight)


class ClenshawCurtis(op.Quadrature):
    """A user-registered quadrature (the docs' example): Clenshaw–Curtis nodes."""


def test_a_user_quadrature_trains():
    def quadrature(rule: ClenshawCurtis, n: int):
        if n == 1:
            return torch.zeros(1, dtype=f64), torch.full((1,), 2.0, dtype=f64)
        nodes = np.cos(np.pi * np.arange(n) / (n - 1))[::-1].copy()  # Chebyshev extrema
        # Weights from the moment equations ∫x^i = Σ w_j x_j^i (exact for degree ≤ n−1).
        moments = np.array([(1 - (-1) ** (i + 1)) / (i + 1) for i in range(n)])
        vander = np.vander(nodes, n, increasing=True).T
        weights = np.linalg.solve(vander, moments)
        return torch.from_numpy(nodes), torch.from_numpy(weights)

    op.register(quadrature)
    try:
        nodes, weights = op.quadrature(ClenshawCurtis(), 9)
        assert abs(float(weights.sum()) - 2) < 1e-12
        field = MLPField(2, 8, seed=9)
        y0 = torch.randn(5, 2, dtype=f64, generator=torch.Generator().manual_seed(0))
        target = torch.zeros(5, 2, dtype=f64)
        ts = torch.linspace(0, 1, 3, dtype=f64)
        optimiser = torch.optim.SGD(field.parameters(), lr=0.1)
        losses = []
        for _ in range(5):
            optimiser.zero_grad()
            sol = op.solve(op.ODEProblem(field, y0, ts), op.Dopri5(rtol=1e-6, atol=1e-6),
                           op.GQAdjoint(quadrature=ClenshawCurtis(), C=1.0))
            loss = (sol.ys[-1] - target).pow(2).mean()
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
        assert losses[-1] < losses[0]
        # Its gradients agree with Adjoint's at a generous C.
        adjoint = _mlp_grads(op.Adjoint(), ts)[1]
        cc = _mlp_grads(op.GQAdjoint(quadrature=ClenshawCurtis(), C=10.0), ts)[1]
        assert torch.allclose(cc, adjoint, rtol=1e-5, atol=1e-8)
    finally:
        _dispatch.unregister_for_tests("quadrature", (ClenshawCurtis, int))


def test_gq_options_are_validated():
    with pytest.raises(op.InvalidOptionError, match="C must be a positive number"):
        op.GQAdjoint(C=0)
    with pytest.raises(op.InvalidOptionError, match="quadrature must be an odeplug.Quadrature"):
        op.GQAdjoint(quadrature="gauss")
    with pytest.raises(op.InvalidOptionError, match="max_terms"):
        op.GQAdjoint(max_terms=0)
