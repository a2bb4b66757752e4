"""odeplug.compat against torchdiffeq itself: the same problems through both, solutions and
gradients (dL/dy0, dL/dθ, dL/dt) compared, and every option odeplug cannot honour refused by name."""

import pytest
import torch
import torchdiffeq

import odeplug as op
import odeplug.compat as compat
from compat_runs import run

DTYPE = torch.float64


class Field(torch.nn.Module):
    """A small time-dependent neural field (non-autonomous, so dL/dt is non-trivial)."""

    def __init__(self, width: int = 3):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.weight = torch.nn.Parameter(torch.randn(width, width, generator=generator, dtype=DTYPE) / 2)
        self.bias = torch.nn.Parameter(torch.randn(width, generator=generator, dtype=DTYPE) / 4)

    def forward(self, t, y):
        return torch.tanh(y @ self.weight.T + self.bias) * torch.cos(t) - 0.3 * y


class TupleField(torch.nn.Module):
    """A tuple state (position, velocity): a damped oscillator with a learned stiffness."""

    def __init__(self):
        super().__init__()
        self.stiffness = torch.nn.Parameter(torch.tensor([1.5, 0.7], dtype=DTYPE))

    def forward(self, t, state):
        x, v = state
        return v, -self.stiffness * x - 0.2 * v + 0.1 * torch.sin(t)


Y0 = torch.tensor([[0.5, -1.0, 0.2], [0.1, 0.3, -0.4]], dtype=DTYPE)
TS = torch.linspace(0.0, 2.0, 5, dtype=DTYPE)


def assert_close(ours, theirs, tolerances):
    for key, tol in tolerances.items():
        torch.testing.assert_close(ours[key], theirs[key], rtol=tol, atol=tol, msg=lambda m, k=key: f"{k}: {m}")


# dopri5 takes torchdiffeq's very steps; torchdiffeq also differentiates its initial step-size
# selection (odeplug treats step sizes as constants), hence gradients close to the tolerance.
# bosh3 takes the same steps but reads outputs from a cubic Hermite, torchdiffeq from a quartic.
# The fixed grids take the same steps and, for Direct, give the same derivatives exactly.
CASES = [
    ("dopri5", None, dict(ys=1e-12, dy0=1e-5, dtheta=1e-5, dt=1e-5)),
    ("dopri5", dict(first_step=0.05, max_num_steps=500), dict(ys=1e-12, dy0=1e-9, dtheta=1e-9, dt=1e-9)),
    ("bosh3", None, dict(ys=1e-4, dy0=1e-3, dtheta=1e-3)),
    # torchdiffeq's step control options, and the methods whose outputs come from another interpolant
    ("dopri5", dict(step_t=torch.tensor([0.3, 1.1]), jump_t=torch.tensor([0.7]), min_step=1e-3,
                    max_step=0.4), dict(ys=1e-8, dy0=1e-5, dtheta=1e-5)),
    ("dopri8", None, dict(ys=1e-4, dy0=1e-3, dtheta=1e-3)),
    ("fehlberg2", None, dict(ys=5e-3, dy0=5e-2, dtheta=5e-2)),
    ("adaptive_heun", None, dict(ys=5e-3, dy0=5e-2, dtheta=5e-2)),
    ("heun3", None, dict(ys=1e-12, dy0=1e-12, dtheta=1e-12, dt=1e-12)),
    ("euler", None, dict(ys=1e-12, dy0=1e-12, dtheta=1e-12, dt=1e-12)),
    ("midpoint", None, dict(ys=1e-12, dy0=1e-12, dtheta=1e-12, dt=1e-12)),
    ("euler", dict(step_size=0.125), dict(ys=1e-12, dy0=1e-12, dtheta=1e-12)),
    ("midpoint", dict(step_size=0.1, interp="cubic"), dict(ys=1e-12, dy0=1e-12, dtheta=1e-12, dt=1e-12)),
    # torchdiffeq's rk4 is Kutta's 3/8 rule (odeplug.RK4ThreeEighths); heun2 is odeplug.Heun2.
    ("rk4", None, dict(ys=1e-12, dy0=1e-12, dtheta=1e-12, dt=1e-12)),
    ("heun2", None, dict(ys=1e-12, dy0=1e-12, dtheta=1e-12, dt=1e-12)),
    ("rk4", dict(step_size=0.1, interp="cubic"), dict(ys=1e-12, dy0=1e-12, dtheta=1e-12, dt=1e-12)),
    # The Adams methods: the same steps, their slopes carried across output times. With no
    # step_size both step on the output times themselves (dL/dt flows through the step sizes).
    ("explicit_adams", None, dict(ys=1e-12, dy0=1e-12, dtheta=1e-12, dt=1e-12)),
    # Here the corrector fails to converge at t = 1.5 in both, and both drop a slope (and warn).
    pytest.param("implicit_adams", None, dict(ys=1e-12, dy0=1e-12, dtheta=1e-12),
                 marks=pytest.mark.filterwarnings("ignore:.*did not converge:RuntimeWarning",
                                                  "ignore:Functional iteration did not converge")),
    ("fixed_adams", dict(step_size=0.05), dict(ys=1e-12, dy0=1e-12, dtheta=1e-12)),
    ("explicit_adams", dict(step_size=0.05, max_order=5), dict(ys=1e-12, dy0=1e-12, dtheta=1e-12)),
    ("implicit_adams", dict(step_size=0.1, interp="cubic", max_iters=6, max_order=8),
     dict(ys=1e-12, dy0=1e-12, dtheta=1e-12, dt=1e-12)),
    # torchdiffeq's default interp="linear" with outputs between the steps, a grid_constructor
    # (its grid odeplug's grid=; for odeint_adjoint's backward, the constructor's grid of each
    # output interval), and perturb (tests/test_fixed_grid.py has them on a field where it matters).
    ("euler", dict(step_size=0.3), dict(ys=1e-12, dy0=1e-12, dtheta=1e-12, dt=1e-12)),
    ("heun3", dict(step_size=0.3, interp="linear"), dict(ys=1e-12, dy0=1e-12, dtheta=1e-12, dt=1e-12)),
    ("midpoint", dict(grid_constructor=lambda func, y0, t: torch.cat(
        [t[:1], torch.linspace(float(t[0].detach()), float(t[-1].detach()), 7, dtype=t.dtype)[1:-1], t[-1:]])),
     dict(ys=1e-12, dy0=1e-12, dtheta=1e-12, dt=1e-12)),
    ("rk4", dict(perturb=True), dict(ys=1e-12, dy0=1e-12, dtheta=1e-12, dt=1e-12)),
    ("explicit_adams", dict(step_size=0.25, perturb=True, interp="cubic"),
     dict(ys=1e-12, dy0=1e-12, dtheta=1e-12, dt=1e-12)),
]


def solve_tolerances(method):
    """Looser for the low-order pairs, which would otherwise take thousands of steps."""
    tol = 1e-4 if method in ("fehlberg2", "adaptive_heun") else 1e-6
    return dict(rtol=tol, atol=tol / 100)


@pytest.mark.parametrize("method, options, tolerances", CASES, ids=lambda c: str(c) if isinstance(c, str) else None)
def test_odeint_matches_torchdiffeq(method, options, tolerances):
    kwargs = dict(method=method, options=options, **solve_tolerances(method))
    assert_close(run(compat, "odeint", Field(), Y0, TS, **kwargs),
                 run(torchdiffeq, "odeint", Field(), Y0, TS, **kwargs), tolerances)


@pytest.mark.parametrize("method, options, tolerances", CASES, ids=lambda c: str(c) if isinstance(c, str) else None)
def test_odeint_adjoint_matches_torchdiffeq(method, options, tolerances):
    kwargs = dict(method=method, options=options, **solve_tolerances(method))
    if method in ("euler", "midpoint", "heun2", "heun3", "rk4") and not (options or {}).get("interp"):
        # Both adjoints approximate the continuous dL/dt; on a coarse fixed grid they differ.
        tolerances = {k: v for k, v in tolerances.items() if k != "dt"}
    loose = {k: max(v, 1e-5) for k, v in tolerances.items()}  # two adjoint solves, each to tolerance
    assert_close(run(compat, "odeint_adjoint", Field(), Y0, TS, **kwargs),
                 run(torchdiffeq, "odeint_adjoint", Field(), Y0, TS, **kwargs), loose)


@pytest.mark.parametrize("function", ["odeint", "odeint_adjoint"])
def test_tuple_states_and_decreasing_times(function):
    ts = torch.tensor([1.5, 1.0, 0.2, -0.5], dtype=DTYPE)
    y0 = (torch.tensor([1.0, -0.5], dtype=DTYPE), torch.tensor([0.0, 0.3], dtype=DTYPE))
    kwargs = dict(rtol=1e-8, atol=1e-10)
    ours = run(compat, function, TupleField(), y0, ts, **kwargs)
    theirs = run(torchdiffeq, function, TupleField(), y0, ts, **kwargs)
    assert_close(ours, theirs, dict(ys=1e-12, dy0=1e-6, dtheta=1e-6, dt=1e-6))
    shapes = compat.odeint(TupleField(), y0, ts)
    assert isinstance(shapes, tuple) and [tuple(p.shape) for p in shapes] == [(4, 2), (4, 2)]


def test_a_single_output_time_returns_y0_differentiably():
    y0 = Y0.clone().requires_grad_()
    ys = compat.odeint(Field(), y0, torch.tensor([0.3], dtype=DTYPE))
    assert torch.equal(ys, torchdiffeq.odeint(Field(), Y0, torch.tensor([0.3], dtype=DTYPE)))
    ys.sum().backward()
    assert torch.equal(y0.grad, torch.ones_like(Y0))


def test_adjoint_params_seminorm_and_closures():
    """adjoint_params (a closure's tensor) and adjoint_options=dict(norm="seminorm")."""
    scale = torch.tensor(0.7, dtype=DTYPE, requires_grad=True)
    field = Field()

    def closure(t, y):
        return scale * field(t, y)

    results = []
    for library in (compat, torchdiffeq):
        scale.grad = None
        field.zero_grad()
        y0 = Y0.clone().requires_grad_()
        ys = library.odeint_adjoint(closure, y0, TS, rtol=1e-7, atol=1e-9,
                                    adjoint_params=(scale, *field.parameters()),
                                    adjoint_options=dict(norm="seminorm"))
        ys.pow(2).sum().backward()
        results.append([y0.grad, scale.grad, field.weight.grad.clone()])
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_callable_norms_forward_and_adjoint():
    """options["norm"] (a callable on the state) and adjoint_options["norm"] (on the tuple
    (a_t, y, a_y, *a_θ)) steer the step control as in torchdiffeq."""
    seen = []

    def max_norm(y):
        return y.abs().max()

    def adjoint_norm(parts):
        seen.append(len(parts))
        return max(p.abs().max() for p in parts)

    kwargs = dict(rtol=1e-6, atol=1e-8, options=dict(norm=max_norm), adjoint_options=dict(norm=adjoint_norm))
    ours = run(compat, "odeint_adjoint", Field(), Y0, TS, **kwargs)
    theirs = run(torchdiffeq, "odeint_adjoint", Field(), Y0, TS, **kwargs)
    assert_close(ours, theirs, dict(ys=1e-12, dy0=1e-5, dtheta=1e-5, dt=1e-5))
    assert 1 + 1 + 1 + 2 in seen  # a_t, y, a_y and the field's two parameters


@pytest.mark.parametrize("rule", [op.GQAdjoint(), op.ACA(), op.Adjoint(norm=op.Seminorm())], ids=repr)
def test_rule_keyword_gives_torchdiffeqs_gradients(rule):
    kwargs = dict(rtol=1e-8, atol=1e-10)
    theirs = run(torchdiffeq, "odeint_adjoint", Field(), Y0, TS, **kwargs)
    for function in ("odeint", "odeint_adjoint"):
        ours = run(compat, function, Field(), Y0, TS, rule=rule, **kwargs)
        assert_close(ours, theirs, dict(ys=1e-12, dy0=1e-5, dtheta=1e-5))


def test_an_odeplug_solver_as_method():
    ours = compat.odeint(Field(), Y0, TS, method=op.Dopri5(rtol=1e-6, atol=1e-8))
    theirs = torchdiffeq.odeint(Field(), Y0, TS, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(ours, theirs.detach(), rtol=1e-12, atol=1e-12)
    with pytest.raises(op.InvalidArgumentError, match=r"set the tolerances on the solver"):
        compat.odeint(Field(), Y0, TS, method=op.Tsit5(), rtol=1e-3)


def test_max_num_steps_is_a_step_budget():
    with pytest.raises(op.StepBudgetExhaustedError, match="max_steps=3"):
        compat.odeint(Field(), Y0, TS, options=dict(max_num_steps=3))


# Each unsupported method or option, and the words its error must contain.
REFUSED = [
    (dict(event_fn=lambda t, y: y.sum()), r"with event_fn, t must hold two times"),
    (dict(method="explicit_adams", options=dict(max_order=3)), r"max_order must be an int from 4 to 12"),
    (dict(method="scipy_solver"), r"method='scipy_solver' is not supported yet"),
    (dict(method="adams"), r"unknown method 'adams'"),
    (dict(options=dict(safety=0.8)), r"options\['safety'\]=0.8 is not supported"),
    (dict(options=dict(dtype=torch.float32)), r"options\['dtype'\]=torch.float32 is not supported"),
    (dict(options=dict(step_size=0.1)), r"are not options of torchdiffeq's 'dopri5'"),
    (dict(method="euler", options=dict(step_size=0.1, grid_constructor=lambda f, y0, t: t)),
     r"options\['step_size'\] and options\['grid_constructor'\] both say where the steps end"),
    (dict(method="euler", options=dict(grid_constructor=lambda f, y0, t: t[1:])),
     r"must return a grid that starts at t\[0\] and ends at t\[-1\]"),
    (dict(method="rk4", options=dict(interp="quadratic")), r"options\['interp'\] must be 'linear' or 'cubic'"),
    (dict(method="euler", options=dict(norm=lambda y: y.abs().max())), r"options\['norm'\] means nothing to the fixed-grid"),
]


@pytest.mark.parametrize("kwargs, message", REFUSED, ids=[m for _, m in REFUSED])
@pytest.mark.parametrize("function", ["odeint", "odeint_adjoint"])
def test_unsupported_options_are_refused_by_name(function, kwargs, message):
    kwargs = dict(kwargs)
    with pytest.raises(op.OdeplugError, match=message):
        getattr(compat, function)(Field(), Y0, TS, **kwargs)


UNEVEN = torch.tensor([0.0, 0.3, 1.0, 1.2, 2.0], dtype=DTYPE)


@pytest.mark.parametrize("ts", [UNEVEN, UNEVEN.flip(0)], ids=["increasing", "decreasing"])
@pytest.mark.parametrize("function", ["odeint", "odeint_adjoint"])
@pytest.mark.parametrize("method", ["explicit_adams", "implicit_adams"])
@pytest.mark.filterwarnings("ignore:.*did not converge")
def test_adams_without_step_size_steps_on_unequal_output_times(method, function, ts):
    """torchdiffeq's steps are the output intervals, its slopes carried across them: odeplug's
    Adams solve lands on each output time (a stop of the problem), with the same values."""
    tolerances = dict(ys=1e-12, dy0=1e-12, dtheta=1e-12)
    if function == "odeint_adjoint":
        tolerances["dt"] = 1e-12
    assert_close(run(compat, function, Field(), Y0, ts, method=method),
                 run(torchdiffeq, function, Field(), Y0, ts, method=method), tolerances)


def test_adams_as_the_backward_solve_only():
    kwargs = dict(method="dopri5", adjoint_method="explicit_adams", adjoint_options={})
    assert_close(run(compat, "odeint_adjoint", Field(), Y0, UNEVEN, **kwargs),
                 run(torchdiffeq, "odeint_adjoint", Field(), Y0, UNEVEN, **kwargs),
                 dict(ys=1e-12, dy0=1e-5, dtheta=1e-5, dt=1e-5))


def test_adjoint_specific_refusals():
    with pytest.raises(op.OdeplugError, match=r"adjoint_options\['jump_t'\] differs from options\['jump_t'\]"):
        compat.odeint_adjoint(Field(), Y0, TS, options=dict(jump_t=torch.tensor([0.5])),
                              adjoint_options=dict(jump_t=torch.tensor([0.7])))
    with pytest.raises(op.InvalidArgumentError, match=r"ACA\(\) has no backward solve, so adjoint_rtol"):
        compat.odeint_adjoint(Field(), Y0, TS, rule=op.ACA(), adjoint_rtol=1e-3)
    with pytest.raises(op.InvalidArgumentError, match=r"pass adjoint_options too"):
        compat.odeint_adjoint(Field(), Y0, TS, method="dopri5", options=dict(first_step=0.1),
                              adjoint_method="bosh3")
    with pytest.raises(op.InvalidArgumentError, match=r"t must be a 1-D tensor"):
        compat.odeint(Field(), Y0, torch.tensor(1.0, dtype=DTYPE))


def test_per_element_tolerances_and_step_callbacks():
    """Per-element rtol/atol (a tensor) reach the solver, and func's step callbacks are called."""

    class Counting(Field):
        accepted = 0

        def callback_accept_step(self, t0, y0, dt):
            type(self).accepted += 1

    rtol = torch.full(Y0.shape, 1e-6, dtype=DTYPE)
    rtol[0] = 1e-8
    ours = compat.odeint(Counting(), Y0, TS, rtol=rtol, atol=1e-9)
    theirs = torchdiffeq.odeint(Field(), Y0, TS, rtol=rtol, atol=1e-9)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    assert Counting.accepted > 0
