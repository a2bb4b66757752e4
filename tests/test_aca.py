"""The adaptive checkpoint adjoint (issue 5), checked against things we did not write: the Direct
rule's gradients (backpropagation through the same steps), the analytic gradients of dz/dt = az,
and float64 finite differences."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import odeplug as op
from odeplug.testing.strategies import Linear, MLPField, TupleMLPField, mlp_problems, time_grids

f64 = torch.float64


def _gradients(field, y0, ts, solver, rule):
    """(all gradients flattened: y0, params, ts), stats, outputs."""
    y0 = tuple(t.detach().clone().requires_grad_() for t in y0) if isinstance(y0, tuple) \
        else y0.detach().clone().requires_grad_()
    ts = ts.detach().clone().requires_grad_()
    sol = op.solve(op.ODEProblem(field, y0, ts), solver, rule)
    ys = sol.ys if isinstance(sol.ys, tuple) else (sol.ys,)
    weights = torch.linspace(0.5, 1.5, len(ts), dtype=ys[0].dtype)
    loss = sum((weights.view(-1, *[1] * (y.ndim - 1)) * torch.sin(y)).sum() for y in ys)
    leaves = list(y0) if isinstance(y0, tuple) else [y0]
    grads = torch.autograd.grad(loss, leaves + list(field.parameters()) + [ts])
    return [g.reshape(-1) for g in grads], sol.stats, ys


def _assert_close(got, want, rtol):
    for g, w in zip(got, want):
        error = (g - w).norm() / w.norm().clamp_min(1e-300)
        assert error <= rtol or (g - w).norm() <= 1e-14, (float(error), g, w)


def _copy(y0):
    return tuple(t.clone() for t in y0) if isinstance(y0, tuple) else y0.clone()


@settings(max_examples=12)
@given(problem=mlp_problems(), solver=st.sampled_from(["dopri5", "tsit5", "bosh3"]))
def test_aca_equals_direct_on_random_fields(problem, solver):
    """Same steps, same gradients (y0, θ and every output time), to round-off, in float64:
    tensor and tuple states, increasing and decreasing times, several output times."""
    field, y0, ts = problem
    make = {"dopri5": op.Dopri5, "tsit5": op.Tsit5, "bosh3": op.Bosh3}[solver]
    direct, direct_stats, direct_ys = _gradients(field, _copy(y0), ts, make(rtol=1e-6, atol=1e-8), op.Direct())
    aca, stats, ys = _gradients(field, _copy(y0), ts, make(rtol=1e-6, atol=1e-8), op.ACA())
    for a, d in zip(ys, direct_ys):
        assert torch.equal(a, d)
    assert stats["steps_accepted"] == direct_stats["steps_accepted"]
    assert stats["nfe"] == direct_stats["nfe"]
    assert stats["checkpoints"] == stats["steps_accepted"]
    _assert_close(aca, direct, 1e-10)


@settings(max_examples=8)
@given(problem=mlp_problems(), budget=st.integers(1, 5))
def test_max_checkpoints_changes_nothing_but_the_cost(problem, budget):
    field, y0, ts = problem
    solver = op.Dopri5(rtol=1e-7, atol=1e-9)
    full, full_stats, _ = _gradients(field, _copy(y0), ts, solver, op.ACA())
    thin, stats, _ = _gradients(field, _copy(y0), ts, solver, op.ACA(max_checkpoints=budget))
    _assert_close(thin, full, 1e-12)
    assert 1 <= stats["checkpoints"] <= budget
    steps = stats["steps_accepted"]
    if steps > budget:
        assert stats["nfe_recompute"] > 0
        assert stats["nfe_backward"] == full_stats["nfe_backward"] + stats["nfe_recompute"]
    else:
        assert stats["nfe_recompute"] == 0


@settings(max_examples=6)
@given(ts=time_grids(min_points=2, max_points=5), tuple_state=st.booleans(), seed=st.integers(0, 99))
def test_fixed_step_solver(ts, tuple_state, seed):
    field = TupleMLPField((2, 1), 8, seed) if tuple_state else MLPField(3, 8, seed)
    g = torch.Generator().manual_seed(seed)
    y0 = tuple(torch.randn(2, d, generator=g, dtype=f64) for d in (2, 1)) if tuple_state \
        else torch.randn(2, 3, generator=g, dtype=f64)
    for budget in (None, 3):
        direct, _, _ = _gradients(field, _copy(y0), ts, op.RK4(dt=0.13), op.Direct())
        aca, stats, _ = _gradients(field, _copy(y0), ts, op.RK4(dt=0.13), op.ACA(max_checkpoints=budget))
        _assert_close(aca, direct, 1e-10)
        # RK4's steps compute F(t1, y1) (for the dense output), so every recomputed step is handed
        # its first stage and evaluates the other three and F(t1, y1), as in the forward; step 0
        # also evaluates F(t0, y0).
        assert stats["nfe_backward"] - stats["nfe_recompute"] == 4 * stats["steps_accepted"] + 1


@pytest.mark.parametrize("times", [[0.0, 1.0], [0.0, 0.91], [0.0, 0.5, 1.04], [4.0, 0.001], [4.0, 2.0, -1e-300]])
@pytest.mark.parametrize("solver", [op.RK4(dt=0.13), op.Euler(dt=0.13)], ids=lambda s: type(s).__name__)
def test_fixed_step_landing_on_the_end_time(times, solver):
    """The final fixed step is shortened to land on the end time, h = T − t0, and the Direct rule
    differentiates it: when T is a multiple of dt (0.91 = 7·0.13), and when landing rounds short
    and leaves a sliver step (4 → 0.001), whose start then depends on T, not on t0."""
    field = MLPField(3, 8, seed=0)
    y0 = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=f64)
    ts = torch.tensor(times, dtype=f64)
    direct, _, _ = _gradients(field, y0, ts, solver, op.Direct())
    aca, _, _ = _gradients(field, y0, ts, solver, op.ACA())
    _assert_close(aca, direct, 1e-10)


@pytest.mark.parametrize("solver", [op.Dopri5(rtol=1e-6, atol=1e-8), op.Bosh3(rtol=1e-5, atol=1e-7),
                                    op.RK4(dt=0.07), op.Euler(dt=0.1)], ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("direction", [1, -1])
def test_a_step_carries_what_its_recomputation_needs(solver, direction):
    """ACA recomputes each accepted step from (t_i, y_i, Step.h) and hands it F(t_i, y_i), the
    previous step's Step.f1: that reproduces y_{i+1} and F(t_{i+1}, y_{i+1}) bit for bit, one
    evaluation cheaper. Step.landed marks a fixed-step solver's landing on the end time only."""
    field_module = MLPField(3, 16, seed=4)
    y0 = torch.randn(5, 3, dtype=f64, generator=torch.Generator().manual_seed(0))
    ts = torch.tensor([0.0, 0.4, 1.3, 2.1], dtype=f64) * direction
    problem = op.ODEProblem(field_module, y0, ts)
    field = op.VectorField(problem.flat_field(), problem.direction)
    stepper = op.make_stepper(solver, field, problem.layout)
    taken = []
    with torch.no_grad():
        op.integrate(stepper, problem.flat_y0(), op.solver_times(ts, problem.direction), op.Counts(),
                     taken.append)
        assert len(taken) > 3
        fixed = isinstance(solver, (op.RK4, op.Euler))  # 2.1 = 30 · 0.07 = 21 · 0.1
        assert [bool(step.landed) for step in taken] == [False] * (len(taken) - 1) + [fixed]
        for before, step in zip([None, *taken], taken):
            nfe = field.nfe
            again = stepper.step_from(step.t0, step.y0, step.h)
            cost = field.nfe - nfe
            assert torch.equal(again.y1, step.y1) and torch.equal(again.f1, step.f1)
            if before is not None:
                field.prime(step.y0, before.f1)
                handed = stepper.step_from(step.t0, step.y0, step.h)
                assert torch.equal(handed.y1, step.y1) and torch.equal(handed.f1, step.f1)
                assert field.nfe - nfe == 2 * cost - 1


def _analytic(rule, solver, T=2.5, t0=0.0, z0=2.0, a=0.2, middle=None):
    f = Linear(a)
    z = torch.tensor([z0], dtype=f64, requires_grad=True)
    times = [t0, T] if middle is None else [t0, middle, T]
    ts = torch.tensor(times, dtype=f64, requires_grad=True)
    sol = op.solve(op.ODEProblem(f, z, ts), solver, rule)
    (sol.ys[-1] ** 2).sum().backward()
    return ts.grad, z.grad, f.a.grad, sol.stats


@pytest.mark.parametrize("budget", [None, 2])
def test_time_gradients_on_the_case_the_reference_implementation_gets_wrong(budget):
    """z' = 0.2 z, z0 = 2, L = z(2.5)²: dL/dt0 = −2a z0² e^{2a(T−t0)} = −4.349 (the reference
    implementation of ACA returns −17.4), dL/dT = +4.349, dL/dz0 = 2 z0 e^{2aT}, dL/da = 2T z(T)²."""
    ts_grad, z_grad, a_grad, stats = _analytic(op.ACA(max_checkpoints=budget), op.Dopri5(rtol=1e-10, atol=1e-10))
    exact = 2 * 0.2 * 4 * math.exp(2 * 0.2 * 2.5)
    assert float(ts_grad[0]) == pytest.approx(-exact, rel=1e-8)
    assert float(ts_grad[-1]) == pytest.approx(exact, rel=1e-8)
    assert float(z_grad[0]) == pytest.approx(2 * 2 * math.exp(1.0), rel=1e-8)
    assert float(a_grad) == pytest.approx(2 * 2.5 * 4 * math.exp(1.0), rel=1e-8)
    assert stats["nfe_backward"] > 0


@pytest.mark.parametrize("t0, T, middle", [(0.0, 2.5, 1.0), (1.0, 4.0, 3.5), (3.0, -1.0, 0.5)])
@pytest.mark.parametrize("a", [0.2, -0.7])
def test_analytic_time_gradients(t0, T, middle, a):
    """dL/dt0 = −2a z0² e^{2a(T−t0)}, dL/dT = +2a z0² e^{2a(T−t0)}, and 0 for an intermediate
    output time that L does not read; increasing and decreasing times."""
    ts_grad, _, _, _ = _analytic(op.ACA(), op.Dopri5(rtol=1e-11, atol=1e-12), T=T, t0=t0, z0=1.5,
                                 a=a, middle=middle)
    exact = 2 * a * 1.5**2 * math.exp(2 * a * (T - t0))
    assert float(ts_grad[0]) == pytest.approx(-exact, rel=1e-7)
    assert float(ts_grad[-1]) == pytest.approx(exact, rel=1e-7)
    assert abs(float(ts_grad[1])) <= 1e-12


def test_gradients_against_finite_differences():
    field = MLPField(2, 8, seed=3)
    y0 = torch.tensor([[0.3, -0.7]], dtype=f64)
    ts = torch.tensor([0.2, 0.9, 1.4, 2.0], dtype=f64)
    weights = torch.linspace(1, 2, 4, dtype=f64).view(-1, 1, 1)
    solver = op.Dopri5(rtol=1e-12, atol=1e-12)

    def loss_of(z0, times):
        return (weights * op.solve(op.ODEProblem(field, z0, times), solver, op.ACA()).ys ** 2).sum()

    z0, times = y0.clone().requires_grad_(), ts.clone().requires_grad_()
    g_y0, g_ts, g_b1 = torch.autograd.grad(loss_of(z0, times), (z0, times, field.b1))
    eps = 1e-6
    with torch.no_grad():
        for k in range(len(ts)):
            bump = torch.zeros_like(ts)
            bump[k] = eps
            fd = (loss_of(y0, ts + bump) - loss_of(y0, ts - bump)) / (2 * eps)
            assert float(g_ts[k]) == pytest.approx(float(fd), rel=1e-6, abs=1e-7)
        for i in range(2):
            bump = torch.zeros_like(y0)
            bump[0, i] = eps
            fd = (loss_of(y0 + bump, ts) - loss_of(y0 - bump, ts)) / (2 * eps)
            assert float(g_y0[0, i]) == pytest.approx(float(fd), rel=1e-6, abs=1e-7)
        for i in range(3):
            original = field.b1[i].item()
            field.b1[i] = original + eps
            plus = loss_of(y0, ts)
            field.b1[i] = original - eps
            minus = loss_of(y0, ts)
            field.b1[i] = original
            assert float(g_b1[i]) == pytest.approx(float((plus - minus) / (2 * eps)), rel=1e-6, abs=1e-7)


def test_float32_matches_direct_to_float32_round_off():
    field = MLPField(3, 16, seed=2, dtype=torch.float32)
    y0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    ts = torch.tensor([0.0, 0.5, 1.5], dtype=torch.float32)
    solver = op.Dopri5(rtol=1e-5, atol=1e-6)
    direct, _, _ = _gradients(field, y0, ts, solver, op.Direct())
    aca, stats, _ = _gradients(field, y0, ts, solver, op.ACA())
    _assert_close(aca, direct, 1e-5)
    assert stats["checkpoints"] == stats["steps_accepted"]


def test_stats_are_filled_in_by_backward_in_place():
    field = MLPField(2, 8, seed=1)
    y0 = torch.randn(3, 2, dtype=f64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    ts = torch.linspace(0, 3, 5, dtype=f64)
    sol = op.solve(op.ODEProblem(field, y0, ts), op.Dopri5(rtol=1e-6, atol=1e-6), op.ACA())
    stats = sol.stats
    assert "nfe_backward" not in stats
    n = stats["steps_accepted"]
    assert stats["checkpoints"] == n > 2
    # y per checkpoint, and F(t, y) for all but the first (Dopri5 is first-same-as-last: the
    # previous step computed it), three float64 times and a flag per step.
    assert stats["checkpoint_bytes_peak"] == (2 * n - 1) * 6 * 8 + n * (3 * 8 + 1)
    sol.ys.pow(2).sum().backward()
    assert sol.stats is stats
    # One step recomputed per accepted step; its first stage is reused except for step 0.
    assert stats["nfe_backward"] == 6 * n + 1
    assert stats["nfe_recompute"] == 0 and stats["steps_backward"] == n


def test_retain_graph_allows_a_second_backward():
    field = MLPField(2, 8, seed=1)
    y0 = torch.randn(3, 2, dtype=f64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    ts = torch.linspace(0, 1, 3, dtype=f64)
    sol = op.solve(op.ODEProblem(field, y0, ts), op.Dopri5(rtol=1e-6, atol=1e-6), op.ACA())
    loss = sol.ys.pow(2).sum()
    (first,) = torch.autograd.grad(loss, y0, retain_graph=True)
    (second,) = torch.autograd.grad(loss, y0)
    assert torch.equal(first, second)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(loss, y0)  # the checkpoints were freed with the graph


def test_no_gradient_needed_stores_nothing():
    field = MLPField(2, 8, seed=1)
    y0 = torch.randn(3, 2, dtype=f64, generator=torch.Generator().manual_seed(0))
    ts = torch.linspace(0, 1, 3, dtype=f64)
    with torch.no_grad():
        sol = op.solve(op.ODEProblem(field, y0, ts), op.Dopri5(), op.ACA())
    reference = op.solve(op.ODEProblem(field, y0, ts), op.Dopri5(), op.Direct())
    assert torch.equal(sol.ys, reference.ys.detach())
    assert sol.stats["checkpoints"] == 0 and not sol.ys.requires_grad


def test_memory_held_for_backward_is_one_step_plus_checkpoints():
    """What autograd keeps between forward and backward: the Direct rule's whole graph against
    ACA's checkpoints alone (its one-step graphs exist only inside backward)."""
    field = MLPField(4, 64, seed=0)
    y0 = torch.randn(32, 4, dtype=f64, generator=torch.Generator().manual_seed(0))
    ts = torch.linspace(0, 4, 3, dtype=f64)
    held = {}
    for name, rule in (("direct", op.Direct()), ("aca", op.ACA())):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            sol = op.solve(op.ODEProblem(field, y0, ts), op.Dopri5(rtol=1e-7, atol=1e-7), rule)
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in saved}
        for p in field.parameters():
            storages.pop(p.untyped_storage().data_ptr(), None)
        held[name] = sum(storages.values())
        steps = sol.stats["steps_accepted"]
    assert steps > 10
    assert held["aca"] <= sol.stats["checkpoint_bytes_peak"] + 3 * ts.numel() * 8
    assert held["aca"] < 0.05 * held["direct"], held


def test_options_and_errors():
    with pytest.raises(op.InvalidOptionError, match="max_checkpoints"):
        op.ACA(max_checkpoints=0)
    with pytest.raises(op.InvalidOptionError, match="max_checkpoints"):
        op.ACA(max_checkpoints=2.5)
    with pytest.raises(op.InvalidOptionError, match="did you mean 'max_checkpoints'"):
        op.ACA(max_checkpoint=3)
    problem = op.ODEProblem(Linear(), torch.ones(1, dtype=f64), torch.tensor([0.0, 1.0], dtype=f64))
    with pytest.raises(op.InvalidArgumentError, match="unknown option"):
        op.solve(problem, op.Dopri5(), op.ACA(), checkpoints=3)
    with pytest.raises(op.UnsupportedCombinationError, match="Dopri5"):
        op.solve(problem, op.TorchDiffEq(method="dopri5"), op.ACA())


class _WideField(torch.nn.Module):
    """A small state (2 × 4) and a large square weight: parameter gradients dominate memory."""

    def __init__(self, width: int = 256) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.inner = torch.nn.Parameter(torch.randn(4, width, generator=g, dtype=f64) / 2)
        self.square = torch.nn.Parameter(torch.randn(width, width, generator=g, dtype=f64) / width**0.5)
        self.outer = torch.nn.Parameter(torch.randn(width, 4, generator=g, dtype=f64) / width**0.5)

    def forward(self, t, y):
        return torch.tanh(torch.tanh(y @ self.inner) @ self.square) @ self.outer


def test_backward_holds_the_running_gradient_sum_and_one_contribution():
    """ACA's per-step parameter gradients are summed by autograd into one running sum in place:
    at most two parameter-sized tensors (the sum, one new contribution) plus one step's graph,
    where summing outside autograd would hold four."""
    from odeplug._memory import AllocatedBytes

    field = _WideField()
    y0 = torch.randn(2, 4, dtype=f64, generator=torch.Generator().manual_seed(1))
    ts = torch.linspace(0, 3, 4, dtype=f64)
    peaks = {}
    for name, rule in (("direct", op.Direct()), ("aca", op.ACA())):
        field.zero_grad(set_to_none=True)
        with AllocatedBytes() as meter:
            sol = op.solve(op.ODEProblem(field, y0, ts), op.Dopri5(rtol=1e-7, atol=1e-7), rule)
            sol.ys.pow(2).sum().backward()
        peaks[name] = meter.peak
    assert sol.stats["steps_accepted"] > 5
    params = sum(p.numel() * p.element_size() for p in field.parameters())
    square = field.square.numel() * field.square.element_size()
    assert peaks["aca"] <= 2 * params + square // 4, (peaks, params)
    assert peaks["direct"] > 2.5 * params, (peaks, params)  # the bound is not a formality


# -- random numbers drawn inside f ------------------------------------------------------------


class _DropoutField(torch.nn.Module):
    """f(t, y) = W2 dropout(tanh(W1 y + c t)): every evaluation draws a new mask (train mode)."""

    def __init__(self, dim: int = 3, width: int = 16, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.nn.Parameter(torch.randn(width, dim, generator=g, dtype=f64) / dim**0.5)
        self.c = torch.nn.Parameter(torch.randn(width, generator=g, dtype=f64) * 0.5)
        self.w2 = torch.nn.Parameter(torch.randn(dim, width, generator=g, dtype=f64) * 0.1 / width**0.5)
        self.drop = torch.nn.Dropout(0.3)

    def forward(self, t, y):
        return self.drop(torch.tanh(y @ self.w1.T + t * self.c)) @ self.w2.T


def _seeded_gradients(field, solver, rule, seed=7, create_graph=False):
    """Gradients (y0, ts, θ) of a solve that starts from the seeded global RNG; asserts that
    backward leaves the global RNG where it found it."""
    y0 = torch.randn(2, 3, dtype=f64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    ts = torch.tensor([0.0, 0.4, 1.0], dtype=f64, requires_grad=True)
    torch.manual_seed(seed)
    sol = op.solve(op.ODEProblem(field, y0, ts), solver, rule)
    loss = torch.sin(sol.ys).sum()
    before = torch.get_rng_state()
    grads = torch.autograd.grad(loss, [y0, ts, *field.parameters()], create_graph=create_graph)
    assert torch.equal(torch.get_rng_state(), before)
    return [g.reshape(-1) for g in grads], sol


@pytest.mark.parametrize("budget", [None, 2])
@pytest.mark.parametrize("solver", [op.Dopri5(rtol=1e-4, atol=1e-5), op.Bosh3(rtol=1e-3, atol=1e-4),
                                    op.RK4(dt=0.1)], ids=lambda s: type(s).__name__)
def test_dropout_is_replayed(solver, budget):
    """Dropout in train mode: each recomputed step draws the masks its accepted attempt drew in
    the forward (not those of the rejected attempts before it), F(t0, y0) those of f's first
    evaluation; so the gradients are the Direct rule's, and the global RNG after backward is
    what it was before."""
    field = _DropoutField()
    direct, direct_sol = _seeded_gradients(field, solver, op.Direct())
    aca, sol = _seeded_gradients(field, solver, op.ACA(max_checkpoints=budget))
    assert torch.equal(sol.ys, direct_sol.ys)
    if isinstance(solver, op.Dopri5):
        assert sol.stats["steps_rejected"] > 0
    _assert_close(aca, direct, 1e-10)
    # The draws' record: one generator state per step.
    assert sol.stats["checkpoint_bytes_peak"] >= sol.stats["steps_accepted"] * torch.get_rng_state().numel()


def test_dropout_needs_steps_that_return_their_end_slope():
    """A stepper whose steps leave Step.f1 unset evaluates F(t_i, y_i) outside the step: its
    draws cannot be replayed from the step's own record, and ACA says so."""
    from odeplug import _dispatch

    @op.configuration
    class WithoutEndSlope(op.Solver):
        pass

    class Stepper(op.Stepper):
        def __init__(self, inner):
            self.inner, self.field = inner, inner.field
            self.max_steps, self.order = inner.max_steps, inner.order

        def start(self, t0, y0, t_end):
            return self.inner.start(t0, y0, t_end)

        def attempt(self, state, t_target, land=False):
            new_state, step, status = self.inner.attempt(state, t_target, land)
            return new_state, None if step is None else step._replace(f1=None), status

        def interpolate(self, step, t):
            return self.inner.interpolate(step, t)

        def restart(self, state, y):
            return self.inner.restart(state, y)

        def step_from(self, t0, y0, h):
            return self.inner.step_from(t0, y0, h)._replace(f1=None)

    def make_stepper(solver: WithoutEndSlope, field: op.VectorField, layout: op.Layout):
        return Stepper(op.make_stepper(op.Dopri5(rtol=1e-4, atol=1e-5), field, layout))

    op.register(make_stepper)
    try:
        field = MLPField(3, 8, seed=0)
        direct, _ = _seeded_gradients(field, WithoutEndSlope(), op.Direct())
        aca, _ = _seeded_gradients(field, WithoutEndSlope(), op.ACA())
        _assert_close(aca, direct, 1e-10)  # deterministic f: the first stages are evaluated
        with pytest.raises(op.UnsupportedCombinationError, match="Step.f1"):
            _seeded_gradients(_DropoutField(), WithoutEndSlope(), op.ACA())
    finally:
        _dispatch.unregister_for_tests("make_stepper", (WithoutEndSlope, op.VectorField, op.Layout))


# -- second derivatives ---------------------------------------------------------------------


def test_second_derivatives_of_the_linear_problem():
    """dz/dt = a z, L = z(T)² + a²: d²L/da² = 4T² z0² e^{2aT} + 2, and the whole Hessian in
    (z0, a, T) equals the Direct rule's."""
    T, z0 = 1.5, 1.0

    def hessian(rule):
        f = Linear(0.2)
        z = torch.tensor([z0], dtype=f64, requires_grad=True)
        ts = torch.tensor([0.0, T], dtype=f64, requires_grad=True)
        sol = op.solve(op.ODEProblem(f, z, ts), op.Dopri5(rtol=1e-10, atol=1e-10), rule)
        loss = sol.ys[-1].pow(2).sum() + f.a**2
        wrt = [z, f.a, ts]
        grads = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, wrt, create_graph=True)])
        rows = [torch.cat([h.reshape(-1) for h in torch.autograd.grad(g, wrt, retain_graph=True)])
                for g in grads]
        return torch.stack(rows)  # over (z0, a, t0, T)

    aca, direct = hessian(op.ACA()), hessian(op.Direct())
    assert float(aca[1, 1]) == pytest.approx(4 * T**2 * z0**2 * math.exp(0.4 * T) + 2, rel=1e-8)
    _assert_close(aca.reshape(-1, 1), direct.reshape(-1, 1), 1e-10)


@pytest.mark.parametrize("budget", [None, 2])
@pytest.mark.parametrize("solver", [op.Dopri5(rtol=1e-6, atol=1e-8), op.RK4(dt=0.13)],
                         ids=lambda s: type(s).__name__)
def test_hessian_vector_products_equal_directs(solver, budget):
    """create_graph=True, then a second backward: the gradient and the Hessian-vector product
    in (y0, every output time, θ) equal the Direct rule's, including RK4's landing step."""

    def hvp(rule):
        field = MLPField(3, 8, seed=1)
        y0 = torch.randn(2, 3, dtype=f64, generator=torch.Generator().manual_seed(0)).requires_grad_()
        ts = torch.tensor([0.0, 0.45, 1.1], dtype=f64, requires_grad=True)
        sol = op.solve(op.ODEProblem(field, y0, ts), solver, rule)
        wrt = [y0, ts, *field.parameters()]
        grads = torch.autograd.grad(torch.sin(sol.ys).sum(), wrt, create_graph=True)
        products = torch.autograd.grad(sum(g.sum() for g in grads), wrt)
        return [g.detach().reshape(-1) for g in grads] + [p.reshape(-1) for p in products]

    _assert_close(hvp(op.ACA(max_checkpoints=budget)), hvp(op.Direct()), 1e-10)


def test_second_derivatives_replay_dropout():
    field = _DropoutField()
    solver = op.Dopri5(rtol=1e-4, atol=1e-5)
    results = {}
    for name, rule in (("direct", op.Direct()), ("aca", op.ACA())):
        grads, _ = _seeded_gradients(field, solver, rule, create_graph=True)
        wrt = [*field.parameters()]
        before = torch.get_rng_state()
        products = torch.autograd.grad(sum(g.sum() for g in grads), wrt)
        assert torch.equal(torch.get_rng_state(), before)
        results[name] = [g.detach() for g in grads] + [p.reshape(-1) for p in products]
    _assert_close(results["aca"], results["direct"], 1e-10)


def test_gradcheck_and_gradgradcheck():
    """Finite differences of the solution and of its gradient (fixed steps: the computed solution
    is smooth in y0, every output time and w; the outputs lie inside steps)."""
    w = (torch.randn(3, 3, dtype=f64, generator=torch.Generator().manual_seed(2)) / 2).requires_grad_()
    y0 = torch.randn(2, 3, dtype=f64, generator=torch.Generator().manual_seed(3)).requires_grad_()
    ts = torch.tensor([0.0, 0.35, 0.65], dtype=f64, requires_grad=True)

    def solution(y0, ts, w):
        problem = op.ODEProblem(lambda t, y: torch.tanh(y @ w) * (1 + t), y0, ts)
        return op.solve(problem, op.RK4(dt=0.1), op.ACA()).ys

    assert torch.autograd.gradcheck(solution, (y0, ts, w))
    assert torch.autograd.gradgradcheck(solution, (y0, ts, w))


# -- module buffers, closures ---------------------------------------------------------------


class _BatchNormField(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.BatchNorm1d(8), torch.nn.Tanh(),
                                       torch.nn.Linear(8, 3)).double()

    def forward(self, t, y):
        return self.net(y)


@pytest.mark.parametrize("budget", [None, 2])
def test_batchnorm_running_statistics_are_the_forwards(budget):
    """BatchNorm in train mode updates its running statistics at every evaluation. ACA's forward
    evaluates f exactly where the Direct rule does (its first evaluation is the one that found
    what f depends on), so the statistics after its forward are Direct's; its backward
    re-evaluates f, and leaves them as the forward did — as Direct's backward, which evaluates
    nothing. The gradients (batch statistics, a deterministic function) are Direct's too."""
    results = {}
    for name, rule in (("direct", op.Direct()), ("aca", op.ACA(max_checkpoints=budget))):
        torch.manual_seed(0)
        field = _BatchNormField()
        y0 = torch.randn(5, 3, dtype=f64, generator=torch.Generator().manual_seed(1)).requires_grad_()
        ts = torch.tensor([0.0, 0.5, 1.0], dtype=f64)
        sol = op.solve(op.ODEProblem(field, y0, ts), op.Dopri5(rtol=1e-6, atol=1e-8), rule)
        after_forward = [b.clone() for b in field.buffers()]
        grads = torch.autograd.grad(torch.sin(sol.ys).sum(), [y0, *field.parameters()])
        results[name] = (after_forward, [b.clone() for b in field.buffers()], grads, sol.stats)
    (d_forward, d_backward, d_grads, _), (a_forward, a_backward, a_grads, stats) = results.values()
    assert stats["nfe_backward"] > 0 and int(d_forward[-1]) == stats["nfe"]  # num_batches_tracked
    for d, a_f, a_b in zip(d_forward, a_forward, a_backward):
        assert torch.equal(a_f, d) and torch.equal(a_b, d)
    assert all(torch.equal(d, b) for d, b in zip(d_forward, d_backward))
    _assert_close([g.reshape(-1) for g in a_grads], [g.reshape(-1) for g in d_grads], 1e-10)


@pytest.mark.parametrize("kind", ["leaf", "derived", "duplicated"])
def test_closures_get_directs_gradients(kind):
    """f a plain function closing over a leaf w; over softplus(raw), raw also used in the loss
    elsewhere (its gradient arrives through both); over w named twice in params=[w, w]."""

    def gradients(rule):
        g = torch.Generator().manual_seed(5)
        w = torch.randn(3, 3, dtype=f64, generator=g).requires_grad_()
        raw = torch.randn(3, dtype=f64, generator=g).requires_grad_()
        y0 = torch.randn(4, 3, dtype=f64, generator=g).requires_grad_()
        ts = torch.tensor([0.0, 0.7, 1.5], dtype=f64)
        scale = torch.nn.functional.softplus(raw)
        if kind == "derived":
            field, params = (lambda t, y: scale * torch.tanh(y @ w)), None
        else:
            field, params = (lambda t, y: torch.tanh(y @ w)), ([w, w] if kind == "duplicated" else None)
        sol = op.solve(op.ODEProblem(field, y0, ts, params=params), op.Dopri5(rtol=1e-7, atol=1e-9), rule)
        loss = torch.sin(sol.ys).sum() + scale.pow(2).sum()
        return [x.reshape(-1) for x in torch.autograd.grad(loss, [y0, w, raw])]

    _assert_close(gradients(op.ACA()), gradients(op.Direct()), 1e-10)


def test_bench_reports_acas_floor_in_the_same_rounds(tmp_path):
    """`odeplug bench aca`: every setting has a ``floor`` row (the Direct rule's step plus a
    graph-free forward solve, timed in the same rounds), ACA's ``vs_floor`` with min/median/max
    over those rounds, and the activation-dominated batch beside the sines batch at tol 1e-7."""
    import json

    from odeplug._cli import main
    from odeplug_aca._bench import BATCH, WIDE_BATCH

    out = tmp_path / "rows.json"
    argv = ["bench", "aca", "--widths", "4", "--epochs", "3", "--tol", "1e-3", "--rules", "Direct,ACA",
            "--threads", "1", "--no-progress", "--json", str(out)]
    assert main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    settings = [(r["width"], r["batch"], r["tol"]) for r in rows if r["rule"] == "floor"]
    assert settings == [(4, BATCH, 1e-3), (4, BATCH, 1e-7), (4, WIDE_BATCH, 1e-7)]
    for row in rows:
        assert row["step_s_min"] <= row["step_s"] <= row["step_s_max"]
        if row["rule"] == "ACA":
            assert row["vs_floor_min"] <= row["vs_floor"] <= row["vs_floor_max"]
            assert 0 < row["peak_vs_Direct"] < 1
            # Dopri5: F(s_0, y_0) once, then 6 evaluations per step (the first stage handed over).
            assert row["nfe_bwd"] == 1 + 6 * row["steps"]
        if row["rule"] == "floor":
            assert row["time_vs_Direct_min"] > 1  # Direct's step plus a forward solve
