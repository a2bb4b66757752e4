"""torchdiffeq's fixed-grid semantics in odeplug's fixed-step solvers: ``dt=None`` (steps on the
output times), ``grid=`` (steps on given times), ``interpolation=`` ("cubic" | "linear") and
``perturb=``, against torchdiffeq's ``odeint`` and ``odeint_adjoint`` through ``odeplug.compat``
(outputs and dL/dy0, dL/dθ, dL/dt), and natively through ``odeplug.solve`` with every rule."""

import math

import pytest
import torch
import torchdiffeq

import odeplug as op
import odeplug.compat as compat
from compat_runs import run

F64 = torch.float64
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*did not converge:RuntimeWarning", "ignore:Functional iteration did not converge"
)


def _steps(t):
    return torch.floor(4 * t) + torch.ceil(4 * t)


class Field(torch.nn.Module):
    """A non-autonomous neural field with a step in t at every multiple of 1/4, where it takes
    neither side's value (floor(4t) + ceil(4t)), so that on a grid through those times it
    matters at both ends of a step on which side f is evaluated (perturb)."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.weight = torch.nn.Parameter(torch.randn(3, 3, generator=generator, dtype=F64) / 2)
        self.bias = torch.nn.Parameter(torch.randn(3, generator=generator, dtype=F64) / 4)

    def forward(self, t, y):
        return torch.tanh(y @ self.weight.T + self.bias) * torch.cos(t) - 0.3 * y + 0.1 * _steps(t)


class TupleField(torch.nn.Module):
    """A tuple state (position, velocity) with a learned stiffness and the same steps in t."""

    def __init__(self):
        super().__init__()
        self.stiffness = torch.nn.Parameter(torch.tensor([1.5, 0.7], dtype=F64))

    def forward(self, t, state):
        x, v = state
        return v, -self.stiffness * x - 0.2 * v + 0.05 * _steps(t)


Y0 = torch.tensor([[0.5, -1.0, 0.2], [0.1, 0.3, -0.4]], dtype=F64)
TS = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0], dtype=F64)
TUPLE_Y0 = (torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([0.0, 0.3], dtype=F64))


def assert_close(ours, theirs, keys, tol=1e-10):
    for key in keys:
        torch.testing.assert_close(ours[key], theirs[key], rtol=tol, atol=tol, msg=lambda m, k=key: f"{k}: {m}")


def grid_constructor(func, y0, t):
    """Nine times from t[0] to t[-1], its ends t's own (with their gradients), the inner ones
    constants (as odeplug's grid= holds them); works on an adjoint's per-interval spans too."""
    inner = torch.linspace(float(t[0].detach()), float(t[-1].detach()), 9, dtype=t.dtype)[1:-1]
    return torch.cat([t[:1], inner, t[-1:]])


METHODS = ["euler", "midpoint", "rk4", "heun2", "heun3", "explicit_adams", "implicit_adams", "fixed_adams"]
OPTIONS = {
    # No step_size: one step per output interval, dL/dt through the step sizes.
    "no step_size": {},
    # Output times 0.5 and 1.5 lie between the steps of 0.2: read from the interpolant.
    "step_size, linear, off-grid outputs": dict(step_size=0.2),
    "step_size, cubic, off-grid outputs": dict(step_size=0.2, interp="cubic"),
    "grid_constructor, linear": dict(grid_constructor=grid_constructor),
    "grid_constructor, cubic": dict(grid_constructor=grid_constructor, interp="cubic"),
    # The field's steps lie on these grids: perturb changes every step (see the test below).
    "perturb, no step_size": dict(perturb=True),
    "perturb, step_size, cubic": dict(step_size=0.25, perturb=True, interp="cubic"),
}
PROBLEMS = {
    "tensor state, increasing times": (Field, Y0, TS),
    "tuple state, decreasing times": (TupleField, TUPLE_Y0, TS.flip(0)),
}


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("function", ["odeint", "odeint_adjoint"])
def test_fixed_grids_match_torchdiffeq(function, method, options, problem):
    field_class, y0, ts = PROBLEMS[problem]
    kwargs = dict(method=method, options=OPTIONS[options])
    keys = ["ys", "dy0", "dtheta", "dt"]
    if function == "odeint_adjoint" and OPTIONS[options].get("perturb"):
        # dL/dt_k takes f(t_k, y_k): torchdiffeq at t_k itself, odeplug's backward solve just
        # inside the interval it is integrating (the solution's one-sided derivative there); on
        # a step of f at t_k those differ. Everything else is the same.
        keys.remove("dt")
    ours = run(compat, function, field_class(), y0, ts, **kwargs)
    theirs = run(torchdiffeq, function, field_class(), y0, ts, **kwargs)
    assert_close(ours, theirs, keys)


@pytest.mark.parametrize("method", METHODS)
def test_perturb_changes_the_solution(method):
    """The test above can fail: on this field perturb moves the solution, in both libraries."""
    for options in (dict(), dict(step_size=0.25)):
        for library in (compat, torchdiffeq):
            plain = library.odeint(Field(), Y0, TS, method=method, options=options)
            perturbed = library.odeint(Field(), Y0, TS, method=method, options=dict(options, perturb=True))
            assert float((plain - perturbed).detach().abs().max()) > 1e-3, (library.__name__, options)


def test_without_step_size_the_solve_is_one_solve_stepping_on_the_output_times():
    ts = torch.tensor([0.0, 0.3, 1.0, 1.2, 2.0], dtype=F64)
    sol = op.solve(op.ODEProblem(Field(), Y0, ts, stop_times=[0.5, 1.1]), op.Euler())
    assert sol.stats["steps_accepted"] == 4 + 2  # the output intervals, each stop splitting one


# -- natively, through odeplug.solve ----------------------------------------------------------


def _field(t, y):
    return torch.sin(3 * t) * y + 0.1 * _steps(t)


def _euler(grid, y0, f=_field, perturb=False):
    """Forward Euler by hand on ``grid`` (a list of floats)."""
    ys = [y0]
    for t0, t1 in zip(grid[:-1], grid[1:]):
        t = torch.tensor(t0, dtype=F64)
        if perturb:
            t = torch.nextafter(t, torch.tensor(math.inf, dtype=F64))
        ys.append(ys[-1] + (t1 - t0) * f(t, ys[-1]))
    return ys


def test_dt_none_steps_on_the_output_and_stop_times():
    y0 = torch.tensor([1.0, -0.5], dtype=F64)
    ts = torch.tensor([0.0, 0.3, 0.8, 1.0], dtype=F64)
    sol = op.solve(op.ODEProblem(_field, y0, ts, stop_times=[0.5]), op.Euler())
    by_hand = _euler([0.0, 0.3, 0.5, 0.8, 1.0], y0)
    torch.testing.assert_close(sol.ys, torch.stack([by_hand[i] for i in (0, 1, 3, 4)]), rtol=0, atol=1e-15)
    assert sol.stats["steps_accepted"] == 4


def test_grid_steps_on_its_times_and_interpolates_between():
    y0 = torch.tensor([1.0, -0.5], dtype=F64)
    grid = [0.0, 0.25, 0.6, 1.0]
    ts = torch.tensor([0.0, 0.4, 1.0], dtype=F64)
    by_hand = _euler(grid, y0)
    theta = (0.4 - 0.25) / (0.6 - 0.25)
    linear = op.solve(op.ODEProblem(_field, y0, ts), op.Euler(grid=torch.tensor(grid, dtype=F64), interpolation="linear"))
    torch.testing.assert_close(linear.ys[1], (1 - theta) * by_hand[1] + theta * by_hand[2], rtol=0, atol=1e-15)
    torch.testing.assert_close(linear.ys[2], by_hand[3], rtol=0, atol=1e-15)
    assert linear.stats["steps_accepted"] == 3
    cubic = op.solve(op.ODEProblem(_field, y0, ts), op.Euler(grid=grid))
    assert float((cubic.ys[1] - linear.ys[1]).abs().max()) > 1e-4  # the Hermite bends
    # Decreasing times step on a decreasing grid.
    back = op.solve(op.ODEProblem(_field, y0, ts.flip(0)), op.Euler(grid=grid[::-1], interpolation="linear"))
    torch.testing.assert_close(back.ys[-1], _euler(grid[::-1], y0)[-1], rtol=0, atol=1e-15)


def test_grid_is_a_hashable_tuple_of_floats_and_is_checked():
    assert op.RK4(grid=torch.tensor([0.0, 0.5, 1.0])).grid == (0.0, 0.5, 1.0)
    assert hash(op.RK4(grid=[0, 1])) == hash(op.RK4(grid=(0.0, 1.0)))
    with pytest.raises(op.InvalidOptionError, match=r"dt and grid both say where the steps end"):
        op.Euler(dt=0.1, grid=[0.0, 1.0])
    with pytest.raises(op.InvalidOptionError, match=r"grid must be strictly increasing or strictly decreasing"):
        op.Euler(grid=[0.0, 0.5, 0.5, 1.0])
    with pytest.raises(op.InvalidOptionError, match=r"grid must be a sequence of at least two times"):
        op.Euler(grid=[0.0])
    with pytest.raises(op.InvalidOptionError, match=r"interpolation must be 'cubic'.*or 'linear'"):
        op.Euler(interpolation="quadratic")
    with pytest.raises(op.InvalidOptionError, match=r"perturb must be True or False"):
        op.Euler(perturb=1)
    problem = op.ODEProblem(_field, torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64))
    with pytest.raises(op.InvalidOptionError, match=r"grid must start at ts\[0\] and end at ts\[-1\]"):
        op.solve(problem, op.RK4(grid=[0.0, 0.5, 0.9]))
    with pytest.raises(op.InvalidOptionError, match=r"grid must start at ts\[0\] and end at ts\[-1\]"):
        op.solve(problem, op.ExplicitAdams(grid=[0.1, 0.5, 1.0]))


def test_perturb_evaluates_just_inside_each_step():
    seen = []

    def field(t, y):
        seen.append(float(t))
        return _field(t, y)

    y0 = torch.tensor([1.0, -0.5], dtype=F64)
    ts = torch.tensor([0.0, 0.25, 0.5], dtype=F64)
    sol = op.solve(op.ODEProblem(field, y0, ts), op.RK4ThreeEighths(perturb=True, interpolation="linear"))
    after, before = math.nextafter(0.25, math.inf), math.nextafter(0.25, -math.inf)
    assert seen[0] == math.nextafter(0.0, math.inf)
    assert before in seen and after in seen and 0.25 not in seen  # the c = 1 stage, the next first stage
    torch.testing.assert_close(
        op.solve(op.ODEProblem(_field, y0, ts), op.Euler(perturb=True)).ys[-1],
        _euler([0.0, 0.25, 0.5], y0, perturb=True)[-1], rtol=0, atol=1e-15)
    assert float((sol.ys - op.solve(op.ODEProblem(_field, y0, ts), op.RK4ThreeEighths()).ys).abs().max()) > 1e-3


NATIVE = [
    op.RK4(),
    op.Heun2(perturb=True, interpolation="linear"),
    op.Midpoint(grid=[0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]),
    op.Euler(grid=[0.0, 0.6, 1.3, 2.0], perturb=True, interpolation="linear"),
    op.RK4ThreeEighths(dt=0.2, interpolation="linear"),
    op.ExplicitAdams(),
    op.ImplicitAdams(grid=[0.0, 0.5, 1.0, 1.5, 2.0], perturb=True),
]
RULES = [op.Adjoint(), op.GQAdjoint(), op.GaussAdjoint(), op.ACA()]


def _native(solver, rule, ts, ts_grad=True):
    field = Field()
    y0 = Y0.clone().requires_grad_()
    ts = ts.clone().requires_grad_(ts_grad)
    ys = op.solve(op.ODEProblem(field, y0, ts), solver, rule).ys
    (ys**2).sum().backward()
    return [ys.detach(), y0.grad, *(p.grad for p in field.parameters())] + ([ts.grad] if ts_grad else [])


@pytest.mark.parametrize("ts", [TS, TS.flip(0)], ids=["increasing", "decreasing"])
@pytest.mark.parametrize("rule", RULES, ids=repr)
@pytest.mark.parametrize("solver", NATIVE, ids=repr)
def test_every_rule_with_the_new_options(solver, rule, ts):
    """ACA gives Direct's gradients exactly (on a grid too: its inner times are stops of the
    solve), or refuses what it cannot recompute; the continuous adjoints run and approximate
    them (they discretise the adjoint equation, not the forward steps)."""
    direct = _native(solver, op.Direct(), ts)
    if isinstance(rule, op.ACA) and isinstance(solver, op.Adams):
        with pytest.raises(op.UnsupportedCombinationError, match="Adams step depends on the slopes"):
            _native(solver, rule, ts)
        return
    if isinstance(rule, op.ACA) and solver.dt is None and solver.grid is None:
        with pytest.raises(op.UnsupportedCombinationError, match="with dt=None a fixed-step solver's steps end"):
            _native(solver, rule, ts)
        # Without dL/dts the step sizes are constants, and ACA is exact.
        for ours, theirs in zip(_native(solver, rule, ts, ts_grad=False), _native(solver, op.Direct(), ts, ts_grad=False)):
            torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
        return
    ours = _native(solver, rule, ts)
    torch.testing.assert_close(ours[0], direct[0], rtol=0, atol=1e-14)
    if isinstance(rule, op.ACA):
        for mine, truth in zip(ours, direct):
            torch.testing.assert_close(mine, truth, rtol=1e-12, atol=1e-12)
    else:  # how close depends on the grid; against torchdiffeq's adjoint: test_fixed_grids_match_torchdiffeq
        assert all(torch.isfinite(g).all() for g in ours[1:])


@pytest.mark.parametrize("cls", [op.Euler, op.Midpoint, op.RK4, op.RK4ThreeEighths, op.Heun2, op.Heun3,
                                 op.ExplicitAdams, op.ImplicitAdams], ids=lambda c: c.__name__)
def test_every_fixed_step_solver_defaults_to_the_output_times(cls):
    """dt=None has a meaning now: with no options, one step per output interval."""
    solver = cls()
    assert solver.dt is None and solver.grid is None and isinstance(solver, op.FixedStep)
    sol = op.solve(op.ODEProblem(_field, torch.ones(2, dtype=F64), TS), solver)
    assert sol.stats["steps_accepted"] == len(TS) - 1
