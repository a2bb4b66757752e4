"""The adaptive checkpoint adjoint (issue 5), checked against things we did not write: the Direct
rule's gradients (backpropagation through the same steps), the analytic gradients of dz/dt = az,
and float64 finite differences."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import odeplug as op
from strategies import Linear, MLPField, TupleMLPField, mlp_problems, time_grids

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
        # RK4 is not first-same-as-last: every recomputed step evaluates all its stages (the
        # same number for every step, at least 4).
        per_step, rest = divmod(stats["nfe_backward"] - stats["nfe_recompute"], stats["steps_accepted"])
        assert rest == 0 and per_step >= 4


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
def test_step_from_reproduces_the_forward_bit_for_bit(solver, direction):
    """The backward recomputes each accepted step from its checkpoint (t_i, y_i, h_i), as ACA
    does (with the first stage handed over for first-same-as-last methods): same y_{i+1}."""
    from odeplug_aca._aca import _PrimableField, _Recorder, _step_sizes

    field_module = MLPField(3, 16, seed=4)
    y0 = torch.randn(5, 3, dtype=f64, generator=torch.Generator().manual_seed(0))
    ts = torch.tensor([0.0, 0.4, 1.3, 2.1], dtype=f64) * direction
    problem = op.ODEProblem(field_module, y0, ts)
    primable = _PrimableField(problem.flat_field())
    stepper = op.make_stepper(solver, op.VectorField(primable, problem.direction), problem.layout)
    recorder = _Recorder(stepper)
    taken = []
    s = op.solver_times(ts, problem.direction)

    def on_step(step):
        taken.append((step.t0, step.y0, recorder.h, step.t1, step.y1, recorder.f))

    with torch.no_grad():
        op.integrate(recorder, problem.flat_y0(), s, op.Counts(), on_step)
        assert len(taken) > 3
        t0s, _, proposed, t1s, _, _ = (torch.stack(x) if i in (0, 2, 3) else x
                                       for i, x in enumerate(zip(*taken)))
        hs, landed = _step_sizes(t0s, t1s, proposed, s[-1])
        # Fixed-step solvers land on the end time (2.1 = 30 · 0.07 = 21 · 0.1), adaptive ones pass it.
        assert bool(landed[-1]) == isinstance(solver, (op.RK4, op.Euler)) and not landed[:-1].any()
        for (t0, y, _, _, y1, f), h in zip(taken, hs):
            assert torch.equal(stepper.step_from(t0, y, h).y1, y1)
            if recorder.fsal:
                primable.prime(y, f if direction > 0 else -f)
                assert torch.equal(stepper.step_from(t0, y, h).y1, y1)
                assert primable.y is None  # the handed-over stage was used
    assert recorder.fsal == isinstance(solver, (op.Dopri5, op.Bosh3))


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
    # y and F(t, y) per checkpoint (Dopri5 is first-same-as-last), three float64 times per step.
    assert stats["checkpoint_bytes_peak"] == n * 2 * 6 * 8 + n * 3 * 8
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


def test_double_backward_is_refused():
    field = Linear()
    y0 = torch.ones(1, dtype=f64, requires_grad=True)
    sol = op.solve(op.ODEProblem(field, y0, torch.tensor([0.0, 1.0], dtype=f64)), op.Dopri5(), op.ACA())
    (g,) = torch.autograd.grad(sol.ys[-1].sum(), y0, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()


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
