"""The Runge–Kutta solvers, checked against things we did not write: torchdiffeq's dopri5 (same
steps, same evaluations, same values), exact solutions of linear ODEs (torch.linalg.matrix_exp),
and Butcher's order conditions for the tableaus and their dense outputs."""

from __future__ import annotations

import functools
import math
import warnings

import pytest
import torch
import torchdiffeq
from hypothesis import given, settings
from hypothesis import strategies as st
from torchdiffeq._impl.misc import _mixed_norm, _rms_norm

import odeplug as op
from odeplug_solvers import RungeKuttaStepper

from odeplug.testing.strategies import MLPField, mlp_problems

from torchdiffeq_counting import Counting

F64 = torch.float64


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def torchdiffeq_dopri5(f, y0, ts, rtol, atol, norm=None):
    func = Counting(f)
    options = {} if norm is None else dict(norm=norm)
    ys = torchdiffeq.odeint(func, y0, ts, rtol=rtol, atol=atol, method="dopri5", options=options)
    return ys, dict(nfe=func.nfe, steps_accepted=func.accepted, steps_rejected=func.rejected)


def rel_err(ours, ref) -> float:
    if isinstance(ref, tuple):
        return max(rel_err(o, r) for o, r in zip(ours, ref))
    ours, ref = ours.detach(), ref.detach()
    return float((ours - ref).abs().max() / ref.abs().max())


def assert_parity(f, y0, ts, rtol, atol, norm=None, td_norm=None):
    solver = op.Dopri5(rtol=rtol, atol=atol) if norm is None else op.Dopri5(rtol=rtol, atol=atol, norm=norm)
    with torch.no_grad():
        sol = op.solve(op.ODEProblem(f, y0, ts), solver, op.Direct())
        ref, counts = torchdiffeq_dopri5(f, y0, ts, rtol, atol, td_norm)
    assert {k: sol.stats[k] for k in counts} == counts
    assert rel_err(sol.ys, ref) < 1e-10
    return sol


def linear_system(seed: int, dim: int = 4):
    """A random linear system with eigenvalues spread over two decades (so steps get rejected)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=F64))
    rot = torch.randn(dim, dim, generator=g, dtype=F64) * 0.5
    decay = torch.logspace(-1, 0.7, dim, dtype=F64)
    a = q @ torch.diag(-decay) @ q.T + (rot - rot.T)
    y0 = torch.randn(3, dim, generator=g, dtype=F64)
    return a, y0


def van_der_pol(mu: float):
    def f(t, y):
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, mu * (1 - x * x) * v - x], dim=-1)

    def f_tuple(t, y):
        x, v = y
        return v, mu * (1 - x * x) * v - x

    return f, f_tuple


TIMES = {
    "increasing": torch.tensor([0.0, 0.3, 1.1, 1.7, 2.5], dtype=F64),
    "decreasing": torch.tensor([2.5, 1.7, 1.1, 0.3, 0.0], dtype=F64),
}


# ---------------------------------------------------------------------------------------------
# parity with torchdiffeq's dopri5
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tol", [1e-3, 1e-6, 1e-9])
@pytest.mark.parametrize("times", sorted(TIMES))
@pytest.mark.parametrize("state", ["tensor", "tuple"])
def test_dopri5_parity_linear(state, times, tol):
    a, y0 = linear_system(0)
    ts = TIMES[times]
    if state == "tensor":
        assert_parity(lambda t, y: y @ a.T, y0, ts, tol, tol * 1e-2)
    else:
        def f(t, y):
            out = torch.cat(y, -1) @ a.T
            return out[:, :1], out[:, 1:]

        assert_parity(f, (y0[:, :1], y0[:, 1:]), ts, tol, tol * 1e-2)


def test_parity_cases_include_rejections():
    """The cases above exercise rejected steps (and still match torchdiffeq)."""
    a, y0 = linear_system(0)
    sol = assert_parity(lambda t, y: y @ a.T, y0, TIMES["decreasing"], 1e-9, 1e-11)
    assert sol.stats.steps_rejected > 0
    f, _ = van_der_pol(2.0)
    y0 = torch.tensor([[2.0, 0.0], [0.5, -1.0]], dtype=F64)
    sol = assert_parity(f, y0, TIMES["increasing"], 1e-4, 1e-4)
    assert sol.stats.steps_rejected > 0


@pytest.mark.parametrize("tol", [1e-4, 1e-7, 1e-10])
@pytest.mark.parametrize("times", sorted(TIMES))
@pytest.mark.parametrize("state", ["tensor", "tuple"])
def test_dopri5_parity_van_der_pol(state, times, tol):
    f, f_tuple = van_der_pol(mu=2.0)
    y0 = torch.tensor([[2.0, 0.0], [0.5, -1.0]], dtype=F64)
    ts = TIMES[times]
    if state == "tensor":
        assert_parity(f, y0, ts, tol, tol)
    else:
        assert_parity(f_tuple, (y0[:, 0], y0[:, 1]), ts, tol, tol)


@given(problem=mlp_problems(), tol=st.sampled_from([1e-3, 1e-5, 1e-7, 1e-9]))
def test_dopri5_parity_mlp(problem, tol):
    field, y0, ts = problem
    assert_parity(field, y0, ts, tol, tol * 0.1)


def test_dopri5_parity_tuple_with_scalar_element():
    f, f_tuple = van_der_pol(1.0)
    y0 = (torch.tensor(2.0, dtype=F64), torch.tensor(0.0, dtype=F64))
    assert_parity(f_tuple, y0, TIMES["increasing"], 1e-6, 1e-6)


def _flat(x):
    return torch.cat([t.reshape(-1) for t in x]) if isinstance(x, tuple) else x.reshape(-1)


# odeplug norm -> torchdiffeq norm on the same (tensor or tuple) scaled error
NORMS = {
    "RMSNorm": (lambda: op.RMSNorm(), lambda x: _rms_norm(_flat(x))),
    "MaxNorm": (lambda: op.MaxNorm(), lambda x: _flat(x).abs().max()),
    "MixedNorm": (lambda: op.MixedNorm(),
                  lambda x: _mixed_norm(x) if isinstance(x, tuple) else _rms_norm(x)),
}


@pytest.mark.parametrize("norm", sorted(NORMS))
@pytest.mark.parametrize("state", ["tensor", "tuple"])
@pytest.mark.parametrize("tol", [1e-4, 1e-8])
def test_dopri5_parity_norms(norm, state, tol):
    ours, theirs = NORMS[norm]
    a, y0 = linear_system(1)
    ts = TIMES["decreasing"]
    if state == "tensor":
        assert_parity(lambda t, y: y @ a.T, y0, ts, tol, tol, ours(), theirs)
    else:
        def f(t, y):
            out = torch.cat(y, -1) @ a.T
            return out[:, :3], out[:, 3:]

        assert_parity(f, (y0[:, :3], y0[:, 3:]), ts, tol, tol, ours(), theirs)


def test_norm_changes_steps():
    """The norm option is used (a MaxNorm takes more steps than the RMS default here)."""
    a, y0 = linear_system(1)
    counts = {}
    for name, (ours, _) in NORMS.items():
        sol = op.solve(op.ODEProblem(lambda t, y: y @ a.T, y0, TIMES["increasing"]),
                       op.Dopri5(rtol=1e-6, atol=1e-6, norm=ours()))
        counts[name] = sol.stats.nfe
    assert counts["MaxNorm"] > counts["RMSNorm"] == counts["MixedNorm"]


@pytest.mark.parametrize("tol", [1e-3, 1e-6])
def test_bosh3_takes_torchdiffeqs_steps(tol):
    """Bosh3 uses the same step control: identical NFE and accepted/rejected steps as
    torchdiffeq's bosh3 (values at interior outputs differ by design: odeplug's dense output is a
    cubic Hermite, torchdiffeq's a quartic through a second-order midpoint)."""
    a, y0 = linear_system(2)
    ts = TIMES["increasing"]
    func = Counting(lambda t, y: y @ a.T)
    torchdiffeq.odeint(func, y0, ts, rtol=tol, atol=tol, method="bosh3")
    sol = op.solve(op.ODEProblem(lambda t, y: y @ a.T, y0, ts), op.Bosh3(rtol=tol, atol=tol))
    assert (sol.stats.nfe, sol.stats.steps_accepted, sol.stats.steps_rejected) == (
        func.nfe, func.accepted, func.rejected)


@pytest.mark.parametrize("solver,method", [(op.Euler, "euler"), (op.Midpoint, "midpoint")])
def test_fixed_step_values_equal_torchdiffeq(solver, method):
    """Same steps, same values at step ends (between them odeplug's dense output is a cubic
    Hermite, torchdiffeq's linear, so off-grid outputs differ by design)."""
    a, y0 = linear_system(3)
    ts = torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=F64)
    ref = torchdiffeq.odeint(lambda t, y: y @ a.T, y0, ts, method=method,
                             options=dict(step_size=0.1))
    sol = op.solve(op.ODEProblem(lambda t, y: y @ a.T, y0, ts), solver(dt=0.1))
    assert rel_err(sol.ys, ref) < 1e-13
    assert sol.stats.steps_accepted == 10 and sol.stats.steps_rejected == 0


# ---------------------------------------------------------------------------------------------
# the torchdiffeq bridge
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,tol", [("dopri5", 1e-5), ("bosh3", 1e-5), ("adaptive_heun", 1e-3)])
@pytest.mark.parametrize("state", ["tensor", "tuple"])
def test_torchdiffeq_bridge_adaptive(method, tol, state):
    field = MLPField(4, 8, seed=5)
    g = torch.Generator().manual_seed(5)
    y0 = torch.randn(2, 4, generator=g, dtype=F64)
    f = field
    if state == "tuple":
        y0 = (y0[:, :1], y0[:, 1:])

        def f(t, y):
            out = field(t, torch.cat(y, -1))
            return out[:, :1], out[:, 1:]

    ts = TIMES["decreasing"][:3]
    func = Counting(f)
    ref = torchdiffeq.odeint(func, y0, ts, rtol=tol, atol=tol * 1e-2, method=method)
    sol = op.solve(op.ODEProblem(f, y0, ts), op.TorchDiffEq(method=method, rtol=tol, atol=tol * 1e-2),
                   op.Direct())
    assert rel_err(sol.ys, ref) == 0.0
    assert dict(sol.stats) == dict(nfe=func.nfe, steps_accepted=func.accepted,
                                   steps_rejected=func.rejected)
    assert func.accepted > 0
    if method == "dopri5":  # and the bridge agrees with odeplug's own Dopri5
        ours = op.solve(op.ODEProblem(f, y0, ts), op.Dopri5(rtol=tol, atol=tol * 1e-2))
        assert rel_err(ours.ys, ref) < 1e-10 and dict(ours.stats) == dict(sol.stats)


def test_torchdiffeq_bridge_fixed_grid_values():
    a, y0 = linear_system(4)
    ts = torch.linspace(0, 2, 4, dtype=F64)
    opts = dict(step_size=0.1)
    ref = torchdiffeq.odeint(lambda t, y: y @ a.T, y0, ts, method="rk4", options=opts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sol = op.solve(op.ODEProblem(lambda t, y: y @ a.T, y0, ts),
                       op.TorchDiffEq(method="rk4", options=opts))
    assert rel_err(sol.ys, ref) == 0.0
    assert sol.stats.nfe == 4 * 20  # torchdiffeq's rk4: 20 steps of 4 evaluations


def test_torchdiffeq_bridge_fixed_grid_counts_steps():
    a, y0 = linear_system(4)
    ts = torch.linspace(0, 2, 4, dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sol = op.solve(op.ODEProblem(lambda t, y: y @ a.T, y0, ts),
                       op.TorchDiffEq(method="rk4", options=dict(step_size=0.1)))
    assert sol.stats.steps_accepted == 20 and sol.stats.steps_rejected == 0


# ---------------------------------------------------------------------------------------------
# decreasing times, dense output
# ---------------------------------------------------------------------------------------------
ADAPTIVE = [op.Dopri5, op.Tsit5, op.Bosh3]


@pytest.mark.parametrize("solver", ADAPTIVE + [op.RK4], ids=lambda s: s.__name__)
def test_decreasing_times_equal_the_reversed_problem(solver):
    """Solving y' = f(t, y) on decreasing ts equals solving z' = −f(−s, z) on s = −ts."""
    field = MLPField(3, 8, seed=2, scale=2.0)
    y0 = torch.randn(2, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    ts = torch.tensor([1.0, 0.4, -0.3, -2.0], dtype=F64)
    options = dict(dt=0.05) if solver is op.RK4 else dict(rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        down = op.solve(op.ODEProblem(field, y0, ts), solver(**options))
        up = op.solve(op.ODEProblem(lambda s, z: -field(-s, z), y0, -ts), solver(**options))
    assert rel_err(down.ys, up.ys) < 1e-12
    assert dict(down.stats) == dict(up.stats)


@pytest.mark.parametrize("solver", ADAPTIVE, ids=lambda s: s.__name__)
def test_backward_solve_returns_to_start(solver):
    f, _ = van_der_pol(1.0)
    y0 = torch.tensor([[1.5, 0.2]], dtype=F64)
    tol = 1e-9
    with torch.no_grad():
        there = op.solve(op.ODEProblem(f, y0, torch.tensor([0.0, 3.0], dtype=F64)), solver(rtol=tol, atol=tol))
        back = op.solve(op.ODEProblem(f, there.ys[-1], torch.tensor([3.0, 0.0], dtype=F64)),
                        solver(rtol=tol, atol=tol))
    assert float((back.ys[-1] - y0).abs().max()) < 1e3 * tol


@pytest.mark.parametrize("solver", ADAPTIVE, ids=lambda s: s.__name__)
def test_outputs_come_from_dense_output(solver):
    """The step sequence does not depend on the output grid: more output times change neither
    the counts nor the final value (no forced stops)."""
    f, _ = van_der_pol(2.0)
    y0 = torch.tensor([[2.0, 0.0]], dtype=F64)
    with torch.no_grad():
        few = op.solve(op.ODEProblem(f, y0, torch.tensor([0.0, 5.0], dtype=F64)), solver(rtol=1e-6))
        many = op.solve(op.ODEProblem(f, y0, torch.linspace(0.0, 5.0, 40, dtype=F64)), solver(rtol=1e-6))
    assert dict(few.stats) == dict(many.stats)
    # Same steps, so the same value up to the BLAS kernel: one output time is read with a
    # one-row product, forty with a matrix product, which may round the last bit differently.
    torch.testing.assert_close(few.ys[-1], many.ys[-1], rtol=1e-15, atol=0.0)


DENSE_TS = torch.tensor([0.0, 0.77, 1.91, 2.6, 3.0], dtype=F64)
DENSE_Y0 = torch.tensor([[2.0, 0.0], [-0.5, 1.0]], dtype=F64)


@functools.lru_cache(maxsize=None)
def _van_der_pol_at(k: int) -> torch.Tensor:
    """A tight Dopri5 solve of van der Pol ending exactly at DENSE_TS[k]."""
    f, _ = van_der_pol(2.0)
    with torch.no_grad():
        return op.solve(op.ODEProblem(f, DENSE_Y0, DENSE_TS[[0, k]]),
                        op.Dopri5(rtol=1e-12, atol=1e-12)).ys[-1]


@pytest.mark.parametrize("solver", ADAPTIVE, ids=lambda s: s.__name__)
@pytest.mark.parametrize("tol", [1e-4, 1e-7])
def test_dense_output_matches_a_solve_ending_there(solver, tol):
    """The dense output at interior times equals, to tolerance, a much tighter solve that ends
    exactly at that time (van der Pol: no closed form)."""
    f, _ = van_der_pol(2.0)
    with torch.no_grad():
        dense = op.solve(op.ODEProblem(f, DENSE_Y0, DENSE_TS), solver(rtol=tol, atol=tol)).ys
    for k in (1, 2, 3):
        exact = _van_der_pol_at(k)
        assert float((dense[k] - exact).abs().max()) < 100 * tol * float(1 + exact.abs().max()), k


# ---------------------------------------------------------------------------------------------
# exact solutions of random linear ODEs y' = A y
# ---------------------------------------------------------------------------------------------
@st.composite
def linear_odes(draw):
    """(A, y0, T): A random with spectral norm 0.3–1.5, T in [0.5, 2]."""
    seed = draw(st.integers(0, 2**31 - 1))
    dim = draw(st.integers(1, 4))
    scale = draw(st.floats(0.3, 1.5))
    t_end = draw(st.floats(0.5, 2.0))
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=g, dtype=F64)
    a = a * scale / torch.linalg.matrix_norm(a, 2)
    y0 = torch.randn(dim, generator=g, dtype=F64)
    return a, y0, t_end


def _fixed_solve_end(solver_cls, a, y0, t_end, n):
    """y(T) with n fixed steps of the solver's tableau; built-in fixed solvers go through the
    front door, adaptive tableaus through the plugin's stepper with a fixed dt."""
    ts = torch.tensor([0.0, t_end], dtype=F64)
    if issubclass(solver_cls, op.FixedStepRungeKutta):
        sol = op.solve(op.ODEProblem(lambda t, y: a @ y, y0, ts), solver_cls(dt=t_end / n))
        steps = sol.stats.steps_accepted
        end = sol.ys[-1]
    else:
        field = op.VectorField(lambda t, y: a @ y)
        stepper = RungeKuttaStepper(solver_cls.tableau, field, op.Layout.of(y0), dt=t_end / n,
                                    max_steps=10 * n)
        counts = op.Counts()
        ys, _ = op.integrate(stepper, y0, ts, counts)
        steps, end = counts.accepted, ys[-1]
    assert steps == n
    return end


# step size (times the spectral norm of A) chosen in the asymptotic regime, far above round-off
CONVERGENCE = [(op.Euler, 0.02), (op.Midpoint, 0.05), (op.RK4, 0.1), (op.Bosh3, 0.1), (op.Dopri5, 0.1)]


@pytest.mark.parametrize("solver,h_rho", CONVERGENCE, ids=[c[0].__name__ for c in CONVERGENCE])
@given(problem=linear_odes())
def test_order_of_convergence(solver, h_rho, problem):
    a, y0, t_end = problem
    with torch.no_grad():
        exact = torch.linalg.matrix_exp(a * t_end) @ y0
        rho = float(torch.linalg.matrix_norm(a, 2))
        n = max(2, math.ceil(rho * t_end / h_rho))
        errors = [float((_fixed_solve_end(solver, a, y0, t_end, m) - exact).norm()) for m in (n, 2 * n)]
    order = math.log2(errors[0] / errors[1])
    assert abs(order - solver.tableau.order) < 0.3, (errors, order)


@functools.lru_cache(maxsize=None)
def _rooted_trees(order: int) -> tuple:
    """All rooted trees with ``order`` nodes (Butcher 1963), each a sorted tuple of subtrees."""
    if order == 1:
        return ((),)
    return tuple(sorted({tuple(sorted(forest)) for forest in _forests(order - 1)}))


@functools.lru_cache(maxsize=None)
def _forests(nodes: int) -> tuple:
    """Ordered sequences of rooted trees with ``nodes`` nodes in all."""
    if nodes == 0:
        return ((),)
    return tuple((tree,) + rest for k in range(1, nodes + 1) for tree in _rooted_trees(k)
                 for rest in _forests(nodes - k))


def _tree_data(tree, a, ones):
    """(Φ-vector g with Φ(t) = b·g, γ(t), number of nodes)."""
    g = ones.clone()
    gamma, nodes = 1, 1
    for child in tree:
        gc, gam, n = _tree_data(child, a, ones)
        g = g * (a @ gc)
        gamma *= gam
        nodes += n
    return g, gamma * nodes, nodes


def _tableau_matrices(solver_cls):
    tab = solver_cls.tableau
    s = tab.stages
    a = torch.zeros(s, s, dtype=F64)
    for i, row in enumerate(tab.a):
        if row:
            a[i, : len(row)] = torch.tensor(row, dtype=F64)
    return tab, a, torch.ones(s, dtype=F64)


def test_rooted_tree_counts():
    assert [len(_rooted_trees(n)) for n in range(1, 7)] == [1, 1, 2, 4, 9, 20]


@pytest.mark.parametrize("solver", [op.Euler, op.Midpoint, op.RK4, op.Bosh3, op.Dopri5, op.Tsit5],
                         ids=lambda s: s.__name__)
def test_tableau_order_conditions(solver):
    """b satisfies every order condition b·Φ(t) = 1/γ(t) up to the tableau's order and fails one
    at order + 1; the embedded weights b − b_error have order ≥ order − 1. Tsit5's fixed-step
    convergence is checked here rather than on linear ODEs: on y' = Ay its error constant is
    0.031/720, below float64 round-off at step sizes in the asymptotic regime."""
    tab, a, ones = _tableau_matrices(solver)
    b = torch.tensor(tab.b, dtype=F64)

    def worst(weights, order):
        return max(abs(float(weights @ _tree_data(t, a, ones)[0]) - 1 / _tree_data(t, a, ones)[1])
                   for t in _rooted_trees(order))

    for order in range(1, tab.order + 1):
        assert worst(b, order) < 1e-12, order
    assert worst(b, tab.order + 1) > 1e-6
    if tab.b_error is not None:
        b_hat = b - torch.tensor(tab.b_error, dtype=F64)
        for order in range(1, tab.order):
            assert worst(b_hat, order) < 1e-12, order
        assert worst(b_hat, tab.order) > 1e-6


@pytest.mark.parametrize("solver,dense_order", [(op.Dopri5, 4), (op.Tsit5, 4), (op.Bosh3, 3)],
                         ids=lambda x: getattr(x, "__name__", str(x)))
def test_dense_output_order_conditions(solver, dense_order):
    """Continuous extension: Σ_i b_i(θ) Φ_i(t) = θ^|t| / γ(t) for |t| ≤ its order, at every θ,
    and b_i(1) = b_i (the dense output ends on the step's solution)."""
    tab, a, ones = _tableau_matrices(solver)
    dense = torch.tensor(tab.dense, dtype=F64)
    for theta in (0.1, 0.37, 0.5, 0.81, 1.0):
        weights = dense @ (theta ** torch.arange(1, dense.shape[1] + 1, dtype=F64))
        for order in range(1, dense_order + 1):
            for tree in _rooted_trees(order):
                g, gamma, _ = _tree_data(tree, a, ones)
                assert abs(float(weights @ g) - theta**order / gamma) < 1e-12, (theta, tree)
    ones_theta = dense.sum(1)
    assert torch.allclose(ones_theta, torch.tensor(tab.b, dtype=F64), atol=1e-14, rtol=0)


@pytest.mark.parametrize("solver", [op.Tsit5, op.Bosh3], ids=lambda s: s.__name__)
@settings(max_examples=8)
@given(problem=linear_odes())
def test_adaptive_accuracy(solver, problem):
    """Error (relative to 1 + |y|) at the output times is within 100·tol of the matrix
    exponential, and shrinks as tol shrinks (compared four decades apart)."""
    a, y0, t_end = problem
    y0 = torch.stack([y0, -0.5 * y0 + 0.1])
    ts = torch.linspace(0, t_end, 5, dtype=F64)
    exact = torch.stack([y0 @ torch.linalg.matrix_exp(a * t).T for t in ts])
    errors = {}
    with torch.no_grad():
        for tol in (1e-3, 1e-5, 1e-7, 1e-9):
            ys = op.solve(op.ODEProblem(lambda t, y: y @ a.T, y0, ts), solver(rtol=tol, atol=tol)).ys
            errors[tol] = float(((ys - exact).abs() / (1 + exact.abs())).max())
            assert errors[tol] < 100 * tol, (tol, errors[tol])
    assert errors[1e-7] < errors[1e-3] and errors[1e-9] < errors[1e-5], errors


@given(problem=linear_odes(), tol=st.sampled_from([1e-4, 1e-7]))
def test_dopri5_dense_output_exact_linear(problem, tol):
    """Dopri5 at interior output times (dense output), against the matrix exponential and
    torchdiffeq's dense output."""
    a, y0, t_end = problem
    ts = torch.tensor([0.0, 0.31, 0.57, 0.93], dtype=F64) * t_end
    with torch.no_grad():
        sol = op.solve(op.ODEProblem(lambda t, y: a @ y, y0, ts), op.Dopri5(rtol=tol, atol=tol))
        exact = torch.stack([torch.linalg.matrix_exp(a * t) @ y0 for t in ts])
        ref = torchdiffeq.odeint(lambda t, y: a @ y, y0, ts, rtol=tol, atol=tol, method="dopri5")
    assert float(((sol.ys - exact).abs() / (1 + exact.abs())).max()) < 100 * tol
    assert rel_err(sol.ys, ref) < 1e-10


@pytest.mark.parametrize("solver", [op.Dopri5(), op.Tsit5(), op.Bosh3()], ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("fraction", [0.5, 1e-6])
def test_a_landed_step_keeps_the_step_size_it_was_shortened_from(solver, fraction):
    """The Stepper contract: after an accepted step shortened to land on a target, the next step
    size is at least the one proposed before shortening — an output time where the adjoint
    jumps must not cost a new start (the step regrowing from a sliver, ×10 per step)."""
    field = op.VectorField(lambda t, y: -y + torch.sin(3 * t))
    y0 = torch.tensor([1.0, -0.5], dtype=F64)
    stepper = op.make_stepper(solver, field, op.Layout.of(y0))
    far = torch.tensor(10.0, dtype=F64)
    state = stepper.start(torch.tensor(0.0, dtype=F64), y0, far)
    for _ in range(3):  # let the step size settle past the initial guess
        state, _, _ = stepper.attempt(state, far)
    landings = 0
    for _ in range(5):
        proposed = state.h
        target = state.t + fraction * proposed
        new, step, (accepted, *_rest) = stepper.attempt(state, target, land=True)
        if accepted:
            assert bool(step.landed) and float(new.t) == float(target)
            assert float(new.h) >= float(proposed), (float(new.h), float(proposed))
            landings += 1
        state = new
    assert landings >= 3
