"""Terminal events: the event time and state against closed forms, their derivatives (also in
the event function's own tensors) for every gradient rule, several event functions, and
torchdiffeq's event interface (odeint(event_fn=...), odeint_event) against torchdiffeq."""

import math

import pytest
import torch
import torchdiffeq

import odeplug as op
import odeplug.compat as compat
from odeplug.bench import gradient_rules

F64 = torch.float64
RULES = sorted(gradient_rules().items())
TIGHT = op.Dopri5(rtol=1e-11, atol=1e-13)


def falling(g):
    """A body under gravity g: state (height, velocity)."""
    return lambda t, y: torch.stack([y[1], -g * torch.ones_like(y[0])])


def leaves(*values):
    return [torch.tensor(v, dtype=F64, requires_grad=True) for v in values]


def exact_landing(h0, v0, g, level, direction):
    """h0 + v0 t − g t²/2 = level: the later root going forwards, the earlier going backwards."""
    root = torch.sqrt(v0**2 + 2 * g * (h0 - level))
    return (v0 + direction * root) / g


@pytest.mark.parametrize("direction", [1.0, -1.0], ids=["forwards", "backwards"])
@pytest.mark.parametrize("name,rule", RULES, ids=[n for n, _ in RULES])
def test_the_event_time_and_state_and_their_gradients_are_the_closed_forms(name, rule, direction):
    h0, v0, g, level = leaves(10.0, 2.0, 9.81, 1.5)
    ts = torch.tensor([0.0, 0.5 * direction, 5.0 * direction], dtype=F64)
    problem = op.ODEProblem(falling(g), torch.stack([h0, v0]), ts, event=lambda t, y: y[0] - level)
    sol = op.solve(problem, TIGHT, rule)
    t_exact = exact_landing(h0, v0, g, level, direction)
    v_exact = v0 - g * t_exact
    torch.testing.assert_close(sol.event_t, t_exact.detach(), rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(sol.ts, torch.stack([ts[0], ts[1], t_exact]).detach())
    torch.testing.assert_close(sol.ys[-1], torch.stack([level, v_exact]).detach(), rtol=1e-9, atol=1e-9)
    assert sol.event_index == 0
    inputs = (h0, v0, g, level)
    got = torch.autograd.grad(sol.event_t**2 + sol.ys[-1, 1] * 3, inputs)
    want = torch.autograd.grad(t_exact**2 + v_exact * 3, inputs)
    for a, b, label in zip(got, want, ("h0", "v0", "g", "level")):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9, msg=f"{name}: d/d{label}")


def test_output_times_before_the_event_are_kept_and_match_a_solve_without_it():
    h0, v0, g, level = leaves(10.0, 2.0, 9.81, 1.5)
    y0 = torch.stack([h0, v0])
    ts = torch.tensor([0.0, 0.5, 1.0, 5.0], dtype=F64)
    with_event = op.solve(op.ODEProblem(falling(g), y0, ts, event=lambda t, y: y[0] - level), TIGHT)
    plain = op.solve(op.ODEProblem(falling(g), y0, ts[:3]), TIGHT)
    assert len(with_event.ts) == 4 and float(with_event.event_t.detach()) < 5.0
    torch.testing.assert_close(with_event.ys[:3], plain.ys, rtol=1e-14, atol=1e-14)
    # Direct stops at the event in its one forward; other rules search first, counted apart.
    assert with_event.stats.event_evaluations > 0 and "nfe_event" not in with_event.stats
    adjoint = op.solve(op.ODEProblem(falling(g), y0, ts, event=lambda t, y: y[0] - level), TIGHT, op.Adjoint())
    assert adjoint.stats.nfe_event > 0 and adjoint.stats.steps_accepted_event > 0


def test_directs_one_pass_equals_the_search_then_solve_that_serves_every_rule():
    from odeplug._events import locate_then_solve

    h0, v0, g, level = leaves(10.0, 2.0, 9.81, 1.5)
    problem = op.ODEProblem(falling(g), torch.stack([h0, v0]), torch.tensor([0.0, 0.4, 5.0], dtype=F64),
                            event=lambda t, y: y[0] - level)
    one_pass = op.solve(problem, TIGHT, op.Direct())
    two_pass = locate_then_solve(problem, TIGHT, op.Direct(), {})
    torch.testing.assert_close(one_pass.event_t, two_pass.event_t, rtol=0, atol=0)
    torch.testing.assert_close(one_pass.ys, two_pass.ys, rtol=1e-13, atol=1e-13)
    inputs = (h0, v0, g, level)
    for a, b in zip(torch.autograd.grad(one_pass.event_t + one_pass.ys.sum(), inputs),
                    torch.autograd.grad(two_pass.event_t + two_pass.ys.sum(), inputs)):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
    assert one_pass.stats.nfe < two_pass.stats.nfe + two_pass.stats.nfe_event


def test_no_crossing_in_the_span_is_no_event():
    h0, v0, g = leaves(10.0, 2.0, 9.81)
    ts = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    sol = op.solve(op.ODEProblem(falling(g), torch.stack([h0, v0]), ts, event=lambda t, y: y[0]), TIGHT)
    assert sol.event_t is None and sol.event_index is None
    torch.testing.assert_close(sol.ts, ts)
    plain = op.solve(op.ODEProblem(falling(g), torch.stack([h0, v0]), ts), TIGHT)
    torch.testing.assert_close(sol.ys, plain.ys, rtol=0, atol=0)


@pytest.mark.parametrize("form", ["one tensor", "a sequence of functions"])
@pytest.mark.parametrize("cap, index", [(0.7, 1), (3.0, 0)], ids=["the cap first", "the floor first"])
def test_several_event_functions_end_at_the_first_crossing(form, cap, index):
    h0, v0, g, level = leaves(10.0, 2.0, 9.81, 1.5)
    floor = lambda t, y: y[0] - level  # noqa: E731
    deadline = lambda t, y: cap - t  # noqa: E731  # positive at the start: crosses downwards
    event = (lambda t, y: torch.stack([floor(t, y), deadline(t, y)])) if form == "one tensor" else [floor, deadline]
    ts = torch.tensor([0.0, 5.0], dtype=F64)
    sol = op.solve(op.ODEProblem(falling(g), torch.stack([h0, v0]), ts, event=event), TIGHT)
    expected = cap if index == 1 else float(exact_landing(h0, v0, g, level, 1.0).detach())
    assert sol.event_index == index
    assert math.isclose(float(sol.event_t.detach()), expected, rel_tol=1e-11)


def test_a_tuple_state_and_an_event_function_module_with_parameters():
    class Floor(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.level = torch.nn.Parameter(torch.tensor(1.5, dtype=F64))

        def forward(self, t, y):
            height, _ = y
            return height - self.level

    h0, v0, g = leaves(10.0, 2.0, 9.81)
    floor = Floor()
    field = lambda t, y: (y[1], -g * torch.ones_like(y[1]))  # noqa: E731
    problem = op.ODEProblem(field, (h0, v0), torch.tensor([0.0, 5.0], dtype=F64), event=floor)
    sol = op.solve(problem, TIGHT, op.Adjoint(rtol=1e-11, atol=1e-13))
    got = torch.autograd.grad(sol.event_t, (h0, v0, g, floor.level))
    t_exact = exact_landing(h0, v0, g, floor.level, 1.0)
    want = torch.autograd.grad(t_exact, (h0, v0, g, floor.level))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


def test_the_event_time_passes_gradcheck_on_a_nonlinear_field():
    # dy/dt = −k y³ from y0 until y = c: no closed form used, only float64 finite differences.
    def event_time(y0, k, c):
        problem = op.ODEProblem(lambda t, y: -k * y**3, y0, torch.tensor([0.0, 50.0], dtype=F64),
                                event=lambda t, y: y.sum() - c)
        return op.solve(problem, TIGHT, op.GaussAdjoint()).event_t

    inputs = tuple(leaves([1.2, 0.4], 0.8, 0.9))
    assert torch.autograd.gradcheck(event_time, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_mistakes_are_refused_with_the_fix():
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    ts = torch.tensor([0.0, 2.0], dtype=F64)
    f = lambda t, y: torch.stack([y[1], -y[0]])  # noqa: E731
    with pytest.raises(op.InvalidArgumentError, match="event must be a function"):
        op.ODEProblem(f, y0, ts, event="y[0] == 0")
    with pytest.raises(op.InvalidArgumentError, match="zero at the initial time"):
        op.solve(op.ODEProblem(f, y0, ts, event=lambda t, y: y[1]))
    with pytest.raises(op.InvalidArgumentError, match="floating-point tensor"):
        op.solve(op.ODEProblem(f, y0, ts, event=lambda t, y: float(y[0])))
    with pytest.raises(op.UnsupportedCombinationError, match="events are located on the solver's own steps"):
        op.solve(op.ODEProblem(f, y0, ts, event=lambda t, y: y[0]), op.TorchDiffEq("dopri5"))


def test_an_event_time_without_a_derivative_says_so():
    # A switch that jumps across zero at t = 1 whatever the state: its time does not move.
    y0 = torch.tensor([1.0, 0.0], dtype=F64, requires_grad=True)
    f = lambda t, y: torch.stack([y[1], -y[0]])  # noqa: E731
    switch = lambda t, y: 0.5 - (t > 1.0).to(y.dtype)  # noqa: E731
    sol = op.solve(op.ODEProblem(f, y0, torch.tensor([0.0, 5.0], dtype=F64), event=switch), TIGHT)
    assert math.isclose(float(sol.event_t.detach()), 1.0, rel_tol=1e-12)
    with pytest.raises(op.SolveError, match="zero rate of change along the solution"):
        sol.event_t.backward()


def test_second_derivatives_of_the_event_time_are_refused():
    h0, v0, g = leaves(10.0, 2.0, 9.81)
    problem = op.ODEProblem(falling(g), torch.stack([h0, v0]), torch.tensor([0.0, 5.0], dtype=F64),
                            event=lambda t, y: y[0])
    with pytest.raises(op.UnsupportedCombinationError, match="second derivatives through an event time"):
        torch.autograd.grad(op.solve(problem, TIGHT).event_t, g, create_graph=True)


# -- torchdiffeq's interface ------------------------------------------------------------------


class Drag(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.g = torch.nn.Parameter(torch.tensor(9.81, dtype=F64))
        self.k = torch.nn.Parameter(torch.tensor(0.3, dtype=F64))

    def forward(self, t, y):
        return torch.stack([y[1], -self.g - self.k * y[1]])


class TupleDrag(Drag):
    def forward(self, t, y):
        return y[1], -self.g - self.k * y[1]


def run_event(library, interface, *, tuple_state=False, reverse_time=False, **kwargs):
    field = TupleDrag() if tuple_state else Drag()
    y0 = torch.tensor([10.0, 2.0], dtype=F64, requires_grad=True)
    t0 = torch.tensor(0.0, dtype=F64, requires_grad=True)
    state = (y0[0], y0[1]) if tuple_state else y0
    event_fn = lambda t, y: y[0] - 1.0  # noqa: E731  # reached going either way
    event_t, solution = library.odeint_event(field, state, t0, event_fn=event_fn, reverse_time=reverse_time,
                                             odeint_interface=getattr(library, interface), **kwargs)
    last = torch.stack([s[-1] for s in solution]) if tuple_state else solution[-1]
    loss = event_t**2 + (last**2).sum()
    grads = torch.autograd.grad(loss, (y0, t0, field.g, field.k))
    return event_t.detach(), last.detach(), grads


@pytest.mark.parametrize("interface", ["odeint", "odeint_adjoint"])
@pytest.mark.parametrize("tuple_state", [False, True], ids=["tensor", "tuple"])
@pytest.mark.parametrize("reverse_time", [False, True], ids=["forwards", "reverse_time"])
def test_odeint_event_matches_torchdiffeq(interface, tuple_state, reverse_time):
    kwargs = dict(tuple_state=tuple_state, reverse_time=reverse_time, rtol=1e-10, atol=1e-12)
    ours, theirs = run_event(compat, interface, **kwargs), run_event(torchdiffeq, interface, **kwargs)
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(ours[1], theirs[1], rtol=1e-9, atol=1e-9)
    for a, b in zip(ours[2], theirs[2]):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-8)


def test_odeint_event_with_a_fixed_grid_method_matches_torchdiffeq():
    kwargs = dict(method="rk4", options=dict(step_size=0.01, interp="cubic"))
    ours, theirs = run_event(compat, "odeint", **kwargs), run_event(torchdiffeq, "odeint", **kwargs)
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-6, atol=1e-6)
    for a, b in zip(ours[2], theirs[2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_odeint_event_also_differentiates_what_event_fn_reads():
    level = torch.tensor(1.0, dtype=F64, requires_grad=True)
    y0 = torch.tensor([10.0, 2.0], dtype=F64)
    event_t, _ = compat.odeint_event(Drag(), y0, torch.tensor(0.0, dtype=F64),
                                     event_fn=lambda t, y: y[0] - level, rtol=1e-10, atol=1e-12)
    (got,) = torch.autograd.grad(event_t, level)
    # dt*/dlevel = 1 / (dh/dt at t*) = 1 / v(t*), by finite differences of the event time.
    with torch.no_grad():
        def at(value):
            return compat.odeint_event(Drag(), y0, torch.tensor(0.0, dtype=F64),
                                       event_fn=lambda t, y: y[0] - value, rtol=1e-12, atol=1e-14)[0]
        fd = (at(1.0 + 1e-5) - at(1.0 - 1e-5)) / 2e-5
    torch.testing.assert_close(got, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("interface", ["odeint", "odeint_adjoint"])
def test_odeint_event_mode_returns_torchdiffeqs_pair(interface):
    """odeint(..., event_fn=) as torchdiffeq: (event_t, [y0, y(event_t)]), the state's
    derivative taken at a fixed event time."""
    results = []
    for library in (compat, torchdiffeq):
        field = Drag()
        y0 = torch.tensor([10.0, 2.0], dtype=F64, requires_grad=True)
        t = torch.tensor([0.0, 1.0], dtype=F64)
        event_t, solution = getattr(library, interface)(field, y0, t, event_fn=lambda t, y: y[0] - 1.0,
                                                        rtol=1e-10, atol=1e-12)
        assert solution.shape == (2, 2)
        grads = torch.autograd.grad((solution[-1] ** 2).sum(), (y0, field.g, field.k))
        results.append((event_t, solution.detach(), grads))
    (t_ours, y_ours, g_ours), (t_theirs, y_theirs, g_theirs) = results
    assert not t_ours.requires_grad
    torch.testing.assert_close(t_ours, t_theirs, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(y_ours, y_theirs, rtol=1e-9, atol=1e-9)
    for a, b in zip(g_ours, g_theirs):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-8)


def test_event_mode_mistakes_are_refused_with_the_fix():
    y0 = torch.tensor([10.0, 2.0], dtype=F64)
    event_fn = lambda t, y: y[0] - 1.0  # noqa: E731
    with pytest.raises(op.InvalidArgumentError, match="t must hold two times"):
        compat.odeint(Drag(), y0, torch.tensor([0.0, 1.0, 2.0], dtype=F64), event_fn=event_fn)
    with pytest.raises(op.InvalidArgumentError, match="needs a step size"):
        compat.odeint(Drag(), y0, torch.tensor([0.0, 1.0], dtype=F64), event_fn=event_fn, method="euler")
    with pytest.raises(op.InvalidArgumentError, match="event_fn must be a function"):
        compat.odeint_event(Drag(), y0, torch.tensor(0.0, dtype=F64), event_fn=None)
    with pytest.raises(op.InvalidArgumentError, match="t0 must be a one-element tensor"):
        compat.odeint_event(Drag(), y0, torch.tensor([0.0, 1.0], dtype=F64), event_fn=event_fn)


def test_augmentation_keeps_the_event_on_the_original_channels():
    h0, v0, g, level = leaves(10.0, 2.0, 9.81, 1.5)
    problem = op.ODEProblem(falling(g), torch.stack([h0, v0]), torch.tensor([0.0, 5.0], dtype=F64),
                            event=[lambda t, y: y[0] - level])
    widened = op.augment(problem, op.ZeroAugmentation(2))

    def field(t, y):  # the falling body on the first two channels, the added ones still
        return torch.cat([falling(g)(t, y[:2]), torch.zeros_like(y[2:])])

    sol = op.solve(op.ODEProblem(field, widened.y0, widened.ts, event=widened.event), TIGHT, op.ACA())
    t_exact = exact_landing(h0, v0, g, level, 1.0)
    torch.testing.assert_close(sol.event_t, t_exact.detach(), rtol=1e-11, atol=1e-11)
    got = torch.autograd.grad(sol.event_t, (h0, v0, g, level))
    want = torch.autograd.grad(t_exact, (h0, v0, g, level))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name,rule", RULES, ids=[n for n, _ in RULES])
def test_an_autonomous_event_moves_with_the_initial_time(name, rule):
    # Starting later shifts the whole trajectory: dt*/dt0 = 1, dy(t*)/dt0 = 0.
    h0, v0, g, level = leaves(10.0, 2.0, 9.81, 1.5)
    ts = torch.tensor([0.3, 0.5, 6.0], dtype=F64, requires_grad=True)
    sol = op.solve(op.ODEProblem(falling(g), torch.stack([h0, v0]), ts, event=lambda t, y: y[0] - level),
                   TIGHT, rule)
    (dt_dts,) = torch.autograd.grad(sol.event_t, ts, retain_graph=True)
    torch.testing.assert_close(dt_dts, torch.tensor([1.0, 0.0, 0.0], dtype=F64), rtol=0, atol=1e-9)
    (dv_dts,) = torch.autograd.grad(sol.ys[-1, 1], ts)
    torch.testing.assert_close(dv_dts, torch.zeros(3, dtype=F64), rtol=0, atol=1e-8)
