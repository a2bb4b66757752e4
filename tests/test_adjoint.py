"""The Adjoint rule and the seminorm adjoint (issue 3), checked against things we did not write:
the analytic gradients of dz/dt = az, torchdiffeq's odeint_adjoint, the Direct rule, and float64
finite differences."""

import functools
import math

import pytest
import torch
import torchdiffeq
from hypothesis import given, settings
from hypothesis import strategies as st

import odeplug as op
from odeplug import _dispatch
from odeplug.testing.strategies import Linear, MLPField, mlp_problems

f64 = torch.float64


def analytic_errors(T, run):
    f = Linear()
    z0 = torch.tensor([10.0], dtype=f64, requires_grad=True)
    ts = torch.tensor([0.0, T], dtype=f64, requires_grad=True)
    ys = run(f, z0, ts)
    (ys[-1] ** 2).sum().backward()
    zT2 = 100 * math.exp(0.4 * T)
    exact = (20 * math.exp(0.4 * T), 2 * T * zT2, 0.4 * zT2)
    got = (z0.grad.item(), f.a.grad.item(), ts.grad[-1].item())
    return [abs(g - e) / abs(e) for g, e in zip(got, exact)]


def ours(rule):
    return lambda f, z0, ts: op.solve(op.ODEProblem(f, z0, ts), op.Dopri5(rtol=1e-8, atol=1e-8), rule).ys


def theirs(norm=None):
    options = {} if norm is None else {"norm": norm}
    return lambda f, z0, ts: torchdiffeq.odeint_adjoint(f, z0, ts, rtol=1e-8, atol=1e-8, adjoint_options=options)


@pytest.mark.parametrize("T", [19.0, 24.0, 29.0])
def test_analytic_gradients_no_worse_than_torchdiffeq(T):
    mine, reference = analytic_errors(T, ours(op.Adjoint())), analytic_errors(T, theirs())
    for m, r in zip(mine, reference):
        # Equal step sequences give equal dL/dT up to round-off of the forward value.
        assert m <= r * (1 + 1e-6) + 1e-15, (mine, reference)
    assert max(mine) < 6.2e-8


@pytest.mark.parametrize("T", [19.0, 24.0, 29.0])
def test_seminorm_analytic_gradients_match_torchdiffeq_seminorm(T):
    # torchdiffeq's "seminorm" still controls a_t; ours drops it too (as in the paper), so its
    # steps may be slightly longer: allow 5% on an error of ~5e-8.
    mine = analytic_errors(T, ours(op.Adjoint(norm=op.Seminorm())))
    reference = analytic_errors(T, theirs("seminorm"))
    for m, r in zip(mine, reference):
        assert m <= 1.05 * r + 1e-15, (mine, reference)


def _grads(problem_factory, rule, tol=1e-10):
    field, y0, ts = problem_factory()
    leaves = list(y0) if isinstance(y0, tuple) else [y0]
    for leaf in leaves:
        leaf.requires_grad_(True)
    ts = ts.clone().requires_grad_(True)
    sol = op.solve(op.ODEProblem(field, y0, ts), op.Dopri5(rtol=tol, atol=tol), rule)
    ys = sol.ys if isinstance(sol.ys, tuple) else (sol.ys,)
    weights = torch.linspace(0.5, 1.5, len(ts), dtype=f64)
    loss = sum((w.view(-1, *[1] * (y.ndim - 1)) * torch.sin(y)).sum() for y, w in zip(ys, [weights] * len(ys)))
    params = list(field.parameters())
    grads = torch.autograd.grad(loss, leaves + params + [ts])
    return torch.cat([g.reshape(-1) for g in grads]), sol.stats


@settings(max_examples=8)
@given(problem=mlp_problems(), seminorm=st.booleans())
def test_adjoint_matches_direct_on_random_fields(problem, seminorm):
    field, y0, ts = problem
    rule = op.Adjoint(norm=op.Seminorm()) if seminorm else op.Adjoint()

    def factory():
        copy = tuple(t.clone() for t in y0) if isinstance(y0, tuple) else y0.clone()
        return field, copy, ts

    adjoint, stats = _grads(factory, rule)
    direct, _ = _grads(factory, op.Direct())
    assert stats["nfe_backward"] > 0 and stats["steps_accepted_backward"] > 0
    error = (adjoint - direct).norm() / direct.norm().clamp_min(1e-12)
    assert error < 1e-6, float(error)


def test_time_gradients_against_finite_differences():
    field = MLPField(2, 8, seed=3)
    y0 = torch.tensor([[0.3, -0.7]], dtype=f64)
    ts = torch.tensor([0.2, 0.9, 1.4, 2.0], dtype=f64, requires_grad=True)

    def loss_of(times):
        sol = op.solve(op.ODEProblem(field, y0, times), op.Dopri5(rtol=1e-12, atol=1e-12), op.Adjoint())
        return (torch.linspace(1, 2, 4, dtype=f64).view(-1, 1, 1) * sol.ys**2).sum()

    (grad,) = torch.autograd.grad(loss_of(ts), ts)
    eps = 1e-6
    for k in range(len(ts)):
        bump = torch.zeros_like(ts)
        bump[k] = eps
        with torch.no_grad():
            fd = (loss_of(ts.detach() + bump) - loss_of(ts.detach() - bump)) / (2 * eps)
        assert abs(float(grad[k]) - float(fd)) <= 1e-6 * max(1.0, abs(float(fd))), (k, grad, fd)


def _backward_nfe_torchdiffeq(field, y0, ts, tol, norm=None):
    calls = {"n": 0}

    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = field

        def forward(self, t, y):
            calls["n"] += 1
            return self.inner(t, y)

    ys = torchdiffeq.odeint_adjoint(Counting(), y0, ts, rtol=tol, atol=tol,
                                    adjoint_options={} if norm is None else {"norm": norm})
    forward = calls["n"]
    ys.pow(2).sum().backward()
    return calls["n"] - forward


@pytest.mark.parametrize("seminorm", [False, True])
def test_backward_nfe_below_torchdiffeq_with_many_output_times(seminorm):
    field = MLPField(3, 16, seed=7)
    y0 = torch.randn(4, 3, dtype=f64, generator=torch.Generator().manual_seed(0))
    ts = torch.linspace(0, 3, 30, dtype=f64)
    rule = op.Adjoint(norm=op.Seminorm()) if seminorm else op.Adjoint()
    sol = op.solve(op.ODEProblem(field, y0.clone().requires_grad_(), ts), op.Dopri5(rtol=1e-5, atol=1e-5), rule)
    sol.ys.pow(2).sum().backward()
    reference = _backward_nfe_torchdiffeq(field, y0.clone().requires_grad_(), ts, 1e-5,
                                          "seminorm" if seminorm else None)
    # torchdiffeq restarts (a new initial-step search) at each of the 29 output times; we do not.
    assert sol.stats["nfe_backward"] < 0.8 * reference, (sol.stats["nfe_backward"], reference)


def test_seminorm_reduces_backward_work_when_outputs_do_not_cut_steps():
    field = MLPField(2, 32, seed=11, scale=2.0)
    y0 = torch.randn(8, 2, dtype=f64, generator=torch.Generator().manual_seed(1))
    ts = torch.tensor([0.0, 5.0], dtype=f64)
    counts = {}
    for name, rule in (("plain", op.Adjoint()), ("semi", op.Adjoint(norm=op.Seminorm()))):
        sol = op.solve(op.ODEProblem(field, y0.clone().requires_grad_(), ts), op.Dopri5(rtol=1e-6, atol=1e-6), rule)
        sol.ys[-1].pow(2).sum().backward()
        counts[name] = sol.stats["nfe_backward"]
    assert counts["semi"] < counts["plain"], counts


class WeightedRMS(op.Norm):
    """The README's example plugin norm: RMS with the a_z blocks weighted."""

    def __init__(self, weight):
        self.weight = weight


def test_a_registered_norm_drives_the_backward_solve():
    def norm(n: WeightedRMS, x: torch.Tensor, layout: op.Layout):
        weights = torch.cat([
            x.new_full((block.size,), n.weight if block.name.startswith("a_z") else 1.0)
            for block in layout.blocks
        ])
        return (weights * x.square()).mean().sqrt()

    op.register(norm)
    try:
        field = MLPField(2, 16, seed=5)
        y0 = torch.randn(4, 2, dtype=f64, generator=torch.Generator().manual_seed(2))
        ts = torch.linspace(0, 2, 3, dtype=f64)
        steps = {}
        for weight in (1.0, 1e6):
            sol = op.solve(op.ODEProblem(field, y0.clone().requires_grad_(), ts),
                           op.Dopri5(rtol=1e-6, atol=1e-6), op.Adjoint(norm=WeightedRMS(weight)))
            sol.ys.pow(2).sum().backward()
            steps[weight] = sol.stats["steps_accepted_backward"] + sol.stats["steps_rejected_backward"]
        assert steps[1e6] > steps[1.0], steps
    finally:
        _dispatch.unregister_for_tests("norm", (WeightedRMS, torch.Tensor, op.Layout))


def test_adjoint_options_are_validated():
    with pytest.raises(op.InvalidOptionError, match="norm must be an odeplug.Norm"):
        op.Adjoint(norm="seminorm")
    with pytest.raises(op.InvalidOptionError, match="rtol must be positive"):
        op.Adjoint(rtol=-1.0)
    problem = op.ODEProblem(Linear(), torch.ones(1, dtype=f64, requires_grad=True),
                            torch.tensor([0.0, 1.0], dtype=f64))
    sol = op.solve(problem, op.RK4(dt=0.1), op.Adjoint(rtol=1e-3))
    with pytest.raises(op.InvalidOptionError, match="fixed-step"):
        sol.ys.sum().backward()


def test_backward_tolerances_and_solver_can_differ_from_forward():
    field = MLPField(2, 8, seed=1)
    y0 = torch.randn(3, 2, dtype=f64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    ts = torch.linspace(0, 1, 4, dtype=f64)
    counts = []
    for rule in (op.Adjoint(rtol=1e-4, atol=1e-4), op.Adjoint(rtol=1e-9, atol=1e-9),
                 op.Adjoint(solver=op.RK4(dt=0.01))):
        sol = op.solve(op.ODEProblem(field, y0, ts), op.Dopri5(rtol=1e-6, atol=1e-6), rule)
        sol.ys.sum().backward()
        counts.append(sol.stats["nfe_backward"])
    assert counts[0] < counts[1]
    assert counts[2] >= 4 * 100  # 100 RK4 steps of 4 stages (+ restarts)


class _Contracting(torch.nn.Module):
    """dz/dt = −3(z − ½ sin(3θz)) + cos 3t: every solution is pulled to one trajectory at rate
    about 3, so z solved backwards in time is pushed away from it (issue 10's example)."""

    def __init__(self, theta: torch.Tensor) -> None:
        super().__init__()
        self.theta = torch.nn.Parameter(theta)

    def forward(self, t, z):
        return -3 * (z - 0.5 * torch.sin(3 * self.theta * z)) + torch.cos(3 * t)


_CONTRACTING_G = torch.Generator().manual_seed(1)
_CONTRACTING = _Contracting(torch.randn(4, dtype=f64, generator=_CONTRACTING_G))
_CONTRACTING_Y0 = torch.randn(4, dtype=f64, generator=_CONTRACTING_G) * 2


def _contracting_gradients(solve):
    y0 = _CONTRACTING_Y0.clone().requires_grad_()
    ts = torch.linspace(0, 8, 3, dtype=f64)  # 12 time constants between outputs
    ys = solve(_CONTRACTING, y0, ts)
    grads = torch.autograd.grad(ys.pow(2).sum(), [y0, _CONTRACTING.theta])
    return torch.cat([g.reshape(-1) for g in grads])


@functools.lru_cache(maxsize=1)
def _contracting_reference_and_torchdiffeq_error() -> tuple[torch.Tensor, float]:
    reference = _contracting_gradients(
        lambda f, y0, ts: op.solve(op.ODEProblem(f, y0, ts), op.Dopri5(rtol=1e-10, atol=1e-10)).ys)
    theirs = _contracting_gradients(
        lambda f, y0, ts: torchdiffeq.odeint_adjoint(f, y0, ts, rtol=1e-6, atol=1e-6))
    return reference, float((theirs - reference).abs().max() / reference.abs().max())


@pytest.mark.parametrize("rule", [op.Adjoint(), op.Adjoint(norm=op.Seminorm()), op.GQAdjoint(), op.GaussAdjoint()],
                         ids=["Adjoint", "Seminorm", "GQAdjoint", "GaussAdjoint"])
def test_contracting_dynamics_as_accurate_as_torchdiffeq(rule):
    """Against a tight Direct reference, within 10× torchdiffeq's odeint_adjoint error (which
    resets z at output times). Without the reset z drifts from the forward trajectory by e^12
    times the solver's error, and the backward solve exhausts its step budget."""
    reference, their_error = _contracting_reference_and_torchdiffeq_error()
    ours = _contracting_gradients(
        lambda f, y0, ts: op.solve(op.ODEProblem(f, y0, ts), op.Dopri5(rtol=1e-6, atol=1e-6, max_steps=5_000), rule).ys)
    our_error = float((ours - reference).abs().max() / reference.abs().max())
    assert our_error <= 10 * their_error, (our_error, their_error)


@pytest.mark.parametrize("base", [op.RMSNorm(), op.MixedNorm()], ids=lambda n: type(n).__name__)
def test_the_seminorm_saves_evaluations_over_its_own_base_norm(base):
    """Seminorm(base) against base itself, on the seminorm paper's setting (the sines model,
    W = 200, loss on the final state, tol 1e-6): the only difference is that a_θ and a_t are
    left out of the step control, so it must take clearly fewer backward evaluations (56
    against 80–92 when measured); a seminorm that controlled a_θ would take as many."""
    from odeplug.bench._sines import sines_backward

    plain = sines_backward(op.Adjoint(norm=base), 200, 2, 1e-6)["nfe_backward"]
    semi = sines_backward(op.Adjoint(norm=op.Seminorm(base=base)), 200, 2, 1e-6)["nfe_backward"]
    assert semi <= 0.8 * plain, (semi, plain)


# -- the speed-up machinery of the backward solve, each part checked where a bug would show ------

_RULES_ON_THE_BACKSOLVE = [op.Adjoint(), op.Adjoint(norm=op.Seminorm()), op.GQAdjoint(), op.GaussAdjoint()]
_RULE_IDS = ["Adjoint", "Seminorm", "GQAdjoint", "GaussAdjoint"]


def _forward_cost_model(field, y0, ts):
    """(start, per_attempt) with nfe = start + per_attempt·attempts for this solver's forward
    solve, fitted from two tolerances: the cost of a solve without jumps."""
    points = []
    for tol in (1e-4, 1e-8):
        stats = op.solve(op.ODEProblem(field, y0, ts), op.Dopri5(rtol=tol, atol=tol)).stats
        points.append((stats["steps_accepted"] + stats["steps_rejected"], stats["nfe"]))
    (a1, n1), (a2, n2) = points
    per_attempt = (n2 - n1) // (a2 - a1)
    assert per_attempt * (a2 - a1) == n2 - n1 and per_attempt > 0, points
    return n1 - per_attempt * a1, per_attempt


@pytest.mark.parametrize("rule", _RULES_ON_THE_BACKSOLVE, ids=_RULE_IDS)
def test_each_output_time_costs_the_backward_one_evaluation(rule):
    """At each interior output time the backward resets z and jumps a_z: one evaluation of the
    augmented field (one VJP), with the step size carried on and dL/dt_k read from that same
    evaluation. So the backward costs what a forward solve with the same attempts costs, plus
    exactly one evaluation per interior output time — not a fresh start (torchdiffeq's restart:
    an initial-step search too), not a second evaluation for the time gradient."""
    field = MLPField(3, 16, seed=7)
    y0 = torch.randn(4, 3, dtype=f64, generator=torch.Generator().manual_seed(0))
    ts = torch.linspace(0, 3, 12, dtype=f64)
    start, per_attempt = _forward_cost_model(field, y0, ts)
    sol = op.solve(op.ODEProblem(field, y0.clone().requires_grad_(), ts.clone().requires_grad_()),
                   op.Dopri5(rtol=1e-6, atol=1e-6), rule)
    (torch.linspace(1, 2, len(ts), dtype=f64).view(-1, 1, 1) * sol.ys.pow(2)).sum().backward()
    stats = sol.stats
    attempts = stats["steps_accepted_backward"] + stats["steps_rejected_backward"]
    jumps = len(ts) - 2
    assert stats["nfe_backward"] == start + per_attempt * attempts + jumps, (stats, start, per_attempt)
    if isinstance(rule, op.Adjoint):  # every evaluation of the augmented field is one VJP
        assert stats["vjp_backward"] == stats["nfe_backward"], stats


def _backward_attempts_and_step_ends(field, y0, ts, solver):
    """Accepted and rejected attempts of the Adjoint's backward solve for the loss |y(t_K)|²,
    and the user times where its accepted steps end (with their sizes), from the backward kit."""
    from odeplug.backward import AdjointSystem, backsolve

    problem = op.ODEProblem(field, y0, ts)
    with torch.no_grad():
        ys = op.solve(problem, solver).ys.reshape(len(ts), -1)
    grad_ys = torch.zeros_like(ys)
    grad_ys[-1] = 2 * ys[-1]
    system = AdjointSystem(problem, tuple(field.parameters()), integrals=True)
    ends = []
    # Backward solver time is s = −t (increasing ts), so a step's end in user time is −t1.
    result = backsolve(system, solver, ys, grad_ys, ts, 1.0,
                       on_step=lambda stepper, step, k: ends.append((-float(step.t1), float(step.h))))
    return result.counts.accepted + result.counts.rejected, ends


def test_an_output_time_just_past_a_step_costs_the_backward_at_most_one_step():
    """An output time a hair (10⁻⁶ of a step) past where a backward step would end shortens the
    next step to a sliver. The step after it must go on with the size proposed before the
    shortening (the Stepper contract), so the output costs at most that one extra step; a
    solver that grew h back from the sliver (×10 per step) would need about six more."""
    field = MLPField(3, 16, seed=7)
    y0 = torch.randn(4, 3, dtype=f64, generator=torch.Generator().manual_seed(0))
    solver = op.Dopri5(rtol=1e-7, atol=1e-7)
    T = 3.0
    base, ends = _backward_attempts_and_step_ends(field, y0, torch.tensor([0.0, T], dtype=f64), solver)
    assert len(ends) > 16, ends
    # Every third step end of the first two thirds (past the initial step's growth); the step
    # that follows each end has size ends[j + 1][1].
    for j in range(2, 2 * len(ends) // 3, 3):
        sliver = 1e-6 * ends[j + 1][1]
        ts = torch.tensor([0.0, ends[j][0] - sliver, T], dtype=f64)
        attempts, _ = _backward_attempts_and_step_ends(field, y0, ts, solver)
        assert attempts <= base + 1, (j, attempts, base)


@pytest.mark.parametrize("rule", [op.Adjoint, op.GQAdjoint, op.GaussAdjoint], ids=lambda r: r.__name__)
@pytest.mark.parametrize("backward", [op.RK4(dt=0.05), op.Midpoint(dt=0.02)], ids=["RK4", "Midpoint"])
def test_fixed_step_backward_solves_match_a_tight_reference(rule, backward):
    """With a fixed-step backward solver nothing hides a wrong first stage after a jump (an
    adaptive solver rejects and shrinks its way around one, paying only evaluations): after
    each output time's reset and jump the next step must start from F at the new state. Loss
    on every output, so a_z jumps at each; error against a float64 Direct reference at 1e-12,
    bounded by the backward solver's own order (RK4: (0.05)⁴, Midpoint: (0.02)²)."""
    field = MLPField(3, 16, seed=7)
    y0 = torch.randn(4, 3, dtype=f64, generator=torch.Generator().manual_seed(0))
    ts = torch.linspace(0, 3, 7, dtype=f64)

    def gradients(r):
        y = y0.clone().requires_grad_()
        sol = op.solve(op.ODEProblem(field, y, ts), op.Dopri5(rtol=1e-12, atol=1e-12), r)
        loss = (torch.linspace(1, 2, len(ts), dtype=f64).view(-1, 1, 1) * torch.sin(sol.ys)).sum()
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, [y, *field.parameters()])])

    reference = gradients(op.Direct())
    error = float((gradients(rule(solver=backward)) - reference).norm() / reference.norm())
    order, dt = (4, 0.05) if isinstance(backward, op.RK4) else (2, 0.02)
    assert error < 10 * dt**order, error


class _Forced(torch.nn.Module):
    """dz/dt = −z + a·sin(20t): the time derivative of f is 20× larger than what drives z, so
    the a_t channel, −∫ a_zᵀ ∂f/∂t dt, is the hardest block to integrate."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor([1.0, -0.5], dtype=f64))

    def forward(self, t, z):
        return -z + self.a * torch.sin(20 * t)


def test_the_seminorm_takes_the_same_steps_whether_or_not_time_gradients_are_asked():
    """a_t, like a_θ, never feeds back into the dynamics: the seminorm leaves it out of the step
    control, so asking for dL/dt must not change a single backward step. The plain norm
    controls a_t, and there it does (so the comparison can see a difference)."""
    field = _Forced()
    y0 = torch.tensor([1.0, 2.0], dtype=f64)
    steps = {}
    for name, rule in (("semi", op.Adjoint(norm=op.Seminorm())), ("plain", op.Adjoint())):
        for wants_ts in (False, True):
            ts = torch.linspace(0, 2, 4, dtype=f64).requires_grad_(wants_ts)
            sol = op.solve(op.ODEProblem(field, y0.clone().requires_grad_(), ts), op.Dopri5(rtol=1e-6, atol=1e-6), rule)
            sol.ys.pow(2).sum().backward()
            steps[name, wants_ts] = (sol.stats["steps_accepted_backward"], sol.stats["steps_rejected_backward"],
                                     sol.stats["nfe_backward"])
    assert steps["semi", True] == steps["semi", False], steps
    assert steps["plain", True] != steps["plain", False], steps
