"""odeplug.compat as a test suite for torchdiffeq's interface would test it: solver accuracy,
gradients, events, step callbacks and norms, each checked against something odeplug did not
compute — a closed-form solution, float64 finite differences (``torch.autograd.gradcheck``), or
torchdiffeq itself on the same problem. (tests/test_compat.py compares solutions and gradients
with torchdiffeq on neural fields; tests/test_events.py and tests/test_fixed_grid.py cover
native events and fixed-grid options.)"""

import math

import pytest
import torch
import torchdiffeq

import odeplug as op
import odeplug.compat as compat

F64 = torch.float64
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*did not converge", "ignore:Functional iteration did not converge",
    "ignore:Solver .* does not support callbacks",
)

ADAPTIVE = ["dopri5", "bosh3", "dopri8", "fehlberg2", "adaptive_heun"]
FIXED = ["euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams", "fixed_adams"]
ORDER = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4}
# torchdiffeq's explicit_adams at its default max_order=12 is unstable at these step sizes
# (in torchdiffeq too: errors of 1e1 on a damped rotation); order 4 is the usual choice.
FIXED_OPTIONS = {"explicit_adams": dict(max_order=4)}


def tolerances(method):
    """rtol/atol for an adaptive method: the low-order pairs would take thousands of steps."""
    return dict(rtol=1e-6, atol=1e-8) if method in ("fehlberg2", "adaptive_heun") else dict(rtol=1e-8, atol=1e-10)


def fixed_options(method, step_size):
    return dict(FIXED_OPTIONS.get(method, {}), step_size=step_size)


# Largest error allowed on the problems below (span 2, |y| ~ 1): for an adaptive method a
# multiple of its rtol, for a fixed grid of h = 0.05 about C·h^p with room for the constant.
FIXED_H = 0.05
# explicit_adams starts from one-step slopes and builds up its order over the first steps
# (torchdiffeq's own error on these problems: 3.5e-4).
FIXED_ERROR = {"euler": 0.15, "midpoint": 3e-3, "heun2": 3e-3, "heun3": 5e-5, "rk4": 5e-7,
               "explicit_adams": 1e-3, "implicit_adams": 5e-7, "fixed_adams": 5e-7}


def allowed_error(method):
    if method in ADAPTIVE:  # global error: a multiple of the local tolerance, larger at low order
        return (1000 if method in ("fehlberg2", "adaptive_heun") else 300) * tolerances(method)["rtol"]
    return FIXED_ERROR[method]


def run_method(function, func, y0, ts, method, **kwargs):
    if method in ADAPTIVE:
        return function(func, y0, ts, method=method, **tolerances(method), **kwargs)
    return function(func, y0, ts, method=method, options=fixed_options(method, FIXED_H), **kwargs)


# -- problems with closed-form solutions -------------------------------------------------------

ROTATION = torch.tensor([[-0.1, -1.0], [1.0, -0.1]], dtype=F64)  # a damped rotation


def constant(t, y):
    return torch.full_like(y, 0.75)


def constant_exact(y0, t0, t):
    return y0 + 0.75 * (t - t0)


def linear(t, y):
    return y @ ROTATION.T


def linear_exact(y0, t0, t):
    return y0 @ torch.linalg.matrix_exp(ROTATION * (t - t0)).T


def sine(t, y):  # non-autonomous: a wrong time in any stage shows
    return torch.cos(2 * t) * torch.ones_like(y) - 0.0 * y


def sine_exact(y0, t0, t):
    return y0 + (torch.sin(2 * t) - torch.sin(2 * t0)) / 2


def oscillator(t, state):  # a tuple state (x, v): x'' = −x
    x, v = state
    return v, -x


def oscillator_exact(y0, t0, t):
    x0, v0 = y0
    s = t - t0
    return (x0 * torch.cos(s) + v0 * torch.sin(s), -x0 * torch.sin(s) + v0 * torch.cos(s))


Y0 = torch.tensor([[1.0, 0.5], [-0.3, 0.8]], dtype=F64)
PROBLEMS = {
    "constant": (constant, constant_exact, Y0),
    "linear (matrix exponential)": (linear, linear_exact, Y0),
    "sine forcing": (sine, sine_exact, Y0),
    "tuple state (oscillator)": (oscillator, oscillator_exact,
                                 (torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([0.2, 0.6], dtype=F64))),
}
TIMES = {
    "increasing": torch.tensor([0.3, 0.7, 1.4, 2.3], dtype=F64),
    "decreasing": torch.tensor([0.3, -0.1, -0.8, -1.7], dtype=F64),
}


def exact_rows(exact, y0, ts):
    rows = [exact(y0, ts[0], t) for t in ts]
    if isinstance(y0, tuple):
        return tuple(torch.stack([row[i] for row in rows]) for i in range(len(y0)))
    return torch.stack(rows)


def max_error(ys, want):
    if isinstance(want, tuple):
        assert isinstance(ys, tuple) and len(ys) == len(want)
        return max(max_error(a, b) for a, b in zip(ys, want))
    assert ys.shape == want.shape
    return float((ys - want).abs().max())


# -- 1. solvers --------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", TIMES)
@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("method", ADAPTIVE + FIXED)
def test_solution_against_the_closed_form(method, problem, direction):
    func, exact, y0 = PROBLEMS[problem]
    ts = TIMES[direction]
    ys = run_method(compat.odeint, func, y0, ts, method)
    want = exact_rows(exact, y0, ts)
    tol = 1e-10 if problem == "constant" else allowed_error(method)  # every method is exact on a constant
    err = max_error(ys, want)
    assert err < tol, f"{method} on {problem} ({direction}): error {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("method", sorted(ORDER))
def test_fixed_grid_methods_converge_at_their_order(method):
    """Halving step_size divides the error by about 2^p: the step size is honoured, and the
    method is the one named (midpoint vs euler vs rk4)."""
    ts = torch.tensor([0.0, 2.0], dtype=F64)
    errors = []
    for h in (0.1, 0.05, 0.025):
        ys = compat.odeint(linear, Y0, ts, method=method, options=dict(step_size=h))
        errors.append(max_error(ys, exact_rows(linear_exact, Y0, ts)))
    for coarse, fine in zip(errors, errors[1:]):
        observed = math.log2(coarse / fine)
        assert abs(observed - ORDER[method]) < 0.3, f"{method}: observed order {observed:.2f}, errors {errors}"


@pytest.mark.parametrize("method", ADAPTIVE)
def test_adaptive_error_shrinks_with_the_tolerance(method):
    """rtol/atol reach the solver: a tolerance 100× tighter gives a markedly smaller error."""
    ts = torch.tensor([0.0, 2.0], dtype=F64)
    want = exact_rows(linear_exact, Y0, ts)
    loose = max_error(compat.odeint(linear, Y0, ts, method=method, rtol=1e-3, atol=1e-5), want)
    tight = max_error(compat.odeint(linear, Y0, ts, method=method, rtol=1e-5, atol=1e-7), want)
    assert tight < loose / 10, (loose, tight)
    assert tight < 1e-2


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
@pytest.mark.parametrize("function", ["odeint", "odeint_adjoint"])
def test_a_single_time_returns_y0_and_a_tuple_keeps_its_shapes(function, method):
    y0 = (torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([[0.2, 0.6, 0.1]], dtype=F64))
    func = lambda t, s: (-s[0], s[1] * torch.cos(t))  # noqa: E731
    ts = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    ys = getattr(compat, function)(func, y0, ts, method=method, options=dict(step_size=0.1) if method == "rk4" else None)
    assert isinstance(ys, tuple) and [tuple(p.shape) for p in ys] == [(3, 2), (3, 1, 3)]
    torch.testing.assert_close(ys[0][-1], y0[0] * math.exp(-1.0), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ys[1][-1], y0[1] * math.exp(math.sin(1.0)), rtol=1e-6, atol=1e-7)
    single = getattr(compat, function)(func, y0, ts[:1], method=method)
    assert all(torch.equal(a[0], b) for a, b in zip(single, y0))


def test_float32_states_are_solved_in_float32():
    y0 = torch.tensor([1.0, -2.0])
    ys = compat.odeint(lambda t, y: -y, y0, torch.tensor([0.0, 1.0]), rtol=1e-6, atol=1e-8)
    assert ys.dtype == torch.float32
    torch.testing.assert_close(ys[-1], y0 * math.exp(-1.0), rtol=1e-5, atol=1e-6)


def test_complex_states_are_refused_with_a_fix_that_keeps_the_imaginary_part():
    """torchdiffeq solves a complex y0; odeplug solves real states and says how to split one
    (y0.float() would drop the imaginary part). The fix it names gives e^{it}."""
    y0 = torch.tensor([1.0 + 0.0j, 0.5j], dtype=torch.complex128)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(op.InvalidArgumentError, match=r"complex .* torch\.view_as_real"):
        compat.odeint(lambda t, y: 1j * y, y0, t)
    ys = compat.odeint(lambda t, y: torch.view_as_real(1j * torch.view_as_complex(y)), torch.view_as_real(y0), t,
                       rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(torch.view_as_complex(ys[-1].contiguous()), y0 * complex(math.cos(1.0), math.sin(1.0)),
                               rtol=1e-7, atol=1e-8)


def test_jump_t_restarts_the_steps_at_a_discontinuity():
    """y' = [t > 0.5]: y(1) = 0.5 exactly once the solver knows about the jump, in far fewer
    evaluations than stepping blindly across it (torchdiffeq's counts, both ways)."""
    counts = {}
    for library in (compat, torchdiffeq):
        for jump in (False, True):
            calls = []

            def field(t, y):
                calls.append(1)
                return (t > 0.5).to(y.dtype) * torch.ones_like(y)

            options = dict(jump_t=torch.tensor([0.5], dtype=F64)) if jump else None
            ys = library.odeint(field, torch.zeros(1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), options=options)
            if jump:
                assert abs(float(ys[-1, 0]) - 0.5) < 1e-12
            counts[library.__name__, jump] = len(calls)
    assert counts["odeplug.compat", True] < counts["odeplug.compat", False] / 4
    assert counts["odeplug.compat", True] == counts["torchdiffeq", True]


# -- 2. gradients ------------------------------------------------------------------------------

GRAD_CASES = {
    "dopri5": dict(method="dopri5", rtol=1e-12, atol=1e-12),
    # interp="cubic": the linear interpolant's O(h²) error at off-grid outputs would swamp the
    # comparison of the adjoint with the continuous truth below.
    "rk4, step_size": dict(method="rk4", options=dict(step_size=0.05, interp="cubic")),
}


def forced_decay(theta):
    """y' = −θ₀ y + θ₁ sin(t): non-autonomous, so dL/dt is not just ±f."""
    return lambda t, y: -theta[0] * y + theta[1] * torch.sin(t)


@pytest.mark.parametrize("direction", ["increasing", "decreasing"])
@pytest.mark.parametrize("function", ["odeint", "odeint_adjoint"])
@pytest.mark.parametrize("case", GRAD_CASES)
def test_gradcheck_in_y0_parameters_and_times(case, function, direction):
    kwargs = dict(GRAD_CASES[case])
    if function == "odeint_adjoint" and kwargs["method"] == "dopri5":
        kwargs.update(adjoint_rtol=1e-12, adjoint_atol=1e-12)

    def solution(y0, theta, ts):
        return getattr(compat, function)(forced_decay(theta), y0, ts, **kwargs)

    y0 = torch.tensor([0.8, -0.4], dtype=F64, requires_grad=True)
    theta = torch.tensor([0.9, 0.5], dtype=F64, requires_grad=True)
    # Off rk4's grid (0.05 apart): outputs come from the interpolant, differentiated in t too.
    ts = torch.tensor([0.0, 0.63, 1.12], dtype=F64) * (1.0 if direction == "increasing" else -1.0)
    ts.requires_grad_()
    if function == "odeint_adjoint" and kwargs["method"] == "rk4":
        # The adjoint of a fixed grid is another discretisation: exact only in the limit, so
        # check it against finite differences of the continuous solution (dopri5, tight).
        got = torch.autograd.grad(solution(y0, theta, ts).pow(2).sum(), (y0, theta, ts))

        def truth(y0, theta, ts):
            return compat.odeint(forced_decay(theta), y0, ts, rtol=1e-12, atol=1e-12).pow(2).sum()

        want = torch.autograd.functional.jacobian(truth, (y0, theta, ts))
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        return
    assert torch.autograd.gradcheck(solution, (y0, theta, ts), eps=1e-5, atol=1e-6, rtol=1e-5)


def loss_and_grads(function, method, field_theta, y0, ts):
    theta = field_theta.clone().requires_grad_()
    y0 = y0.clone().requires_grad_()
    ts = ts.clone().requires_grad_()
    func = lambda t, y: torch.tanh(y @ theta[:4].reshape(2, 2).T) * torch.cos(t) - theta[4] * y  # noqa: E731
    if method in ADAPTIVE:
        ys = getattr(compat, function)(func, y0, ts, method=method, **tolerances(method))
    else:
        # interp="cubic": backpropagation's dL/dt_k is then the Hermite's slope, f(t_k, y_k),
        # as the adjoint's is (the linear interpolant's slope differs from it by O(h)).
        options = dict(fixed_options(method, FIXED_H), interp="cubic")
        ys = getattr(compat, function)(func, y0, ts, method=method, options=options)
    loss = (ys**2).sum() + ys[-1].sum()
    return torch.autograd.grad(loss, (y0, theta, ts))


THETA = torch.tensor([0.5, -1.0, 0.8, 0.3, 0.2], dtype=F64)
GRAD_TS = torch.tensor([0.0, 0.5, 1.2], dtype=F64)
# How close the adjoint's gradients come to backpropagation's: adaptive methods to their
# tolerance; a fixed grid's adjoint is another discretisation, accurate to O(h^p).
ADJOINT_VS_DIRECT = {"dopri5": 1e-5, "bosh3": 1e-5, "dopri8": 1e-5, "fehlberg2": 1e-3, "adaptive_heun": 1e-3,
                     "euler": 5e-2, "midpoint": 2e-3, "heun2": 2e-3, "heun3": 1e-4, "rk4": 1e-5,
                     "explicit_adams": 1e-3, "implicit_adams": 1e-5, "fixed_adams": 1e-5}


@pytest.mark.parametrize("method", ADAPTIVE + FIXED)
def test_odeint_adjoint_gradients_equal_odeints(method):
    direct = loss_and_grads("odeint", method, THETA, Y0[:1], GRAD_TS)
    adjoint = loss_and_grads("odeint_adjoint", method, THETA, Y0[:1], GRAD_TS)
    tol = ADJOINT_VS_DIRECT[method]
    names = ("dL/dy0", "dL/dtheta", "dL/dt")
    if "adams" in method:
        # Backpropagation through an Adams solve gives dL/dt0 3% off the continuous value (the
        # start-up's t-dependence; torchdiffeq's odeint gives the very same numbers), while the
        # adjoint's is right: compare dL/dt against a tight dopri5 solve instead.
        truth = loss_and_grads("odeint", "dopri5", THETA, Y0[:1], GRAD_TS)
        torch.testing.assert_close(adjoint[2], truth[2], rtol=1e-4, atol=1e-4)
        names = names[:2]
    for name, a, b in zip(names, adjoint, direct):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m, n=name: f"{method} {n}: {m}")


@pytest.mark.parametrize("rule", [op.Direct(), op.Adjoint(), op.GQAdjoint(), op.GaussAdjoint(), op.ACA()], ids=repr)
@pytest.mark.parametrize("function", ["odeint", "odeint_adjoint"])
def test_every_rule_gives_the_closed_form_gradient(function, rule):
    """y' = −k y: y(T) = y0 e^{−kT}; dy(T)/dk = −T y(T), dy(T)/dy0 = e^{−kT}, dy(T)/dT = −k y(T)."""
    k = torch.tensor(0.8, dtype=F64, requires_grad=True)
    y0 = torch.tensor([1.5], dtype=F64, requires_grad=True)
    ts = torch.tensor([0.0, 1.3], dtype=F64, requires_grad=True)
    ys = getattr(compat, function)(lambda t, y: -k * y, y0, ts, rtol=1e-10, atol=1e-12, rule=rule)
    grads = torch.autograd.grad(ys[-1, 0], (k, y0, ts))
    yT = 1.5 * math.exp(-0.8 * 1.3)
    torch.testing.assert_close(ys[-1, 0].detach(), torch.tensor(yT, dtype=F64), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(grads[0], torch.tensor(-1.3 * yT, dtype=F64), rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(grads[1], torch.tensor([math.exp(-0.8 * 1.3)], dtype=F64), rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(grads[2], torch.tensor([0.8 * yT, -0.8 * yT], dtype=F64), rtol=1e-7, atol=1e-8)


class TwoParameterField(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.7, dtype=F64))
        self.b = torch.nn.Parameter(torch.tensor(-0.4, dtype=F64))

    def forward(self, t, y):
        return -self.a * y + self.b * torch.cos(t)


def test_adjoint_params_listed_and_unlisted_tensors_get_gradients():
    """compat documents: adjoint_params get gradients, and every other tensor func reads that
    requires grad gets its gradient too (torchdiffeq leaves those at None). Both against Direct."""
    ts = torch.tensor([0.0, 1.0, 2.0], dtype=F64)
    y0 = torch.tensor([1.0, -2.0], dtype=F64)
    field = TwoParameterField()
    compat.odeint(field, y0, ts, rtol=1e-10, atol=1e-12).sum().backward()
    want = (field.a.grad.clone(), field.b.grad.clone())
    for params in ([field.a], [], [field.a, torch.tensor(3.0, dtype=F64)]):  # a no-grad tensor is dropped
        field.zero_grad()
        compat.odeint_adjoint(field, y0, ts, rtol=1e-10, atol=1e-12, adjoint_params=params).sum().backward()
        assert field.a.grad is not None and field.b.grad is not None, f"adjoint_params={params}"
        torch.testing.assert_close((field.a.grad, field.b.grad), want, rtol=1e-7, atol=1e-8)
    # torchdiffeq's own behaviour, for the record: the unlisted parameter gets no gradient.
    field.zero_grad()
    torchdiffeq.odeint_adjoint(field, y0, ts, adjoint_params=[field.a]).sum().backward()
    assert field.a.grad is not None and field.b.grad is None


# -- 3. events ---------------------------------------------------------------------------------

K, EVENT_Y0, LEVEL = 0.7, 2.0, 0.25  # y' = −k y from y0 down to the level: t* = ln(y0/c)/k
EVENT_T = math.log(EVENT_Y0 / LEVEL) / K
EVENT_STEP = 0.01
# |t* error| allowed: adaptive methods to their tolerance; fixed grids of 0.01 to O(h^p), with
# the event located on the linear interpolant (torchdiffeq's default interp): O(h²) at best.
# (torchdiffeq's own fehlberg2 error here, at rtol=1e-6: 2.7e-4.)
EVENT_ERROR = {"dopri5": 1e-6, "bosh3": 1e-6, "dopri8": 1e-6, "fehlberg2": 1e-3, "adaptive_heun": 1e-3,
               "euler": 2e-2, "midpoint": 1e-4, "heun2": 1e-4, "heun3": 1e-5, "rk4": 1e-5,
               "explicit_adams": 1e-5, "implicit_adams": 1e-5, "fixed_adams": 1e-5}


def event_kwargs(method):
    if method in ADAPTIVE:
        return dict(method=method, **tolerances(method))
    return dict(method=method, options=fixed_options(method, EVENT_STEP))


@pytest.mark.parametrize("method", ADAPTIVE + FIXED)
def test_odeint_event_mode_finds_the_closed_form_event_time(method):
    k = torch.tensor(K, dtype=F64)
    event_t, solution = compat.odeint(lambda t, y: -k * y, torch.tensor([EVENT_Y0], dtype=F64),
                                      torch.tensor([0.0, 1.0], dtype=F64), event_fn=lambda t, y: y[0] - LEVEL,
                                      **event_kwargs(method))
    assert solution.shape == (2, 1)
    assert float(solution[0, 0].detach()) == EVENT_Y0
    assert abs(float(event_t.detach()) - EVENT_T) < EVENT_ERROR[method], float(event_t.detach()) - EVENT_T
    assert abs(float(solution[1, 0].detach()) - LEVEL) < K * LEVEL * EVENT_ERROR[method] + 1e-9


EVENT_STATE_CASES = [pytest.param(m, None, id=m) for m in ADAPTIVE] + [
    pytest.param(m, interp, id=f"{m}-{interp}") for m in FIXED for interp in ("linear", "cubic")
]


@pytest.mark.parametrize("method, interp", EVENT_STATE_CASES)
def test_the_event_state_lies_on_the_event_surface(method, interp):
    """torchdiffeq returns y(event_t) from the same solution the root-finder searched, so
    event_fn(event_t, y(event_t)) is zero to the root-finder's tolerance (~5e-11 here)."""
    k = torch.tensor(K, dtype=F64)
    event_fn = lambda t, y: y[0] - LEVEL  # noqa: E731
    kwargs = event_kwargs(method)
    if interp is not None:
        kwargs["options"] = dict(kwargs["options"], interp=interp)
    event_t, solution = compat.odeint(lambda t, y: -k * y, torch.tensor([EVENT_Y0], dtype=F64),
                                      torch.tensor([0.0, 1.0], dtype=F64), event_fn=event_fn, **kwargs)
    assert abs(float(event_fn(event_t, solution[-1]))) < 1e-9


EVENT_GRADIENT_CASES = [(m, "odeint") for m in ADAPTIVE + ["rk4", "implicit_adams"]] + [
    (m, "odeint_adjoint") for m in ("dopri5", "bosh3", "dopri8", "rk4")]


@pytest.mark.parametrize("method, interface", EVENT_GRADIENT_CASES, ids=[f"{m}-{i}" for m, i in EVENT_GRADIENT_CASES])
def test_odeint_event_time_gradients_are_the_closed_form(method, interface):
    """t* = ln(y0/c)/k: dt*/dk = −t*/k, dt*/dy0 = 1/(k y0), dt*/dc = −1/(k c), dt*/dt0 = 1."""
    k = torch.tensor(K, dtype=F64, requires_grad=True)
    y0 = torch.tensor([EVENT_Y0], dtype=F64, requires_grad=True)
    c = torch.tensor(LEVEL, dtype=F64, requires_grad=True)
    t0 = torch.tensor(0.5, dtype=F64, requires_grad=True)
    kwargs = event_kwargs(method)
    if method in FIXED:
        kwargs["options"] = dict(kwargs["options"], interp="cubic")  # else the event time is O(h²)
    event_t, solution = compat.odeint_event(lambda t, y: -k * y, y0, t0, event_fn=lambda t, y: y[0] - c,
                                            odeint_interface=getattr(compat, interface), **kwargs)
    t_star = math.log(EVENT_Y0 / LEVEL) / K
    tol = 1e-5 if method not in ("fehlberg2", "adaptive_heun") else 1e-3
    assert abs(float(event_t.detach()) - (0.5 + t_star)) < tol
    if method == "implicit_adams":
        # Backpropagation through an Adams solve whose last step is shortened to end on t*:
        # d y/d t0 is the discrete method's, 1e-3 off the continuous one (torchdiffeq's odeint
        # on [t0, T], T off its grid, has the same 6e-4 relative error in dy/dt0).
        tol = 3e-3
    grads = torch.autograd.grad(event_t, (k, y0, c, t0), retain_graph=True)
    want = (-t_star / K, 1 / (K * EVENT_Y0), -1 / (K * LEVEL), 1.0)
    for name, got, w in zip(("k", "y0", "c", "t0"), grads, want):
        assert abs(float(got.sum()) - w) < tol * max(1.0, abs(w)), f"dt*/d{name}: {float(got.sum())} vs {w}"
    # The state at the event is the level whatever k is: its derivative in k is zero.
    (d_state_dk,) = torch.autograd.grad(solution[-1, 0], k)
    assert abs(float(d_state_dk)) < tol


@pytest.mark.parametrize("rule", [op.Direct(), op.Adjoint(), op.GQAdjoint(), op.GaussAdjoint(), op.ACA()], ids=repr)
def test_odeint_event_with_every_rule(rule):
    k = torch.tensor(K, dtype=F64, requires_grad=True)
    y0 = torch.tensor([EVENT_Y0], dtype=F64, requires_grad=True)
    event_t, _ = compat.odeint_event(lambda t, y: -k * y, y0, torch.tensor(0.0, dtype=F64),
                                     event_fn=lambda t, y: y[0] - LEVEL, rule=rule, rtol=1e-9, atol=1e-11)
    dk, dy0 = torch.autograd.grad(event_t, (k, y0))
    assert abs(float(event_t.detach()) - EVENT_T) < 1e-7
    assert abs(float(dk) + EVENT_T / K) < 1e-6
    assert abs(float(dy0) - 1 / (K * EVENT_Y0)) < 1e-6


@pytest.mark.parametrize("deadline, wins", [(1.5, "deadline"), (4.0, "level")])
@pytest.mark.parametrize("method", ["dopri5", "bosh3", "rk4"])
def test_a_tensor_of_event_functions_ends_at_the_first_crossing(method, deadline, wins):
    k = torch.tensor(K, dtype=F64, requires_grad=True)
    event_fn = lambda t, y: torch.stack([y[0] - LEVEL, deadline - t])  # noqa: E731
    kwargs = event_kwargs(method)
    if method in FIXED:
        kwargs["options"] = dict(kwargs["options"], interp="cubic")
    event_t, solution = compat.odeint_event(lambda t, y: -k * y, torch.tensor([EVENT_Y0], dtype=F64),
                                            torch.tensor(0.0, dtype=F64), event_fn=event_fn, **kwargs)
    (dk,) = torch.autograd.grad(event_t, k, allow_unused=True)
    dk = 0.0 if dk is None else float(dk)
    if wins == "deadline":
        assert abs(float(event_t.detach()) - deadline) < 1e-8
        assert abs(dk) < 1e-8  # the deadline does not move with k
        torch.testing.assert_close(solution[-1, 0].detach(), torch.tensor(EVENT_Y0 * math.exp(-K * deadline), dtype=F64),
                                   rtol=1e-6, atol=1e-7)
    else:
        assert abs(float(event_t.detach()) - EVENT_T) < 1e-5
        assert abs(dk + EVENT_T / K) < 1e-4


@pytest.mark.parametrize("interface", ["odeint", "odeint_adjoint"])
@pytest.mark.parametrize("method", ["dopri5", "dopri8", "rk4"])
def test_reverse_time_events(method, interface):
    """Backwards from t0, y' = −k y grows: it reaches C > y0 at t* = t0 − ln(C/y0)/k."""
    k = torch.tensor(K, dtype=F64, requires_grad=True)
    y0 = torch.tensor([EVENT_Y0], dtype=F64, requires_grad=True)
    t0 = torch.tensor(1.0, dtype=F64)
    high = 5.0
    kwargs = event_kwargs(method)
    if method in FIXED:
        kwargs["options"] = dict(kwargs["options"], interp="cubic")
    event_t, solution = compat.odeint_event(lambda t, y: -k * y, y0, t0, event_fn=lambda t, y: y[0] - high,
                                            reverse_time=True, odeint_interface=getattr(compat, interface), **kwargs)
    span = math.log(high / EVENT_Y0) / K
    assert abs(float(event_t.detach()) - (1.0 - span)) < 1e-5
    assert abs(float(solution[-1, 0].detach()) - high) < 1e-5
    dk, dy0 = torch.autograd.grad(event_t, (k, y0))
    assert abs(float(dk) - span / K) < 1e-4
    assert abs(float(dy0) - 1 / (K * EVENT_Y0)) < 1e-4


def test_event_mode_with_a_tuple_state():
    """A ball thrown up from h0 with v0 falls to h = 0 at t* = (v0 + √(v0² + 2 g h0)) / g."""
    g = torch.tensor(9.81, dtype=F64, requires_grad=True)
    h0, v0 = torch.tensor(1.0, dtype=F64), torch.tensor(3.0, dtype=F64)
    event_t, (h, v) = compat.odeint_event(lambda t, s: (s[1], -g * torch.ones_like(s[1])), (h0, v0),
                                          torch.tensor(0.0, dtype=F64), event_fn=lambda t, s: s[0],
                                          rtol=1e-10, atol=1e-12)
    root = math.sqrt(9.0 + 2 * 9.81)
    t_star = (3.0 + root) / 9.81
    assert abs(float(event_t.detach()) - t_star) < 1e-8
    assert abs(float(h[-1].detach())) < 1e-8 and abs(float(v[-1].detach()) + root) < 1e-7
    (dg,) = torch.autograd.grad(event_t, g)
    # d/dg of (v0 + √(v0² + 2 g h0))/g
    want = h0.item() / (9.81 * root) - t_star / 9.81
    assert abs(float(dg) - want) < 1e-7


# -- 4. step callbacks -------------------------------------------------------------------------


class Recorder(torch.nn.Module):
    """A stiff-ish relaxation towards cos(3t) (so that adaptive steps get rejected), recording
    every call of torchdiffeq's step callbacks."""

    def __init__(self):
        super().__init__()
        self.calls = dict.fromkeys(["step", "accept", "reject", "step_adjoint", "accept_adjoint",
                                    "reject_adjoint"], 0)
        self.rate = torch.nn.Parameter(torch.tensor(20.0, dtype=F64))

    def forward(self, t, y):
        return -self.rate * (y - torch.cos(3 * t))

    def callback_step(self, t0, y0, dt):
        self.calls["step"] += 1

    def callback_accept_step(self, t0, y0, dt):
        self.calls["accept"] += 1

    def callback_reject_step(self, t0, y0, dt):
        self.calls["reject"] += 1

    def callback_step_adjoint(self, t0, y0, dt):
        self.calls["step_adjoint"] += 1

    def callback_accept_step_adjoint(self, t0, y0, dt):
        self.calls["accept_adjoint"] += 1

    def callback_reject_step_adjoint(self, t0, y0, dt):
        self.calls["reject_adjoint"] += 1


CALLBACK_Y0 = torch.tensor([1.0, -0.5], dtype=F64)
CALLBACK_TS = torch.tensor([0.0, 0.5, 1.5], dtype=F64)


@pytest.mark.parametrize("method", ADAPTIVE)
def test_adaptive_step_callbacks_count_as_torchdiffeqs(method):
    counts = []
    for library in (compat, torchdiffeq):
        field = Recorder()
        library.odeint(field, CALLBACK_Y0, CALLBACK_TS, method=method, rtol=1e-5, atol=1e-7)
        counts.append(field.calls)
    ours, theirs = counts
    assert ours["reject"] > 0  # the problem makes the test meaningful
    assert ours["step"] == ours["accept"] + ours["reject"]
    if method == "adaptive_heun":
        # torchdiffeq reuses Heun's last stage f(t+h, y0 + h k1) as the next step's first
        # (first-same-as-last), which it is not (y1 = y0 + h (k1 + k2)/2): its steps differ
        # slightly from the correct method's (and it spends 1 evaluation a step, odeplug 2).
        for key in ("step", "accept", "reject"):
            assert abs(ours[key] - theirs[key]) <= max(3, 0.02 * theirs[key]), (key, ours, theirs)
    else:
        assert ours == theirs


@pytest.mark.parametrize("method", FIXED)
def test_fixed_grid_methods_call_callback_step_only(method):
    counts = []
    for library in (compat, torchdiffeq):
        field = Recorder()
        library.odeint(field, CALLBACK_Y0, CALLBACK_TS, method=method, options=fixed_options(method, 0.1))
        counts.append(field.calls)
    ours, theirs = counts
    assert ours["step"] == round(1.5 / 0.1)
    assert ours["accept"] == ours["reject"] == 0
    assert ours == theirs


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "rk4"])
def test_adjoint_callbacks_are_called_in_the_backward_solve_only(method):
    field = Recorder()
    y0 = CALLBACK_Y0.clone().requires_grad_()
    options = dict(step_size=0.1) if method == "rk4" else None
    ys = compat.odeint_adjoint(field, y0, CALLBACK_TS, method=method, options=options, rtol=1e-5, atol=1e-7)
    forward = dict(field.calls)
    assert forward["step"] > 0 and forward["step_adjoint"] == forward["accept_adjoint"] == 0
    ys.sum().backward()
    assert field.calls["step"] == forward["step"]  # the backward solve calls only the *_adjoint ones
    assert field.calls["step_adjoint"] > 0
    if method == "rk4":
        assert field.calls["accept_adjoint"] == field.calls["reject_adjoint"] == 0
        assert field.calls["step_adjoint"] == round(1.5 / 0.1)
    else:
        assert field.calls["accept_adjoint"] > 0
        assert field.calls["step_adjoint"] == field.calls["accept_adjoint"] + field.calls["reject_adjoint"]
    # torchdiffeq calls them too, about as often (its backward solves interval by interval).
    theirs = Recorder()
    y0 = CALLBACK_Y0.clone().requires_grad_()
    torchdiffeq.odeint_adjoint(theirs, y0, CALLBACK_TS, method=method, options=options,
                               rtol=1e-5, atol=1e-7).sum().backward()
    assert 0.5 * theirs.calls["step_adjoint"] <= field.calls["step_adjoint"] <= 1.5 * theirs.calls["step_adjoint"]


@pytest.mark.parametrize("tuple_state", [False, True], ids=["tensor", "tuple"])
def test_adjoint_callbacks_get_torchdiffeqs_augmented_state(tuple_state):
    """(a_t, y, a_y, *a_θ): a_t 0-d, y and a_y flat for a tuple state; at the backward solve's
    first step y = y(T) and a_y = dL/dy(T), whatever the steps."""
    seen = {}
    for library in (compat, torchdiffeq):
        first = []

        class Field(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.k = torch.nn.Parameter(torch.tensor([0.5, 0.2], dtype=F64))

            def forward(self, t, y):
                if tuple_state:
                    return -self.k[:1] * y[0], -self.k[1:] * y[1]
                return -self.k * y

            def callback_accept_step_adjoint(self, t0, y0, dt):
                if not first:
                    first.append([part.detach().clone() for part in y0])

        ts = torch.tensor([0.0, 1.0], dtype=F64, requires_grad=True)
        y0 = (torch.ones(1, dtype=F64), torch.ones(1, dtype=F64)) if tuple_state else torch.ones(2, dtype=F64)
        ys = library.odeint_adjoint(Field(), y0, ts)
        ends = torch.cat([p[-1] for p in ys]) if tuple_state else ys[-1]
        (ends * torch.tensor([2.0, 3.0], dtype=F64)).sum().backward()
        seen[library.__name__] = first[0]
    theirs, ours = seen["torchdiffeq"], seen["odeplug.compat"]
    assert [tuple(p.shape) for p in theirs] == [(), (2,), (2,), (2,)]  # (a_t, y, a_y, a_k)
    assert [tuple(p.shape) for p in ours] == [tuple(p.shape) for p in theirs]
    for name, a, b in zip(("y", "a_y"), ours[1:3], theirs[1:3]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8, msg=name)
    torch.testing.assert_close(ours[2], torch.tensor([2.0, 3.0], dtype=F64))


def test_callbacks_see_user_time_going_backwards():
    """With decreasing t, callbacks get t0 in the user's (decreasing) time and dt as
    torchdiffeq passes them (its magnitude: torchdiffeq integrates in −t internally)."""
    seen = {}
    for library in (compat, torchdiffeq):
        calls = []

        class Field(torch.nn.Module):
            def forward(self, t, y):
                return -y * torch.cos(t)

            def callback_accept_step(self, t0, y0, dt):
                calls.append((float(t0), float(dt)))

        library.odeint(Field(), CALLBACK_Y0, -CALLBACK_TS, rtol=1e-6, atol=1e-8)
        seen[library.__name__] = calls
    ours, theirs = seen["odeplug.compat"], seen["torchdiffeq"]
    assert len(ours) == len(theirs) > 2
    assert all(b[0] < a[0] for a, b in zip(ours, ours[1:]))  # going backwards
    for (t_a, dt_a), (t_b, dt_b) in zip(ours, theirs):
        assert math.isclose(t_a, t_b, rel_tol=1e-9, abs_tol=1e-12) and math.isclose(dt_a, dt_b, rel_tol=1e-9)


def test_event_mode_calls_the_callbacks_as_torchdiffeq_does():
    counts = []
    for library in (compat, torchdiffeq):
        field = Recorder()
        library.odeint_event(field, CALLBACK_Y0, torch.tensor(0.0, dtype=F64), event_fn=lambda t, y: y[0] - 0.2,
                             rtol=1e-5, atol=1e-7)
        counts.append(field.calls)
    assert counts[0]["accept"] > 0 and counts[0]["reject"] > 0
    assert counts[0] == counts[1]


class Evaluations(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.nfe = 0

    def forward(self, t, y):
        self.nfe += 1
        return -2.0 * (y - torch.sin(3 * t))


EXTRA_FINAL_EVALUATION = (
    "compat's fixed-grid solves evaluate func once more than torchdiffeq: also at the final "
    "time t[-1] (euler, step 0.1 on [0, 0.5]: f at 0, 0.1, ..., 0.5 -- 6 calls, torchdiffeq 5), "
    "an evaluation no output needs"
)
NFE_CASES = {
    "dopri5": (dict(), None),
    "bosh3": (dict(method="bosh3"), None),
    "dopri8": (dict(method="dopri8"), None),
    "euler, step_size": (dict(method="euler", options=dict(step_size=0.1)), EXTRA_FINAL_EVALUATION),
    "rk4, no step_size": (dict(method="rk4"), EXTRA_FINAL_EVALUATION),
    "dopri5, event mode": (dict(event_fn=lambda t, y: y[0] - 0.3), None),
}


@pytest.mark.parametrize("case", [
    pytest.param(name, marks=() if bug is None else pytest.mark.xfail(strict=True, reason=bug))
    for name, (_, bug) in NFE_CASES.items()
])
def test_func_is_evaluated_as_often_as_by_torchdiffeq(case):
    """A drop-in replacement should not cost more evaluations of func than torchdiffeq on the
    same steps. (fehlberg2 and adaptive_heun are left out: torchdiffeq reuses their last stage
    as if first-same-as-last, which it is not, and so spends fewer -- wrong -- evaluations.)"""
    kwargs, _ = NFE_CASES[case]
    ts = torch.tensor([0.0, 0.7, 1.5] if "event_fn" not in kwargs else [0.0, 1.0], dtype=F64)
    nfe = []
    for library in (compat, torchdiffeq):
        field = Evaluations()
        library.odeint(field, torch.tensor([1.0, -0.5], dtype=F64), ts, rtol=1e-6, atol=1e-8, **kwargs)
        nfe.append(field.nfe)
    assert nfe[0] == nfe[1], f"compat {nfe[0]} vs torchdiffeq {nfe[1]}"


# -- 5. norms ----------------------------------------------------------------------------------


class Counted(torch.nn.Module):
    """A small neural field counting its evaluations."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(1)
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).to(F64)
        for p in self.net.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=generator, dtype=F64) * 0.7)
        self.nfe = 0

    def forward(self, t, y):
        self.nfe += 1
        return self.net(y)


def test_a_forward_norm_steers_the_steps():
    """A norm 50× the RMS makes every error look bigger: more steps (more NFE), as many as
    torchdiffeq takes with it, a more accurate solution, and the norm is really called."""
    calls = []

    def strict(y):
        calls.append(1)
        return 50 * y.pow(2).mean().sqrt()

    ts = torch.tensor([0.0, 2.0], dtype=F64)
    results = {}
    for name, options in (("default", None), ("strict", dict(norm=strict))):
        for library in (compat, torchdiffeq):
            field = Counted()
            ys = library.odeint(field, Y0, ts, rtol=1e-4, atol=1e-6, options=options)
            results[name, library.__name__] = (field.nfe, ys.detach())
    truth = compat.odeint(Counted(), Y0, ts, rtol=1e-12, atol=1e-12)
    assert calls
    nfe_default, ys_default = results["default", "odeplug.compat"]
    nfe_strict, ys_strict = results["strict", "odeplug.compat"]
    assert nfe_strict > nfe_default
    assert nfe_strict == results["strict", "torchdiffeq"][0]
    assert (ys_strict - truth).abs().max() < (ys_default - truth).abs().max()


def test_a_norm_on_a_tuple_state_gets_the_tuple():
    seen = []

    def norm(state):
        seen.append(type(state))
        x, v = state
        return torch.maximum(x.abs().max(), v.abs().max())

    y0 = PROBLEMS["tuple state (oscillator)"][2]
    ts = TIMES["increasing"]
    ys = compat.odeint(oscillator, y0, ts, rtol=1e-8, atol=1e-10, options=dict(norm=norm))
    assert seen and all(kind is tuple for kind in seen)
    assert max_error(ys, exact_rows(oscillator_exact, y0, ts)) < 1e-6


def backward_nfe(adjoint_options):
    field = Counted()
    y0 = Y0.clone().requires_grad_()
    ys = compat.odeint_adjoint(field, y0, torch.tensor([0.0, 1.0, 2.0], dtype=F64), rtol=1e-6, atol=1e-8,
                               adjoint_options=adjoint_options)
    forward = field.nfe
    (ys[-1] ** 2).sum().backward()
    return field.nfe - forward, [y0.grad, *(p.grad for p in field.parameters())]


def test_seminorm_gives_the_same_gradient_with_fewer_backward_evaluations():
    default_nfe, default = backward_nfe(None)
    semi_nfe, semi = backward_nfe(dict(norm="seminorm"))
    assert semi_nfe < default_nfe, (semi_nfe, default_nfe)
    for a, b in zip(semi, default):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    # And both are the gradient: against backpropagation through a tight solve.
    field = Counted()
    y0 = Y0.clone().requires_grad_()
    ys = compat.odeint(field, y0, torch.tensor([0.0, 1.0, 2.0], dtype=F64), rtol=1e-11, atol=1e-13)
    (ys[-1] ** 2).sum().backward()
    for a, b in zip(semi, [y0.grad, *(p.grad for p in field.parameters())]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_seminorm_counts_as_torchdiffeqs():
    """torchdiffeq's seminorm on the same problem saves evaluations too; odeplug's backward is
    one solve over all output intervals (torchdiffeq's, one per interval), so the counts agree
    only roughly."""
    ours, _ = backward_nfe(dict(norm="seminorm"))
    field = Counted()
    y0 = Y0.clone().requires_grad_()
    ys = torchdiffeq.odeint_adjoint(field, y0, torch.tensor([0.0, 1.0, 2.0], dtype=F64), rtol=1e-6, atol=1e-8,
                                    adjoint_options=dict(norm="seminorm"))
    forward = field.nfe
    (ys[-1] ** 2).sum().backward()
    theirs = field.nfe - forward
    assert 0.5 * theirs <= ours <= 1.5 * theirs, (ours, theirs)


# -- fixed-grid extras (torchdiffeq's test_grid_constructor, test_perturb) ---------------------


def test_grid_constructor_steps_exactly_on_its_grid():
    """Euler on y' = 2t: on any grid the result is Σ 2 t_i Δ_i, computable by hand."""
    grid = torch.tensor([0.0, 0.1, 0.4, 1.0], dtype=F64)
    ys = compat.odeint(lambda t, y: 2 * t * torch.ones_like(y), torch.zeros(1, dtype=F64),
                       torch.tensor([0.0, 1.0], dtype=F64), method="euler",
                       options=dict(grid_constructor=lambda func, y0, t: grid))
    by_hand = sum(2 * float(a) * float(b - a) for a, b in zip(grid[:-1], grid[1:]))
    assert abs(float(ys[-1, 0]) - by_hand) < 1e-14
    assert abs(by_hand - 1.0) > 0.1  # far from the exact 1: the grid, not a fine solve, made it


@pytest.mark.parametrize("method", ["euler", "rk4", "implicit_adams"])
def test_perturb_never_evaluates_on_a_grid_time(method):
    grid_times = {0.0, 0.25, 0.5, 0.75, 1.0}
    seen = []

    def field(t, y):
        seen.append(float(t))
        return torch.sign(t - 0.5) * torch.ones_like(y)  # jumps at a grid time

    ys = compat.odeint(field, torch.zeros(1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), method=method,
                       options=dict(step_size=0.25, perturb=True))
    assert seen and not grid_times & set(seen)
    if method != "implicit_adams":  # (Adams' multistep slopes reach across the jump anyway)
        # sign(t − 0.5) integrated: exactly −0.5 + 0.5 = 0 with each step on its side of the jump;
        # without perturb the stages at t = 0.5 see sign(0) = 0.
        assert abs(float(ys[-1, 0])) < 1e-12
