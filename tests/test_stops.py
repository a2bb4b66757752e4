"""Step control (issue 12): stop and jump times, min_step/max_step, per-element tolerances and
step callbacks, checked against things we did not write: the analytic solution of a piecewise
linear system, torchdiffeq's own step counts with ``jump_t``, finite differences in float64."""

from __future__ import annotations

import pytest
import torch

import odeplug as op
from odeplug.bench import gradient_rules

f64 = torch.float64
T_JUMP = 1.3
A1 = ((-0.5, 1.0), (-1.0, -0.5))
A2 = ((0.3, -2.0), (2.0, 0.1))


def _piecewise(direction: int = 1, requires_grad: bool = True):
    """f = A1 y before T_JUMP, A2 y after (in user time), over [0, 3] or [3, 0]."""
    a1 = torch.tensor(A1, dtype=f64, requires_grad=requires_grad)
    a2 = torch.tensor(A2, dtype=f64, requires_grad=requires_grad)
    y0 = torch.tensor([1.0, 0.5], dtype=f64, requires_grad=requires_grad)
    ts = torch.linspace(0.0, 3.0, 7, dtype=f64)
    if direction < 0:
        ts = ts.flip(0)

    def f(t, y):
        return (a1 if t < T_JUMP else a2) @ y

    return f, y0, ts, a1, a2


def _exact(y0, ts, a1, a2):
    """The analytic solution, from ts[0] (either side of the jump)."""
    a1, a2, y0 = a1.detach(), a2.detach(), y0.detach()

    def flow(t0, t1):  # propagator from t0 to t1
        def piece(a, b):
            return torch.linalg.matrix_exp((a1 if max(a, b) <= T_JUMP else a2) * (b - a))

        if (t0 - T_JUMP) * (t1 - T_JUMP) < 0:
            return piece(T_JUMP, t1) @ piece(t0, T_JUMP)
        return piece(t0, t1)

    t0 = float(ts[0])
    return torch.stack([flow(t0, float(t)) @ y0 for t in ts])


def _solve(direction, solver, rule, **problem):
    f, y0, ts, a1, a2 = _piecewise(direction)
    sol = op.solve(op.ODEProblem(f, y0, ts, params=[a1, a2], **problem), solver, rule)
    return sol, (y0, a1, a2), (f, ts)


def _loss(ys):
    return (torch.sin(ys) * torch.linspace(0.5, 1.5, ys.numel(), dtype=f64).view_as(ys)).sum()


# -- jump times ---------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", [1, -1])
def test_jump_times_cut_rejections_and_match_the_analytic_solution(direction):
    solver = op.Dopri5(rtol=1e-8, atol=1e-10)
    plain, _, _ = _solve(direction, solver, op.Direct())
    jumped, (y0, a1, a2), (_, ts) = _solve(direction, solver, op.Direct(), jump_times=[T_JUMP])
    exact = _exact(y0, ts, a1, a2)
    jumped.ys, plain.ys = jumped.ys.detach(), plain.ys.detach()
    # Measured: forward 45 rejected / 704 evaluations without, 10 / 399 with jump_times.
    assert jumped.stats["steps_rejected"] * 3 <= plain.stats["steps_rejected"]
    assert jumped.stats["nfe"] < 0.7 * plain.stats["nfe"]
    error, error_plain = float((jumped.ys - exact).abs().max()), float((plain.ys - exact).abs().max())
    assert error < 1e-8 and error_plain > 10 * error


@pytest.mark.parametrize("direction", [1, -1])
def test_jump_times_take_torchdiffeqs_steps(direction):
    torchdiffeq = pytest.importorskip("torchdiffeq")
    f, y0, ts, _, _ = _piecewise(direction, requires_grad=False)

    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.nfe = self.accepted = self.rejected = 0

        def forward(self, t, y):
            self.nfe += 1
            return f(t, y)

        def callback_accept_step(self, t0, y0, dt):
            self.accepted += 1

        def callback_reject_step(self, t0, y0, dt):
            self.rejected += 1

    reference = Counting()
    want = torchdiffeq.odeint(reference, y0, ts, rtol=1e-8, atol=1e-10,
                              options={"jump_t": torch.tensor([T_JUMP], dtype=f64)})
    sol = op.solve(op.ODEProblem(f, y0, ts, jump_times=[T_JUMP]), op.Dopri5(rtol=1e-8, atol=1e-10))
    assert (sol.stats["nfe"], sol.stats["steps_accepted"], sol.stats["steps_rejected"]) == (
        reference.nfe, reference.accepted, reference.rejected)
    # (torchdiffeq evaluates every end-of-step stage a float early; odeplug only at jumps.)
    assert torch.allclose(sol.ys, want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("direction", [1, -1])
def test_every_rule_agrees_with_direct_and_finite_differences_across_a_jump(direction):
    solver = op.Dopri5(rtol=1e-10, atol=1e-12)
    grads = {}
    for name, rule in gradient_rules().items():
        sol, leaves, (_, ts) = _solve(direction, solver, rule, jump_times=[T_JUMP], stop_times=[0.77])
        ts_leaf = ts  # ts gradients: the jump's Dirac mass in ∂f/∂t is accounted for
        grads[name] = [g.reshape(-1) for g in torch.autograd.grad(_loss(sol.ys), leaves)]
    direct = grads["Direct"]
    for name, got in grads.items():
        for g, w in zip(got, direct):
            assert float((g - w).norm() / w.norm()) < 1e-6, name
    # Direct against central differences of the analytic solution's loss.
    f, y0, ts, a1, a2 = _piecewise(direction, requires_grad=False)
    for leaf_index, leaf in enumerate((y0, a1, a2)):
        fd = torch.zeros(leaf.numel(), dtype=f64)
        for i in range(leaf.numel()):
            values = []
            for sign in (1, -1):
                bumped = [y0.clone(), a1.clone(), a2.clone()]
                bumped[leaf_index].view(-1)[i] += sign * 1e-6
                values.append(float(_loss(_exact(bumped[0], ts, bumped[1], bumped[2]))))
            fd[i] = (values[0] - values[1]) / 2e-6
        assert float((direct[leaf_index] - fd).norm() / fd.norm()) < 1e-6, leaf_index


@pytest.mark.parametrize("direction", [1, -1])
@pytest.mark.parametrize("rule", ["ACA", "Adjoint", "GQAdjoint", "GaussAdjoint"])
def test_time_gradients_across_a_jump_match_direct(direction, rule):
    """dL/dt_0 includes the jump's term a_zᵀ(f⁺ − f⁻), which an adjoint's a_t cannot see."""
    solver = op.Dopri5(rtol=1e-8, atol=1e-10)
    got = {}
    for name in ("Direct", rule):
        f, y0, ts, a1, a2 = _piecewise(direction)
        ts = ts.clone().requires_grad_()
        sol = op.solve(op.ODEProblem(f, y0, ts, params=[a1, a2], jump_times=[T_JUMP]), solver,
                       gradient_rules()[name])
        (got[name],) = torch.autograd.grad(_loss(sol.ys), [ts])
    assert torch.allclose(got[rule], got["Direct"], rtol=1e-5, atol=1e-6)
    # and Direct's dL/dt_0 is the analytic one, −a(t_0)ᵀ f(t_0, y_0) …  by finite differences:
    f, y0, ts, a1, a2 = _piecewise(direction, requires_grad=False)
    values = []
    for sign in (1, -1):
        bumped = ts.clone()
        bumped[0] += sign * 1e-6
        values.append(float(_loss(_exact(y0, bumped, a1, a2))))
    assert abs(float(got["Direct"][0]) - (values[0] - values[1]) / 2e-6) < 1e-5 * abs(float(got["Direct"][0]))


def test_fixed_step_solvers_land_on_jumps_and_aca_replays_them():
    for direction in (1, -1):
        sol, (y0, a1, a2), (_, ts) = _solve(direction, op.RK4(dt=0.05), op.Direct(), jump_times=[T_JUMP])
        assert float((sol.ys.detach() - _exact(y0, ts, a1, a2)).abs().max()) < 1e-5
        want = torch.autograd.grad(_loss(sol.ys), (y0, a1, a2))
        sol, leaves, _ = _solve(direction, op.RK4(dt=0.05), op.ACA(), jump_times=[T_JUMP])
        got = torch.autograd.grad(_loss(sol.ys), leaves)
        for g, w in zip(got, want):
            assert torch.allclose(g, w, rtol=1e-12, atol=1e-14)


def test_steps_land_exactly_on_stops_and_reuse_the_last_stage():
    seen = []

    class Record:
        def callback_accept_step(self, t0, y0, dt):
            seen.append((float(t0), float(dt)))

    f, y0, ts, _, _ = _piecewise(requires_grad=False)
    stops = [0.4, 1.0, 2.2]
    solver = op.Dopri5(rtol=1e-6, atol=1e-8)
    sol = op.solve(op.ODEProblem(lambda t, y: -y, y0, ts, stop_times=stops, callbacks=Record()), solver)
    ends = [t0 + dt for t0, dt in seen]
    for stop in stops:
        assert any(end == stop for end in ends), (stop, ends)
    # First same as last: 6 evaluations per attempt, plus F(t0, y0) and the initial-step probe.
    attempts = sol.stats["steps_accepted"] + sol.stats["steps_rejected"]
    assert sol.stats["nfe"] == 6 * attempts + 2
    # A jump costs exactly one more evaluation (f just after it).
    jumped = op.solve(op.ODEProblem(lambda t, y: -y, y0, ts, jump_times=stops), solver)
    attempts = jumped.stats["steps_accepted"] + jumped.stats["steps_rejected"]
    assert jumped.stats["nfe"] == 6 * attempts + 2 + len(stops)


def test_jump_sides_f_sees():
    """Stages of the step ending on a jump see f just before it, the next step just after."""
    times = []

    def f(t, y):
        times.append(float(t))
        return -y

    y0 = torch.ones(1, dtype=f64)
    op.solve(op.ODEProblem(f, y0, torch.tensor([0.0, 2.0], dtype=f64), jump_times=[1.0]), op.Dopri5())
    assert 1.0 not in times
    assert max(t for t in times if t < 1.0) == torch.nextafter(torch.tensor(1.0, dtype=f64),
                                                               torch.tensor(0.0, dtype=f64)).item()
    assert min(t for t in times if t > 1.0) == torch.nextafter(torch.tensor(1.0, dtype=f64),
                                                               torch.tensor(2.0, dtype=f64)).item()


def test_stop_and_jump_time_errors():
    f = lambda t, y: -y  # noqa: E731
    y0 = torch.ones(2, dtype=f64)
    ts = torch.linspace(0, 1, 3, dtype=f64)
    with pytest.raises(op.InvalidArgumentError, match="jump_times requires grad"):
        op.ODEProblem(f, y0, ts, jump_times=torch.tensor([0.5], requires_grad=True))
    with pytest.raises(op.InvalidArgumentError, match="stop_times contains NaN"):
        op.ODEProblem(f, y0, ts, stop_times=[float("nan")])
    with pytest.raises(op.InvalidArgumentError, match="stop_times must be a sequence"):
        op.ODEProblem(f, y0, ts, stop_times="soon")
    with pytest.raises(op.InvalidArgumentError, match="stop_times must be a 1-D tensor"):
        op.ODEProblem(f, y0, ts, stop_times=torch.zeros(2, 2))
    with pytest.raises(op.InvalidArgumentError, match="callbacks must be an object"):
        op.ODEProblem(f, y0, ts, callbacks=object())


# -- min_step / max_step ---------------------------------------------------------------------


def test_max_step_caps_every_step():
    seen = []

    class Record:
        def callback_accept_step(self, t0, y0, dt):
            seen.append(float(dt))

    problem = op.ODEProblem(lambda t, y: -y, torch.ones(2, dtype=f64), torch.tensor([0.0, 5.0], dtype=f64),
                            callbacks=Record())
    sol = op.solve(problem, op.Dopri5(rtol=1e-4, atol=1e-6, max_step=0.25))
    assert max(seen) <= 0.25 and sol.stats["steps_accepted"] >= 20


def test_min_step_forces_steps_and_counts_them():
    seen = []

    class Record:
        def callback_accept_step(self, t0, y0, dt):
            seen.append(float(dt))

    ts = torch.tensor([0.0, 1.0], dtype=f64)
    problem = op.ODEProblem(lambda t, y: -50 * (y - torch.cos(t)), torch.ones(1, dtype=f64), ts,
                            callbacks=Record())
    sol = op.solve(problem, op.Dopri5(rtol=1e-10, atol=1e-12, min_step=0.05))
    assert sol.stats["steps_forced"] > 0
    assert sol.stats["steps_rejected"] == 0  # every attempt is at least min_step: taken
    assert min(seen[:-1]) >= 0.05
    plain = op.solve(op.ODEProblem(problem.f, problem.y0, ts), op.Dopri5(rtol=1e-10, atol=1e-12))
    assert "steps_forced" not in plain.stats


@pytest.mark.parametrize("options, message", [
    ({"min_step": -1.0}, "min_step must be a number >= 0"),
    ({"max_step": 0.0}, "max_step must be a positive number"),
    ({"min_step": 0.5, "max_step": 0.1}, "min_step=0.5 is larger than max_step=0.1"),
    ({"first_step": 1.0, "max_step": 0.1}, "first_step=1.0 is larger than max_step"),
    ({"rtol": torch.tensor([1e-6, -1.0])}, "rtol must be a non-negative number"),
    ({"atol": "small"}, "atol must be a non-negative number"),
])
def test_step_option_errors(options, message):
    with pytest.raises(op.InvalidOptionError, match=message):
        op.Dopri5(**options)


# -- per-element tolerances --------------------------------------------------------------------


def test_per_element_tolerances():
    f = lambda t, y: torch.stack([-y[0], -10 * y[1]])  # noqa: E731
    y0 = torch.ones(2, dtype=f64)
    ts = torch.linspace(0, 1, 4, dtype=f64)
    scalar = op.solve(op.ODEProblem(f, y0, ts), op.Dopri5(rtol=1e-6, atol=1e-8))
    same = op.solve(op.ODEProblem(f, y0, ts), op.Dopri5(rtol=torch.tensor([1e-6, 1e-6], dtype=f64), atol=[1e-8, 1e-8]))
    assert dict(same.stats) == dict(scalar.stats) and torch.allclose(same.ys, scalar.ys, rtol=1e-14)
    # A tighter tolerance on one component costs more steps.
    tight = op.solve(op.ODEProblem(f, y0, ts), op.Dopri5(rtol=torch.tensor([1e-6, 1e-10]), atol=1e-12))
    assert tight.stats["steps_accepted"] > scalar.stats["steps_accepted"]
    # Solvers stay frozen and hashable.
    assert hash(op.Dopri5(rtol=torch.tensor([1e-6, 1e-10], dtype=f64))) == hash(op.Dopri5(rtol=[1e-6, 1e-10]))
    # Tuple states: one entry per tensor.
    pair = (torch.ones(2, dtype=f64), torch.ones(3, dtype=f64))
    g = lambda t, y: (-y[0], -2 * y[1])  # noqa: E731
    sol = op.solve(op.ODEProblem(g, pair, ts), op.Dopri5(rtol=(1e-6, torch.full((3,), 1e-8)), atol=1e-10))
    assert torch.allclose(sol.ys[1][-1], torch.exp(torch.tensor(-2.0, dtype=f64)).expand(3), rtol=1e-7)
    with pytest.raises(op.InvalidOptionError, match="does not broadcast to the state"):
        op.solve(op.ODEProblem(f, y0, ts), op.Dopri5(rtol=torch.ones(3) * 1e-6))
    with pytest.raises(op.InvalidOptionError, match="one rtol per"):
        op.solve(op.ODEProblem(g, pair, ts), op.Dopri5(rtol=torch.ones(2) * 1e-6))
    # Gradient rules with a backward solve use the smallest element there.
    w = torch.tensor(1.5, dtype=f64, requires_grad=True)
    h = lambda t, y: -w * y  # noqa: E731
    for rule in (op.Adjoint(), op.GQAdjoint()):
        sol = op.solve(op.ODEProblem(h, y0, ts), op.Dopri5(rtol=torch.tensor([1e-8, 1e-9]), atol=1e-10), rule)
        (g_w,) = torch.autograd.grad(sol.ys[-1].sum(), [w])
        assert abs(float(g_w) + 2 * torch.exp(torch.tensor(-1.5)).item()) < 1e-6


# -- step callbacks ------------------------------------------------------------------------------


class _Field(torch.nn.Module):
    """A field with torchdiffeq's callback methods, recording what it is called with."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(-0.7, dtype=f64))
        self.calls = {}

    def forward(self, t, y):
        return self.w * y

    def _record(self, name, t0, y0, dt):
        self.calls.setdefault(name, []).append((float(t0), y0, float(dt)))

    def callback_step(self, t0, y0, dt):
        self._record("step", t0, y0, dt)

    def callback_accept_step(self, t0, y0, dt):
        self._record("accept", t0, y0, dt)

    def callback_reject_step(self, t0, y0, dt):
        self._record("reject", t0, y0, dt)

    def callback_step_adjoint(self, t0, y0, dt):
        self._record("step_adjoint", t0, y0, dt)

    def callback_accept_step_adjoint(self, t0, y0, dt):
        self._record("accept_adjoint", t0, y0, dt)


@pytest.mark.parametrize("direction", [1, -1])
def test_callbacks_are_called_as_torchdiffeq_calls_them(direction):
    torchdiffeq = pytest.importorskip("torchdiffeq")
    ts = torch.linspace(0, 2, 3, dtype=f64)
    ts = ts if direction > 0 else ts.flip(0)
    y0 = torch.ones(2, 3, dtype=f64)
    mine, theirs = _Field(), _Field()
    sol = op.solve(op.ODEProblem(mine, y0, ts), op.Dopri5(rtol=1e-6, atol=1e-8))
    torchdiffeq.odeint(theirs, y0, ts, rtol=1e-6, atol=1e-8)
    assert len(mine.calls["accept"]) == sol.stats["steps_accepted"]
    assert len(mine.calls.get("reject", [])) == sol.stats["steps_rejected"]
    for name in ("step", "accept"):
        assert len(mine.calls[name]) == len(theirs.calls[name])
        for (t_a, y_a, dt_a), (t_b, y_b, dt_b) in zip(mine.calls[name], theirs.calls[name]):
            assert t_a == pytest.approx(t_b, abs=1e-9) and dt_a == pytest.approx(dt_b, rel=1e-8)
            assert y_a.shape == y_b.shape and torch.allclose(y_a, y_b, rtol=1e-10)


def test_adjoint_callbacks_and_the_callbacks_option():
    field = _Field()
    extra = []

    class Extra:
        def callback_accept_step(self, t0, y0, dt):
            extra.append(float(t0))

    ts = torch.linspace(0, 1, 3, dtype=f64)
    sol = op.solve(op.ODEProblem(field, torch.ones(2, dtype=f64), ts, callbacks=Extra()), op.Dopri5(),
                   op.Adjoint())
    sol.ys.sum().backward()
    assert len(extra) == len(field.calls["accept"]) == sol.stats["steps_accepted"]
    assert len(field.calls["accept_adjoint"]) == sol.stats["steps_accepted_backward"]
    t0, blocks, dt = field.calls["accept_adjoint"][0]
    assert t0 == pytest.approx(1.0) and dt > 0  # the backward solve starts at t_K, in user time
    assert [b.shape for b in blocks[:2]] == [(2,), (2,)]  # z, a_z, then the integrals


def test_the_torchdiffeq_bridge_passes_jump_times_on_or_refuses_them():
    A = torch.tensor([[-0.5, 1.0], [-1.0, -0.2]], dtype=torch.float64)
    f = lambda t, y: (A @ y) * (1.0 if t < 1.3 else -0.5)  # noqa: E731
    y0 = torch.tensor([1.0, 0.5], dtype=torch.float64)
    ts = torch.linspace(0, 3, 4, dtype=torch.float64)
    bridge = op.TorchDiffEq("dopri5", rtol=1e-8, atol=1e-10)
    plain = op.solve(op.ODEProblem(f, y0, ts), bridge)
    jumped = op.solve(op.ODEProblem(f, y0, ts, jump_times=[1.3]), bridge)
    ours = op.solve(op.ODEProblem(f, y0, ts, jump_times=[1.3]), op.Dopri5(rtol=1e-8, atol=1e-10))
    assert jumped.stats["steps_rejected"] < plain.stats["steps_rejected"] // 4
    assert torch.allclose(jumped.ys, ours.ys, rtol=1e-9, atol=1e-11)
    with pytest.raises(op.UnsupportedCombinationError, match="would ignore the problem's stop/jump"):
        op.solve(op.ODEProblem(f, y0, ts, jump_times=[1.3]),
                 op.TorchDiffEq("rk4", options=dict(step_size=0.1)))
    with pytest.raises(op.UnsupportedCombinationError, match="step callbacks would not be called"):
        op.solve(op.ODEProblem(f, y0, ts, callbacks=_StepCounter()), bridge)


class _StepCounter:
    def __init__(self):
        self.steps = 0

    def callback_step(self, t0, y0, dt):
        self.steps += 1


@pytest.mark.parametrize("name,rule", sorted(gradient_rules().items()))
def test_every_rule_reports_the_forwards_forced_steps(name, rule):
    y0 = torch.ones(1, dtype=f64, requires_grad=True)
    ts = torch.tensor([0.0, 1.0], dtype=f64)
    problem = op.ODEProblem(lambda t, y: -50 * (y - torch.cos(t)), y0, ts)
    sol = op.solve(problem, op.Dopri5(rtol=1e-10, atol=1e-12, min_step=0.05), rule)
    assert sol.stats["steps_forced"] > 0, name
