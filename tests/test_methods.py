"""torchdiffeq's other explicit methods in odeplug: Dopri8, Fehlberg2, AdaptiveHeun, Heun3, Heun2,
RK4ThreeEighths (tableaus on the Runge–Kutta engine) and the Adams methods (their own stepper),
each against torchdiffeq on the same problems. Orders, dense output, time reversal and gradients
come from check_solver (tests/test_conformance.py)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchdiffeq
from torchdiffeq._impl.fixed_adams import _BASHFORTH_DIVISOR, _MOULTON_DIVISOR

import odeplug as op
from odeplug.testing.strategies import MLPField
from odeplug_solvers import adams_coefficients

from torchdiffeq_counting import Counting

F64 = torch.float64


class Evaluations(torch.nn.Module):
    """Counts torchdiffeq's evaluations (its fixed-grid solvers take no step callbacks)."""

    def __init__(self, f) -> None:
        super().__init__()
        self.f = f
        self.nfe = 0

    def forward(self, t, y):
        self.nfe += 1
        return self.f(t, y)


def _linear(seed: int, dim: int = 3):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=g, dtype=F64) * 0.7
    y0 = torch.randn(2, dim, generator=g, dtype=F64)
    return (lambda t, y: y @ a.T + torch.sin(t)), y0


def _mlp(seed: int, dtype: torch.dtype = F64):
    field = MLPField(3, 16, seed=seed, dtype=dtype)
    y0 = torch.randn(2, 3, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return field, y0


PROBLEMS = {"linear": lambda: _linear(1), "mlp": lambda: _mlp(2)}
INCREASING = torch.tensor([0.0, 0.4, 1.1, 2.0], dtype=F64)
DECREASING = torch.tensor([1.5, 0.9, 0.0], dtype=F64)


def _rel(ours, ref) -> float:
    ours, ref = ours.detach(), ref.detach()
    return float((ours - ref).abs().max() / ref.abs().max())


# ---------------------------------------------------------------------------------------------
# adaptive Runge–Kutta pairs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ts", [INCREASING, DECREASING], ids=["increasing", "decreasing"])
@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("tol", [1e-5, 1e-7])
def test_dopri8_takes_torchdiffeqs_steps(problem, ts, tol):
    """Same accepted and rejected steps and evaluations as torchdiffeq's dopri8. The outputs lie
    inside steps (a few steps cover the span), where odeplug evaluates the 5th-order continuous
    extension and torchdiffeq a quartic through its midpoint value: ours is within the tolerance
    of the solution and no farther from it than torchdiffeq's (in fact 50 to 200 times nearer).

    (Where an error estimate is at round-off level, e.g. a first step at rtol 1e-9, the order of
    the floating-point sums decides the next step size, and the step sequences may part.)"""
    f, y0 = PROBLEMS[problem]()
    func = Counting(f)
    ref = torchdiffeq.odeint(func, y0, ts, rtol=tol, atol=tol, method="dopri8")
    with torch.no_grad():
        sol = op.solve(op.ODEProblem(f, y0, ts), op.Dopri8(rtol=tol, atol=tol))
        truth = torchdiffeq.odeint(f, y0, ts, rtol=1e-13, atol=1e-13, method="dopri8")
    assert (sol.stats.nfe, sol.stats.steps_accepted, sol.stats.steps_rejected) == (
        func.nfe, func.accepted, func.rejected)
    ours, theirs = (float((y - truth).abs().max()) for y in (sol.ys, ref.detach()))
    assert ours < 50 * tol and ours <= theirs


def test_dopri8_cases_include_rejections():
    f, y0 = PROBLEMS["mlp"]()
    func = Counting(f)
    torchdiffeq.odeint(func, y0, DECREASING, rtol=1e-7, atol=1e-7, method="dopri8")
    sol = op.solve(op.ODEProblem(f, y0, DECREASING), op.Dopri8(rtol=1e-7, atol=1e-7))
    assert sol.stats.steps_rejected == func.rejected > 0


@pytest.mark.parametrize("solver,method", [(op.Fehlberg2, "fehlberg2"), (op.AdaptiveHeun, "adaptive_heun")])
@pytest.mark.parametrize("problem", sorted(PROBLEMS))
def test_low_order_pairs_agree_with_torchdiffeq(solver, method, problem):
    """The same solution to the tolerance. Not the same steps: torchdiffeq reuses the pair's last
    stage as the next step's first, but for these pairs it is F at the embedded solution, not at
    the propagated y1; odeplug evaluates F(t1, y1), one evaluation more per step."""
    f, y0 = PROBLEMS[problem]()
    tol = 1e-6
    func = Counting(f)
    ref = torchdiffeq.odeint(func, y0, INCREASING, rtol=tol, atol=tol, method=method)
    sol = op.solve(op.ODEProblem(f, y0, INCREASING), solver(rtol=tol, atol=tol))
    assert _rel(sol.ys, ref) < 100 * tol
    assert abs(sol.stats.steps_accepted - func.accepted) <= 0.05 * func.accepted


@pytest.mark.parametrize("solver,method", [(op.Fehlberg2, "fehlberg2"), (op.AdaptiveHeun, "adaptive_heun"),
                                           (op.Dopri8, "dopri8")])
@pytest.mark.parametrize("tol", [1e-4, 1e-6])
def test_adaptive_pairs_are_as_accurate_as_torchdiffeqs(solver, method, tol):
    """Against the exact solution of a linear system. (Fehlberg2's error is well above the
    tolerance in both: its estimate is that of the first-order solution, whose error constant
    is tiny, while the second-order one is propagated.)"""
    g = torch.Generator().manual_seed(4)
    a = torch.randn(3, 3, generator=g, dtype=F64) * 0.5
    y0 = torch.randn(3, generator=g, dtype=F64)
    exact = torch.stack([torch.linalg.matrix_exp(a * t) @ y0 for t in INCREASING])
    f = lambda t, y: a @ y  # noqa: E731
    ref = torchdiffeq.odeint(f, y0, INCREASING, rtol=tol, atol=tol, method=method)
    sol = op.solve(op.ODEProblem(f, y0, INCREASING), solver(rtol=tol, atol=tol))
    ours, theirs = (float((y - exact).abs().max()) for y in (sol.ys, ref))
    assert ours <= 2 * theirs + 10 * tol * float(exact.abs().max())


# ---------------------------------------------------------------------------------------------
# fixed step
# ---------------------------------------------------------------------------------------------
ON_GRID = torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=F64)


# torchdiffeq's fixed-grid Runge–Kutta methods: its rk4 is Kutta's 3/8 rule.
FIXED = {"heun3": op.Heun3, "heun2": op.Heun2, "rk4": op.RK4ThreeEighths}


@pytest.mark.parametrize("method", sorted(FIXED))
@pytest.mark.parametrize("problem", sorted(PROBLEMS))
def test_fixed_step_values_equal_torchdiffeq(problem, method):
    """Same steps, same values at the step ends (odeplug evaluates F at the final state too)."""
    f, y0 = PROBLEMS[problem]()
    func = Evaluations(f)
    ref = torchdiffeq.odeint(func, y0, ON_GRID, method=method, options=dict(step_size=0.1))
    sol = op.solve(op.ODEProblem(f, y0, ON_GRID), FIXED[method](dt=0.1))
    assert _rel(sol.ys, ref) < 1e-13
    assert (sol.stats.steps_accepted, sol.stats.nfe) == (10, func.nfe + 1)


def test_adams_coefficients_are_the_published_ones():
    """Ours are computed from the definition; torchdiffeq tabulates the published integers."""
    for slopes in range(1, 13):
        assert adams_coefficients(slopes, implicit=False) == tuple(_BASHFORTH_DIVISOR[slopes].tolist())
    for slopes in range(2, 13):  # torchdiffeq's one-slope Moulton entry is never used (and off)
        assert adams_coefficients(slopes, implicit=True) == tuple(_MOULTON_DIVISOR[slopes].tolist())


ADAMS = [
    (op.ExplicitAdams(dt=0.05), "explicit_adams", dict(max_order=5)),
    (op.ExplicitAdams(dt=0.05, max_order=4), "explicit_adams", dict(max_order=4)),
    (op.ImplicitAdams(dt=0.05), "implicit_adams", {}),
    (op.ImplicitAdams(dt=0.05), "fixed_adams", {}),
    (op.ImplicitAdams(dt=0.05, max_order=6, max_iters=2), "implicit_adams", dict(max_order=6, max_iters=2)),
]


@pytest.mark.filterwarnings("ignore:.*(did not converge|Functional iteration)")
@pytest.mark.parametrize("solver,method,options", ADAMS, ids=[f"{m}-{o}" for _, m, o in ADAMS])
@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("ts", [torch.linspace(0, 2, 5, dtype=F64), torch.linspace(1.5, 0, 4, dtype=F64)],
                         ids=["increasing", "decreasing"])
def test_adams_values_equal_torchdiffeq(solver, method, options, problem, ts):
    """Same start (Kutta's 3/8 rule), same growth of the order, same corrector: the same values
    at the step ends, and the same evaluations (plus F at the final state)."""
    f, y0 = PROBLEMS[problem]()
    func = Evaluations(f)
    ref = torchdiffeq.odeint(func, y0, ts, method=method, options=dict(step_size=0.05, **options))
    sol = op.solve(op.ODEProblem(f, y0, ts), solver)
    assert _rel(sol.ys, ref) < 1e-12
    assert sol.stats.nfe == func.nfe + 1
    assert sol.stats.steps_accepted == round(float((ts[-1] - ts[0]).abs()) / 0.05)


def test_adams_in_float32_on_an_mlp():
    f, y0 = _mlp(5, torch.float32)
    ts = torch.linspace(0, 1, 3)
    for solver, method in [(op.ExplicitAdams(dt=0.05), "explicit_adams"),
                           (op.ImplicitAdams(dt=0.05), "implicit_adams")]:
        ref = torchdiffeq.odeint(f, y0, ts, method=method, options=dict(step_size=0.05, max_order=5))
        sol = op.solve(op.ODEProblem(f, y0, ts), solver if method == "explicit_adams"
                       else op.ImplicitAdams(dt=0.05, max_order=5))
        assert sol.ys.dtype == torch.float32
        assert _rel(sol.ys, ref) < 1e-5


def test_a_corrector_that_does_not_converge_drops_a_slope_as_torchdiffeq():
    """One iteration at a tight tolerance never converges: both warn and lower the order."""
    f, y0 = _linear(6)
    ts = torch.linspace(0, 1, 3, dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = torchdiffeq.odeint(f, y0, ts, rtol=1e-12, atol=1e-12, method="implicit_adams",
                                 options=dict(step_size=0.05, max_iters=1))
    with pytest.warns(RuntimeWarning, match="did not converge"):
        sol = op.solve(op.ODEProblem(f, y0, ts),
                       op.ImplicitAdams(dt=0.05, rtol=1e-12, atol=1e-12, max_iters=1))
    assert _rel(sol.ys, ref) < 1e-12


def test_adams_gradients_with_direct_and_adjoint_agree():
    field, y0 = _mlp(7)
    ts = torch.linspace(0, 1, 3, dtype=F64)
    grads = []
    for rule in (op.Direct(), op.Adjoint()):
        y = y0.clone().requires_grad_()
        loss = op.solve(op.ODEProblem(field, y, ts), op.ImplicitAdams(dt=0.01), rule).ys.square().sum()
        grads.append(torch.autograd.grad(loss, (y, field.w1)))
    for direct, adjoint in zip(*grads):
        assert _rel(adjoint, direct) < 1e-4


def test_aca_refuses_adams_naming_the_rules_that_work():
    field, y0 = _mlp(8)
    y = y0.clone().requires_grad_()
    sol = op.solve(op.ODEProblem(field, y, torch.tensor([0.0, 0.2], dtype=F64)),
                   op.ExplicitAdams(dt=0.05), op.ACA())
    with pytest.raises(op.UnsupportedCombinationError, match="Direct.*Adjoint"):
        sol.ys.sum().backward()


@pytest.mark.parametrize("options", [dict(max_order=3), dict(max_order=13), dict(dt=-0.1)])
def test_adams_options_are_checked(options):
    with pytest.raises(op.InvalidOptionError):
        op.ImplicitAdams(**{"dt": 0.1, **options})
    with pytest.raises(op.InvalidOptionError, match="dt and grid both say where the steps end"):
        op.ExplicitAdams(dt=0.1, grid=(0.0, 1.0))


def test_declared_orders():
    solvers = [op.Dopri8(), op.Fehlberg2(), op.AdaptiveHeun(), op.Heun3(dt=0.1), op.Heun2(dt=0.1),
               op.RK4ThreeEighths(dt=0.1),
               op.ExplicitAdams(dt=0.1), op.ExplicitAdams(dt=0.1, max_order=4),
               op.ImplicitAdams(dt=0.1), op.ImplicitAdams(dt=0.1, max_order=4)]
    assert [op.order(s) for s in solvers] == [8, 2, 2, 3, 2, 4, 4, 3, 5, 4]


@pytest.mark.filterwarnings("ignore:.*did not converge")  # at t = 0.25, in both alike
def test_adams_steps_land_on_stop_times():
    """With ``stop_times`` an Adams step is cut short to land on each (the grid goes on from it
    with the same dt), as torchdiffeq's grid through those times; jump times are refused."""
    f, y0 = PROBLEMS[sorted(PROBLEMS)[0]]()
    grid = torch.tensor([0.0, 0.1, 0.2, 0.25, 0.35, 0.45, 0.5, 0.6], dtype=F64)
    ref = torchdiffeq.odeint(f, y0, grid, method="implicit_adams")
    sol = op.solve(op.ODEProblem(f, y0, grid[[0, -1]], stop_times=grid[1:-1]), op.ImplicitAdams(dt=0.1))
    assert _rel(sol.ys[-1], ref[-1]) < 1e-13
    assert sol.stats.steps_accepted == len(grid) - 1
    with pytest.raises(op.UnsupportedCombinationError, match="stop_times/jump_times"):
        op.solve(op.ODEProblem(f, y0, grid[[0, -1]], jump_times=grid[1:2]), op.ExplicitAdams(dt=0.1))
