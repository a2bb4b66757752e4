"""The implicit solvers (plugin ``odeplug_implicit``): stiff problems solved to tolerance against
scipy's Radau at rtol 1e-10, gradients of every rule against Direct and float64 finite
differences, bit-identical replays (``step_from``), Newton failures as rejections, the counts
in ``Solution.stats``, and one-line option errors."""

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import odeplug as op
from odeplug import Counts, VectorField, make_stepper, solver_times

f64 = torch.float64
MU = 1000.0


def van_der_pol(t, y):
    return torch.stack([y[1], MU * (1 - y[0] ** 2) * y[1] - y[0]])


def van_der_pol_np(t, y):
    return [y[1], MU * (1 - y[0] ** 2) * y[1] - y[0]]


def robertson(t, y):
    return torch.stack([-0.04 * y[0] + 1e4 * y[1] * y[2],
                        0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2,
                        3e7 * y[1] ** 2])


def robertson_np(t, y):
    return [-0.04 * y[0] + 1e4 * y[1] * y[2], 0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2,
            3e7 * y[1] ** 2]


def _reference(fun, y0, ts):
    ref = solve_ivp(fun, (float(ts[0]), float(ts[-1])), y0, method="Radau", rtol=1e-10, atol=1e-12,
                    t_eval=ts.numpy())
    assert ref.success
    return torch.tensor(ref.y.T)


def _check_tolerance(sol, reference, rtol, atol, factor):
    # The global error of a stiff solve stays within a modest multiple of the local tolerance.
    allowed = factor * (atol + rtol * reference.abs())
    excess = ((sol.ys - reference).abs() / allowed).max()
    assert excess <= 1, f"error {float(excess):.3g} × the allowed {factor}·(atol + rtol·|y|)"


RTOL, ATOL = 1e-6, 1e-8


# ESDIRK methods have stage order 2, so on stiff problems their order drops (Hairer & Wanner
# IV.15) and their global error is a larger multiple of the local tolerance than Radau IIA's
# (stage order 3): on Van der Pol's y' at the slow manifold, ~300× against Radau's < 1×.
ESDIRK_FACTOR, RADAU_FACTOR = 1000, 100


@pytest.mark.parametrize("solver,factor", [(op.Kvaerno5(rtol=RTOL, atol=ATOL), ESDIRK_FACTOR),
                                           (op.RadauIIA5(rtol=RTOL, atol=ATOL), RADAU_FACTOR)],
                         ids=["Kvaerno5", "RadauIIA5"])
def test_van_der_pol_mu_1000_to_tolerance(solver, factor):
    ts = torch.linspace(0, 3000, 7, dtype=f64)
    y0 = [2.0, 0.0]
    sol = op.solve(op.ODEProblem(van_der_pol, torch.tensor(y0, dtype=f64), ts), solver, op.Direct())
    _check_tolerance(sol, _reference(van_der_pol_np, y0, ts), RTOL, ATOL, factor=factor)
    stats = sol.stats
    # The Jacobian and its LU factors are reused: far fewer of them than steps.
    assert 0 < stats["njev"] < stats["steps_accepted"] / 2
    assert stats["njev"] <= stats["nlu"] < stats["steps_accepted"] + stats["steps_rejected"] + stats["njev"]
    assert stats["newton_iterations"] > 0


@pytest.mark.parametrize("solver,factor", [(op.Kvaerno3(rtol=RTOL, atol=ATOL), ESDIRK_FACTOR),
                                           (op.Kvaerno4(rtol=RTOL, atol=ATOL), ESDIRK_FACTOR),
                                           (op.Kvaerno5(rtol=RTOL, atol=ATOL), ESDIRK_FACTOR),
                                           (op.RadauIIA5(rtol=RTOL, atol=ATOL), RADAU_FACTOR)],
                         ids=["Kvaerno3", "Kvaerno4", "Kvaerno5", "RadauIIA5"])
def test_robertson_to_tolerance(solver, factor):
    ts = torch.tensor([0.0, 1e-3, 1.0, 1e2, 1e4, 1e5], dtype=f64)
    y0 = [1.0, 0.0, 0.0]
    sol = op.solve(op.ODEProblem(robertson, torch.tensor(y0, dtype=f64), ts), solver, op.Direct())
    _check_tolerance(sol, _reference(robertson_np, y0, ts), RTOL, ATOL, factor=factor)
    # Mass is conserved by every Runge–Kutta method (a linear invariant).
    assert torch.allclose(sol.ys.sum(-1), torch.ones(len(ts), dtype=f64), atol=1e-12)


def test_krylov_matches_dense_and_counts_its_iterations():
    torch.manual_seed(0)
    n = 4
    A = -torch.diag(torch.logspace(0, 3, n, dtype=f64))
    W = 0.3 * torch.randn(n, n, dtype=f64)

    def f(t, y):
        return A @ y + torch.tanh(W @ y)

    problem = op.ODEProblem(f, torch.randn(n, dtype=f64), torch.linspace(0, 0.5, 3, dtype=f64))
    dense = op.solve(problem, op.Kvaerno5(rtol=1e-7, atol=1e-9), op.Direct())
    krylov = op.solve(problem, op.Kvaerno5(rtol=1e-7, atol=1e-9, linear_solver="krylov"), op.Direct())
    assert torch.allclose(dense.ys, krylov.ys, rtol=1e-5, atol=1e-7)
    assert krylov.stats["nlu"] == 0 and krylov.stats["krylov_iterations"] > 0
    assert "krylov_iterations" not in dense.stats


def test_batched_jacobian_takes_the_full_jacobians_steps():
    # A mini-batch whose rows f never couples: the block-diagonal Jacobian (one d × d block per
    # row, batched LU) is the full one's, so the solve takes the same steps to round-off.
    torch.manual_seed(3)
    batch, width = 5, 4
    rates = -torch.logspace(0, 3, width, dtype=f64)
    net = torch.nn.Sequential(torch.nn.Linear(width, 8), torch.nn.Tanh(), torch.nn.Linear(8, width)).double()

    def f(t, y):
        return rates * y + 0.1 * net(y)

    problem = op.ODEProblem(f, torch.randn(batch, width, dtype=f64), torch.linspace(0, 0.5, 3, dtype=f64))
    for kind in (op.Kvaerno5, op.RadauIIA5):
        full = op.solve(problem, kind(rtol=1e-7, atol=1e-9), op.Direct())
        batched = op.solve(problem, kind(rtol=1e-7, atol=1e-9, jacobian="batched"), op.Direct())
        assert torch.allclose(batched.ys, full.ys, rtol=1e-11, atol=1e-13)
        assert batched.stats["steps_accepted"] == full.stats["steps_accepted"]
        assert batched.stats["njev"] == full.stats["njev"] and batched.stats["nlu"] == full.stats["nlu"]


# -- gradients ---------------------------------------------------------------------------------

# Eigenvalues −1 … −30 and outputs every 0.1: stiff enough for the Newton machinery, mild enough
# for a backsolve adjoint, which reconstructs z backwards in time, where a decaying mode grows
# as e^(|λ|Δt) between resets (so continuous adjoints suit stiff problems only with dense
# outputs; Direct and ACA have no such limit).
def _stiff_problem(requires_grad=True):
    torch.manual_seed(1)
    n = 3
    A = -torch.diag(torch.logspace(0, 1.5, n, dtype=f64))
    W = (0.2 * torch.randn(n, n, dtype=f64)).requires_grad_(requires_grad)
    y0 = torch.randn(n, dtype=f64).requires_grad_(requires_grad)

    def f(t, y):
        return A @ y + torch.tanh(W @ y) + 0.1 * torch.sin(t)

    return f, y0, W


_LAST_STATS = {}


def _loss_and_grads(solver, rule, y0=None, W=None):
    f, y0_, W_ = _stiff_problem()
    y0 = y0_ if y0 is None else y0
    W = W_ if W is None else W

    def field(t, y):
        A = -torch.diag(torch.logspace(0, 1.5, 3, dtype=f64))
        return A @ y + torch.tanh(W @ y) + 0.1 * torch.sin(t)

    ts = torch.linspace(0, 1, 11, dtype=f64)
    sol = op.solve(op.ODEProblem(field, y0, ts), solver, rule)
    _LAST_STATS["stats"] = sol.stats  # filled in further by backward
    weights = torch.linspace(0.5, 1.5, sol.ys.numel(), dtype=f64).view_as(sol.ys)
    loss = (weights * sol.ys**2).sum()
    if not (y0.requires_grad or W.requires_grad):
        return loss, None
    return loss, torch.autograd.grad(loss, [y0, W])


SOLVERS = {
    "Kvaerno5": op.Kvaerno5(rtol=1e-8, atol=1e-10),
    "RadauIIA5": op.RadauIIA5(rtol=1e-8, atol=1e-10),
    "Kvaerno5-krylov": op.Kvaerno5(rtol=1e-7, atol=1e-9, linear_solver="krylov"),
}
RULES = {
    "Adjoint": op.Adjoint(), "Adjoint(Seminorm)": op.Adjoint(norm=op.Seminorm()), "GQAdjoint": op.GQAdjoint(),
    "GaussAdjoint": op.GaussAdjoint(), "ACA": op.ACA(),
}
CASES = [("Kvaerno5", rule) for rule in RULES] + [("RadauIIA5", "Adjoint(Seminorm)"), ("RadauIIA5", "ACA"),
                                                 ("Kvaerno5-krylov", "ACA")]


@pytest.mark.parametrize("solver_name", list(SOLVERS))
def test_direct_matches_float64_finite_differences(solver_name):
    solver = SOLVERS[solver_name]
    _, (g_y0, g_W) = _loss_and_grads(solver, op.Direct())
    f, y0, W = _stiff_problem(requires_grad=False)
    torch.manual_seed(2)
    dy, dW = torch.randn_like(y0), torch.randn_like(W)
    step = 1e-6
    with torch.no_grad():
        plus, _ = _loss_and_grads(solver, op.Direct(), y0 + step * dy, W + step * dW)
        minus, _ = _loss_and_grads(solver, op.Direct(), y0 - step * dy, W - step * dW)
    fd = float((plus - minus) / (2 * step))
    directional = float((g_y0 * dy).sum() + (g_W * dW).sum())
    assert abs(directional - fd) <= 1e-5 * max(1.0, abs(fd)), (directional, fd)


_DIRECT = {}


@pytest.mark.parametrize("solver_name,rule_name", CASES, ids=[f"{s}-{r}" for s, r in CASES])
def test_every_rule_matches_direct(solver_name, rule_name):
    solver = SOLVERS[solver_name]
    if solver_name not in _DIRECT:
        _DIRECT[solver_name] = _loss_and_grads(solver, op.Direct())[1]
    direct = _DIRECT[solver_name]
    got = _loss_and_grads(solver, RULES[rule_name])[1]
    if rule_name != "ACA":  # a backsolve reports its implicit solver's counts too
        stats = _LAST_STATS["stats"]
        assert stats["njev_backward"] > 0 and stats["newton_iterations_backward"] > 0
    scale = max(float(g.abs().max()) for g in direct)
    for mine, ref in zip(got, direct):
        if rule_name == "ACA":  # a replay of the same steps: Direct's gradient to round-off
            assert torch.allclose(mine, ref, rtol=1e-10, atol=1e-12 * scale)
        else:  # a continuous adjoint: Direct's up to the solves' errors
            assert float((mine - ref).abs().max()) <= 1e-5 * scale, (mine, ref)


# -- replay, failures, options ---------------------------------------------------------------

@pytest.mark.parametrize("solver", [op.Kvaerno3(rtol=1e-6, atol=1e-8), op.RadauIIA5(rtol=1e-6, atol=1e-8),
                                    op.Kvaerno5(rtol=1e-6, atol=1e-8, linear_solver="krylov")],
                         ids=["Kvaerno3", "RadauIIA5", "Kvaerno5-krylov"])
def test_step_from_reproduces_accepted_steps_bit_for_bit(solver):
    # Van der Pol with μ = 10 through a relaxation: Jacobians reused over steps, refreshed,
    # retried after Newton failures; every accepted step is replayed exactly.
    mu = 10.0

    def f(t, y):
        return torch.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])

    problem = op.ODEProblem(f, torch.tensor([2.0, 0.0], dtype=f64), torch.tensor([0.0, 12.0], dtype=f64))
    field = VectorField(problem.flat_field(), 1.0)
    stepper = make_stepper(solver, field, problem.layout)
    steps = []
    s = solver_times(problem.ts, 1.0)
    state = stepper.start(s[0], problem.flat_y0(), s[-1])
    op.advance(stepper, state, s[-1], Counts(), on_step=lambda step: steps.append(step))
    assert len(steps) > 20
    assert stepper.stats()["njev"] < len(steps)
    for step in steps:
        again = stepper.step_from(step.t0, step.y0, step.h)
        assert torch.equal(again.y1, step.y1)
        assert torch.equal(again.stages, step.stages)
        assert torch.equal(again.f1, step.f1)


def test_newton_failures_reject_the_step_and_are_counted():
    # Two Newton iterations allowed: solves from a poor predictor fail; each failure is retried
    # with a fresh Jacobian, then rejected with half the step; never accepted.
    ts = torch.tensor([0.0, 1.0, 100.0], dtype=f64)
    y0 = [1.0, 0.0, 0.0]
    solver = op.Kvaerno3(rtol=1e-6, atol=1e-8, max_newton_iterations=2)
    sol = op.solve(op.ODEProblem(robertson, torch.tensor(y0, dtype=f64), ts), solver, op.Direct())
    assert sol.stats["newton_failures"] > 0 and sol.stats["steps_rejected"] > 0
    _check_tolerance(sol, _reference(robertson_np, y0, ts), 1e-6, 1e-8, factor=ESDIRK_FACTOR)


@pytest.mark.parametrize("options,named", [
    (dict(linear_solver="gmres"), "linear_solver must be 'dense'"),
    (dict(jacobian="sparse"), "jacobian must be 'full'"),
    (dict(rtol=0.0), "rtol must be a positive number"),
    (dict(rtol=-1e-6), "rtol must be a positive number"),
    (dict(atol=-1.0), "atol must be a number >= 0"),
    (dict(newton_tol=2.0), "newton_tol must be a number in (0, 1)"),
    (dict(max_newton_iterations=0), "max_newton_iterations must be a positive int"),
    (dict(jacobian_reuse_rate=0), "jacobian_reuse_rate must be a number in (0, 1)"),
    (dict(first_step=0.0), "first_step must be a positive number"),
    (dict(stepsize=1.0), "stepsize"),
])
def test_bad_options_get_one_line_errors(options, named):
    with pytest.raises(op.InvalidOptionError) as raised:
        op.RadauIIA5(**options)
    message = str(raised.value)
    assert named in message and "\n" not in message


def test_float32_and_tuple_states_and_decreasing_times():
    def f(t, y):
        a, b = y
        return (-50.0 * (a - torch.cos(t)), -b)

    y0 = (torch.tensor([0.0], dtype=torch.float32), torch.ones(2, dtype=torch.float32))
    ts = torch.tensor([1.0, 0.5, 0.0])
    sol = op.solve(op.ODEProblem(f, y0, ts), op.Kvaerno4(rtol=1e-5, atol=1e-6), op.Direct())
    assert sol.ys[0].dtype == torch.float32 and sol.ys[1].shape == (3, 2)
    assert torch.allclose(sol.ys[1][-1], torch.full((2,), np.e, dtype=torch.float32), rtol=1e-4)


def test_a_backward_solve_that_cannot_follow_z_says_which_rules_can():
    """The bench's stiff neural ODE (rates 1 to 10⁴ plus a small MLP): Kvaerno5 solves it
    forwards, but a continuous adjoint integrates z backwards, where it grows like e^(10⁴ t):
    the error says so and names Direct and ACA, whose gradients agree."""
    from odeplug_implicit._bench import _StiffNeuralODE

    torch.manual_seed(0)
    model = _StiffNeuralODE(8, 16)
    y0 = torch.randn(2, 8, dtype=torch.float64)
    solver = op.Kvaerno5(rtol=1e-5, atol=1e-7, jacobian="batched")

    def gradient(rule):
        model.zero_grad()
        problem = op.ODEProblem(model, y0, torch.tensor([0.0, 1.0], dtype=torch.float64))
        (op.solve(problem, solver, rule).ys[-1] ** 2).mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    # The backward solve by Dopri5, whose stiffness test stops it in about a second (Kvaerno5
    # takes tens of seconds to find that its steps underflow).
    backward = op.Dopri5(rtol=1e-5, atol=1e-7, stiff_steps=200)
    with pytest.raises(op.SolveError, match=r"backward solve.*Direct\(\) and ACA\(\)"):
        gradient(op.Adjoint(solver=backward))
    for direct, aca in zip(gradient(op.Direct()), gradient(op.ACA())):
        torch.testing.assert_close(aca, direct, rtol=1e-8, atol=1e-12)
