"""``check_solver``: what every :class:`odeplug.Solver` promises, measured on problems whose exact
solution is known (:mod:`odeplug.testing._strategies`).

Properties, in the order they run:

*Order of convergence* (``ORDER``). A method of order p has global error C·hᵖ + O(hᵖ⁺¹) on a
smooth problem as the step h → 0, so log(error) against log(h) is a line of slope p. The solver
declares p with :func:`odeplug.order` (and its steppers must agree in ``Stepper.order``). The
check drives the solver's own :class:`odeplug.Stepper` with fixed steps through the stepping
contract (``make_stepper``, then ``step_from(t, y, h)`` with h fixed, which any stepper,
adaptive or not, must honour) over eight time constants (8/rate) from a drawn problem's initial
state, starting at h·rate = 1 and halving h up to six times. The error is the largest over every
step's end, relative to the solution's size; levels whose error is below 10⁻¹⁴ (float64
round-off accumulated over the steps) are dropped, and the least-squares slope of the three
finest remaining levels must lie in [p − ½, p + ¾]. A long span and the finest levels matter: a
method tuned for a small principal error coefficient (Tsit5) reaches its asymptotic regime only
at errors of 10⁻⁹ and below, and before it the next order's term dominates, so a measured slope
approaches p from above (hence the wider margin above; a method declaring p − 1 still fails).
Problems are float64, solved forwards in time (the direction is the field's business, checked
below): linear systems, harmonic oscillators and exponentials with a time-dependent rate, so
that a method's time nodes are exercised as well as its weights.

*Dense output* (``DENSE``). The same run evaluates ``Stepper.interpolate`` at interior points of
every step (θ = 0.3 and 0.7). A continuous extension of order q has local error O(h^(q+1)); at an
interior point the error is that plus the global error O(hᵖ) carried in from the step's start, so
it converges at order min(p, q + 1). Every standard extension has q ≥ p − 1 (Dopri5's and
Tsit5's are 4th-order with p = 5; cubic Hermite is 3rd order), so the interior error must
converge at the declared order p: its fitted slope must be at least p − ½. Linear interpolation
(q = 1) between the steps of a 4th-order method converges at order 2 and fails.

*Decreasing times mirror increasing ones* (``MIRRORED``). Solving y' = f(t, y) over decreasing
output times t₀ > t₁ > … is, by the change of variable s = −t, solving z' = −f(−s, z) over the
increasing times −t₀ < −t₁ < …, and a solver must treat the two identically: the same steps, so
the same numbers up to round-off (16 units of round-off of the solution's size).

*Forward then backward recovers y₀* (``ROUND_TRIP``). Solving from t₀ to t_K and then from the
result back to t₀ returns y₀ up to the two solves' errors: within 50 times the larger measured
error of a solve in either direction (of the problem, and of the same trajectory traced from
t_K back to t₀; largest over the output times, relative to the solution's size; problems are
mildly stable or growing, so an error is amplified by at most e³ along the way back), plus
round-off. Both properties draw float32 and float64, tensor and tuple states.

*Direct's gradients match finite differences* (``DIRECT_FD``). Direct backpropagates through the
solver: its gradient is the derivative of the computed solution. For each input (y₀, the output
times, each parameter f reads: a module's parameter, a closure's tensor, or tensors computed from
parameters outside f) the directional derivative along a random direction must match a central
float64 finite difference (step 10⁻⁶) to 200·max(ε, δ) + 10⁻⁶ relative to the larger of its own
size and the largest gradient entry, ε the solve's measured relative error and δ that of
Direct's gradient against the exact one (autograd through the exact solution): an adaptive
solver's steps move with its inputs, which Direct (like torchdiffeq) does not differentiate, and
that costs an error of the order of the solver's; for a fixed step the two agree to the finite
difference's own error. Never checked against Direct itself. Increasing and decreasing output
times.

*Each gradient rule's gradients match Direct's* (``rule_property_name(label)``, one property per
rule of :func:`odeplug.bench.gradient_rules`, Direct excepted). A continuous adjoint differs from
Direct's discretise-then-optimise gradient by the error of the solves (and of the quadrature),
so every tensor's gradient must agree with Direct's to 50·max(ε, δ) + 10⁻⁵ relative to the
largest gradient entry, with δ the relative error of Direct's gradient against the exact one
(autograd through the exact solution): tight for an adaptive solver at tight tolerances, the
discretisation error for a fixed step. Increasing and decreasing output times.

Out of scope, with the reason (:func:`skipped_solver_properties`): every property, for a solver
that does not solve an :class:`odeplug.ODEProblem` (``solve`` with Direct raises
:class:`odeplug.UnsupportedCombinationError`; e.g. torchsde's SDE solver); order and dense output
for a solver that cannot be stepped (``make_stepper`` raises it: a bridge running another
library's loop, such as ``TorchDiffEq``); a rule's property when the rule refuses the solver with
an :class:`odeplug.OdeplugError` saying what to do instead (a stepping rule on a bridge; a rule
configured with a step-control norm on a fixed-step solver).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import attrs
import torch
from hypothesis import settings as Settings

from .._errors import InvalidOptionError, UnsupportedCombinationError
from .._integrate import solver_times
from .._nouns import GradientRule, Solver
from .._problem import ODEProblem, State
from .._solve import solve
from .._stepping import VectorField
from .._verbs import make_stepper, order
from ._properties import CheckFailed, Property, enforce, hypothesis_property
from ._strategies import KnownSolution, known_solutions

__all__ = [
    "solver_properties", "skipped_solver_properties", "check_solver", "rule_property_name",
    "measure_convergence", "fitted_slope", "Convergence", "ORDER", "DENSE", "MIRRORED",
    "ROUND_TRIP", "DIRECT_FD",
]

ORDER = "order of convergence"
DENSE = "dense output converges at the declared order"
MIRRORED = "decreasing times mirror increasing ones"
ROUND_TRIP = "forward then backward recovers y0"
DIRECT_FD = "Direct's gradients match finite differences"

F64 = torch.float64
ROUND_OFF_FLOOR = 1e-14
ORDER_SLACK = 0.5
ORDER_SLACK_ABOVE = 0.75
# From order 7 on, float64 leaves two or three halvings above round-off, and a method with a
# tiny leading error coefficient (Dopri8: the error falls 1650× then 1185× per halving) is still
# pre-asymptotic there: slopes of p + 0.1 to p + 2.5 are measured. It starts at h·rate = 2.
HIGH_ORDER = 7
HIGH_ORDER_SLACK_ABOVE = 2.5
INTERIOR_THETAS = (0.3, 0.7)
HALVINGS = 6
TIME_CONSTANTS = 8.0
FIT_LEVELS = 3
ERROR_FACTOR = 50.0
FD_STEP = 1e-6
FD_FLOOR = 1e-6
# An adaptive solver's steps move with its inputs; Direct does not differentiate that.
FD_ERROR_FACTOR = 200.0
# A quadrature adjoint reads the dense output, whose error can exceed the solution's at the
# steps' ends (RK4's cubic Hermite at dt = 0.01: about 10⁻⁶ of the gradient).
GRADIENT_FLOOR = 1e-5
MIRROR_ULPS = 16.0
ROUND_TRIP_ULPS = 100.0


def rule_property_name(label: str) -> str:
    """The name of the property that rule ``label``'s gradients match Direct's."""
    return f"{label}'s gradients match Direct's"


@attrs.frozen
class Convergence:
    """Errors of a fixed-step run at successive halvings of the step: ``step_sizes``, the
    largest relative error over the steps' ends (``errors``) and over interior points of every
    step through the dense output (``dense_errors``)."""

    step_sizes: tuple[float, ...]
    errors: tuple[float, ...]
    dense_errors: tuple[float, ...]


def _flat(y: State) -> torch.Tensor:
    """Stacked states (K, …) as (K, n), blocks laid end to end as in a flat solver state."""
    parts = y if isinstance(y, tuple) else (y,)
    return torch.cat([p.reshape(p.shape[0], -1) for p in parts], dim=1)


def _relative_error(computed: torch.Tensor, exact: torch.Tensor) -> float:
    return float((computed.to(F64) - exact).abs().max() / exact.abs().max().clamp_min(1e-300))


def _fixed_step_run(solver: Solver, known: KnownSolution, steps: int) -> tuple[float, float]:
    problem = known.problem
    field = VectorField(problem.flat_field(), problem.direction)
    stepper = make_stepper(solver, field, problem.layout)
    s = solver_times(problem.ts.detach(), problem.direction)
    s0, s1 = s[0], s[-1]
    h = (s1 - s0) / steps
    y = problem.flat_y0().detach()
    thetas = torch.tensor(INTERIOR_THETAS, dtype=s.dtype)
    ends, interior, end_times, interior_times = [], [], [], []
    with torch.no_grad():
        stepper.start(s0, y, s1)
        for k in range(steps):
            t0 = s0 + k * h
            step = stepper.step_from(t0, y, h)
            at = step.t0 + thetas * (step.t1 - step.t0)
            interior.append(stepper.interpolate(step, at))
            interior_times.append(at)
            y = step.y1
            ends.append(y)
            end_times.append(step.t1)
    user = problem.direction
    exact_ends = _flat(known.exact(user * torch.stack(end_times)))
    exact_interior = _flat(known.exact(user * torch.cat(interior_times)))
    return (_relative_error(torch.stack(ends), exact_ends),
            _relative_error(torch.cat(interior), exact_interior))


def measure_convergence(solver: Solver, known: KnownSolution) -> Convergence:
    """Drive ``solver``'s stepper with fixed steps over ``TIME_CONSTANTS`` time constants
    (``TIME_CONSTANTS / known.rate``) forwards from ``known``'s initial time, starting at
    h·rate = 1 (2 from order 7 on) and halving up to six times (fewer once both errors are
    below round-off)."""
    values = (x.detach().cpu().numpy().tobytes() for x in known.inputs)
    key = (type(solver), repr(solver), known.equation, *values)
    if key not in _MEASURED:
        if len(_MEASURED) >= _MEASURED_KEPT:
            del _MEASURED[next(iter(_MEASURED))]
        _MEASURED[key] = _measure(solver, _stretched(known))
    return _MEASURED[key]


# The order and dense-output properties draw the same examples (a derandomised profile) and
# measure them in one run.
_MEASURED: dict[tuple, Convergence] = {}
_MEASURED_KEPT = 32


def _stretched(known: KnownSolution) -> KnownSolution:
    """``known`` from its initial state over ``TIME_CONSTANTS`` time constants, forwards."""
    count = len(known.problem.y0) if isinstance(known.problem.y0, tuple) else 1
    t0 = known.inputs[count].detach()[0]
    ts = torch.stack([t0, t0 + TIME_CONSTANTS / known.rate])
    return known.rebuild((*known.inputs[:count], ts, *known.inputs[count + 1:]))


def _measure(solver: Solver, known: KnownSolution) -> Convergence:
    coarsest = 2.0 if order(solver) >= HIGH_ORDER else 1.0  # h·rate of the first level
    first = math.ceil(TIME_CONSTANTS / coarsest)
    span = TIME_CONSTANTS / known.rate
    sizes, errors, dense = [], [], []
    for level in range(HALVINGS + 1):
        steps = first * 2**level
        error, dense_error = _fixed_step_run(solver, known, steps)
        sizes.append(span / steps)
        errors.append(error)
        dense.append(dense_error)
        if error < ROUND_OFF_FLOOR and dense_error < ROUND_OFF_FLOOR:
            break
    return Convergence(tuple(sizes), tuple(errors), tuple(dense))


def fitted_slope(step_sizes: tuple[float, ...], errors: tuple[float, ...]) -> float | None:
    """The least-squares slope of log(error) against log(h) over the finest three levels whose
    error is above round-off; ``None`` when fewer than three are."""
    usable = [(h, e) for h, e in zip(step_sizes, errors) if e >= ROUND_OFF_FLOOR][-FIT_LEVELS:]
    if len(usable) < FIT_LEVELS:
        return None
    x = torch.tensor([math.log(h) for h, _ in usable], dtype=F64)
    y = torch.tensor([math.log(e) for _, e in usable], dtype=F64)
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


def _declared_order(solver: Solver, subject: str, prop: str) -> int:
    try:
        declared = order(solver)
    except UnsupportedCombinationError as exc:
        kind = type(solver).__name__
        raise CheckFailed(
            subject, prop, "(none: the solver declares no order)",
            f"register the order p of its global error O(h^p): @odeplug.register "
            f"def order(solver: {kind}): return p  ({exc})",
        ) from exc
    if not isinstance(declared, int) or isinstance(declared, bool) or declared < 1:
        raise CheckFailed(subject, prop, "(none)",
                          f"order({subject}) returned {declared!r}, not an int >= 1")
    return declared


def _dense_order(solver: Solver, known: KnownSolution, declared: int) -> int:
    field = VectorField(known.problem.flat_field(), known.problem.direction)
    return getattr(make_stepper(solver, field, known.problem.layout), "dense_order", declared - 1)


def _convergence_holds(solver: Solver, subject: str, prop: str, dense: bool):
    def holds(known: KnownSolution) -> None:
        declared = _declared_order(solver, subject, prop)
        if not dense:
            field = VectorField(known.problem.flat_field(), known.problem.direction)
            stepper_order = make_stepper(solver, field, known.problem.layout).order
            assert stepper_order == declared, (
                f"order(solver) declares {declared} but its stepper's .order is {stepper_order}: "
                "read both from one place"
            )
        measured = measure_convergence(solver, known)
        errors = measured.dense_errors if dense else measured.errors
        slope = fitted_slope(measured.step_sizes, errors)
        table = ", ".join(f"h={h:.3g}: {e:.3g}" for h, e in zip(measured.step_sizes, errors))
        assert slope is not None, (
            f"fewer than three step sizes with an error above round-off ({table}); an order "
            f"of {declared} cannot be measured in float64 from h·rate = 1"
        )
        if dense:
            expected = min(declared, _dense_order(solver, known, declared) + 1)
            assert slope >= expected - ORDER_SLACK, (
                f"the dense output's interior error converges at order {slope:.2f}, below "
                f"{expected}, min(p, q + 1) for the declared order p = {declared} and the "
                f"stepper's dense_order q (errors {table})"
            )
        else:
            above = ORDER_SLACK_ABOVE if declared < HIGH_ORDER else HIGH_ORDER_SLACK_ABOVE
            assert declared - ORDER_SLACK <= slope <= declared + above, (
                f"measured order {slope:.2f}, declared {declared} (errors {table})"
            )

    return holds


def _mirrored(f):  # noqa: ANN001, ANN202
    def g(s, z):  # noqa: ANN001, ANN202
        out = f(-s, z)
        return tuple(-part for part in out) if isinstance(out, tuple) else -out

    return g


def _direct() -> GradientRule:
    from .._plugins import exported

    return exported()["Direct"]()


def _mirror_holds(solver: Solver):
    def holds(known: KnownSolution) -> None:
        decreasing = known if known.problem.direction < 0 else known.reversed()
        problem = decreasing.problem
        with torch.no_grad():
            backwards = _flat(solve(problem, solver, _direct()).ys)
            mirrored = _flat(solve(ODEProblem(_mirrored(problem.f), problem.y0, -problem.ts), solver,
                                 _direct()).ys)
        eps = torch.finfo(backwards.dtype).eps
        difference = float((backwards - mirrored).abs().max())
        allowed = MIRROR_ULPS * eps * float(backwards.abs().max())
        assert difference <= allowed, (
            f"over decreasing times the solution differs from the mirrored increasing solve by "
            f"{difference:.3g} (round-off allows {allowed:.3g})"
        )

    return holds


def _solve_error(known: KnownSolution, solver: Solver) -> float:
    """The relative error of a solve of ``known`` at its output times."""
    with torch.no_grad():
        computed = solve(known.problem, solver, _direct()).ys
    return _relative_error(_flat(computed), _flat(known.exact(known.problem.ts)))


def _round_trip_holds(solver: Solver):
    def holds(known: KnownSolution) -> None:
        problem = known.problem
        with torch.no_grad():
            forward = solve(problem, solver, _direct()).ys
            end = tuple(p[-1] for p in forward) if isinstance(forward, tuple) else forward[-1]
            back = solve(ODEProblem(problem.f, end, problem.ts.flip(0)), solver, _direct()).ys
        start = _flat(known.exact(problem.ts[:1]))
        returned = _flat(back)[-1:]
        error = _relative_error(returned, start)
        accuracy = max(_solve_error(known, solver), _solve_error(known.reversed(), solver))
        allowed = ERROR_FACTOR * accuracy + ROUND_TRIP_ULPS * torch.finfo(returned.dtype).eps
        assert error <= allowed, (
            f"back at t0 the state is off by {error:.3g} (relative), more than {ERROR_FACTOR:g} "
            f"times the larger error of a solve in either direction, {accuracy:.3g}"
        )

    return holds


def _loss(ys: State) -> torch.Tensor:
    flat = _flat(ys)
    weights = torch.linspace(0.5, 1.5, flat.numel(), dtype=flat.dtype).view_as(flat)
    return (weights * flat**2).sum()


@attrs.frozen
class _Reference:
    """One direction of one gradient example: the exact gradient, Direct's, and the errors
    that set the tolerances."""

    exact: tuple[torch.Tensor, ...]
    direct: tuple[torch.Tensor, ...]
    solve_error: float
    direct_error: float

    @property
    def scale(self) -> float:
        return max(float(g.abs().max()) for g in self.direct)


def _gradients(
    known: KnownSolution, solver: Solver, rule: GradientRule,
) -> tuple[tuple[torch.Tensor, ...], float]:
    built = known.fresh(requires_grad=True)
    sol = solve(built.problem, solver, rule)
    grads = torch.autograd.grad(_loss(sol.ys), built.inputs, allow_unused=True)
    with torch.no_grad():
        error = _relative_error(_flat(sol.ys), _flat(built.exact(built.problem.ts)))
    return tuple(torch.zeros_like(x) if g is None else g for x, g in zip(built.inputs, grads)), error


def _reference(known: KnownSolution, solver: Solver) -> _Reference:
    built = known.fresh(requires_grad=True)
    exact = torch.autograd.grad(_loss(built.exact(built.problem.ts)), built.inputs)
    direct, solve_error = _gradients(known, solver, _direct())
    truth_scale = max(float(g.abs().max()) for g in exact)
    direct_error = max(float((d - e).abs().max()) for d, e in zip(direct, exact)) / truth_scale
    return _Reference(exact, direct, solve_error, direct_error)


def _both_directions(known: KnownSolution) -> tuple[KnownSolution, KnownSolution]:
    return known, known.reversed()


def _input_names(known: KnownSolution) -> list[str]:
    count = len(known.problem.y0) if isinstance(known.problem.y0, tuple) else 1
    names = [f"y0[{i}]" for i in range(count)] if count > 1 else ["y0"]
    return names + ["ts"] + [f"parameter {i}" for i in range(len(known.inputs) - count - 1)]


def _direct_fd_holds(solver: Solver):
    def holds(known: KnownSolution) -> None:
        for case in _both_directions(known):
            reference = _reference(case, solver)
            g = torch.Generator().manual_seed(len(case.inputs))
            base = tuple(x.detach() for x in case.inputs)
            tolerance = FD_ERROR_FACTOR * max(reference.solve_error, reference.direct_error) + FD_FLOOR
            for j, name in enumerate(_input_names(case)):
                direction = torch.randn(base[j].shape, generator=g, dtype=F64)
                direction = direction / direction.abs().max().clamp_min(1e-300)
                step = FD_STEP * max(1.0, float(base[j].abs().max()))

                def loss_at(sign: float) -> float:
                    moved = list(base)
                    moved[j] = base[j] + sign * step * direction.to(base[j].dtype)
                    with torch.no_grad():
                        return float(_loss(solve(case.rebuild(tuple(moved)).problem, solver, _direct()).ys))

                finite_difference = (loss_at(1.0) - loss_at(-1.0)) / (2 * step)
                directional = float((reference.direct[j] * direction).sum())
                # Norm-wise, as in the rule properties: a derivative near zero is held to the
                # scale of the largest gradient entry, not to its own.
                scale = max(float((reference.exact[j] * direction).abs().sum()), reference.scale)
                # Finite differences of an adaptive solve also see the step sizes move with the
                # input (Direct holds them fixed), which on a step or two read through a
                # low-order dense output can exceed the bound. Where FD is the one further from
                # the exact derivative and Direct is within the bound of it, FD is the noise.
                exact_directional = float((reference.exact[j] * direction).sum())
                direct_off = abs(directional - exact_directional)
                fd_is_the_noise = (direct_off <= tolerance * scale
                                   and abs(finite_difference - exact_directional) > direct_off)
                assert abs(directional - finite_difference) <= tolerance * scale or fd_is_the_noise, (
                    f"dL/d{name} along a random direction: Direct gives {directional:.10g}, "
                    f"finite differences {finite_difference:.10g} (relative difference "
                    f"{abs(directional - finite_difference) / scale:.3g}, allowed {tolerance:.3g}; "
                    f"ts {'increasing' if case.problem.direction > 0 else 'decreasing'})"
                )

    return holds


def _rule_holds(solver: Solver, label: str, rule: GradientRule):
    def holds(known: KnownSolution) -> None:
        for case in _both_directions(known):
            reference = _reference(case, solver)
            got, _ = _gradients(case, solver, rule)
            tolerance = ERROR_FACTOR * max(reference.solve_error, reference.direct_error) + GRADIENT_FLOOR
            for name, mine, direct in zip(_input_names(case), got, reference.direct):
                difference = float((mine - direct).abs().max()) / reference.scale
                assert difference <= tolerance, (
                    f"dL/d{name}: {label} differs from Direct by {difference:.3g} relative to the "
                    f"largest gradient entry (allowed {tolerance:.3g}: Direct's error against the "
                    f"exact gradient is {reference.direct_error:.3g}, the solve's "
                    f"{reference.solve_error:.3g}); {label} {mine.flatten()[:3].tolist()}, Direct "
                    f"{direct.flatten()[:3].tolist()}; ts "
                    f"{'increasing' if case.problem.direction > 0 else 'decreasing'}"
                )

    return holds


def _probe() -> ODEProblem:
    y0 = torch.ones(2, dtype=F64, requires_grad=True)
    return ODEProblem(lambda t, y: -y, y0, torch.tensor([0.0, 0.1], dtype=F64))


def _rules(rules: Mapping[str, GradientRule] | None) -> dict[str, GradientRule]:
    if rules is None:
        from ..bench import gradient_rules

        rules = gradient_rules()
    return {label: rule for label, rule in rules.items() if type(rule).__name__ != "Direct"}


def skipped_solver_properties(
    solver: Solver, *, rules: Mapping[str, GradientRule] | None = None,
) -> dict[str, str]:
    """The properties of :func:`check_solver` that do not apply to ``solver``, each with the
    reason (see the module docstring). Found by trying: a tiny solve with Direct, one
    ``make_stepper``, a tiny forward solve with each rule."""
    rules = _rules(rules)
    everything = [ORDER, DENSE, MIRRORED, ROUND_TRIP, DIRECT_FD, *map(rule_property_name, rules)]
    try:
        solve(_probe(), solver, _direct())
    except UnsupportedCombinationError as exc:
        reason = f"{type(solver).__name__} does not solve ODEProblems: {exc}"
        return dict.fromkeys(everything, reason)
    skipped = {}
    problem = _probe()
    try:
        make_stepper(solver, VectorField(problem.flat_field()), problem.layout)
    except UnsupportedCombinationError as exc:
        reason = (f"{type(solver).__name__} cannot be driven step by step, so neither its order "
                  f"nor its dense output can be measured: {exc}")
        skipped[ORDER] = skipped[DENSE] = reason
    for label, rule in rules.items():
        try:
            probe = _probe()
            torch.autograd.grad(solve(probe, solver, rule).ys.sum(), probe.y0)
        except (UnsupportedCombinationError, InvalidOptionError) as exc:
            skipped[rule_property_name(label)] = f"{label} refuses {type(solver).__name__}: {exc}"
    return skipped


def solver_properties(
    solver: Solver, *, settings: Settings | None = None,
    rules: Mapping[str, GradientRule] | None = None,
) -> list[Property]:
    """The properties :func:`check_solver` runs on ``solver``, in order, leaving out those of
    :func:`skipped_solver_properties`. ``rules`` (label → rule) defaults to every registered
    rule (:func:`odeplug.bench.gradient_rules`); ``settings`` overrides the Hypothesis settings
    (default: the loaded profile, with few examples: each one is several solves)."""
    rules = _rules(rules)
    skipped = skipped_solver_properties(solver, rules=rules)
    subject = repr(solver)
    forward_f64 = known_solutions(dtype=F64, direction=1)
    anything = known_solutions()
    candidates = [
        (ORDER, forward_f64, _convergence_holds(solver, subject, ORDER, dense=False), 5),
        (DENSE, forward_f64, _convergence_holds(solver, subject, DENSE, dense=True), 5),
        (MIRRORED, anything, _mirror_holds(solver), 6),
        (ROUND_TRIP, anything, _round_trip_holds(solver), 6),
        (DIRECT_FD, forward_f64, _direct_fd_holds(solver), 3),
        *((rule_property_name(label), forward_f64, _rule_holds(solver, label, rule), 3)
          for label, rule in rules.items()),
    ]
    return [
        hypothesis_property(subject, name, strategy, holds, settings, max_examples)
        for name, strategy, holds, max_examples in candidates if name not in skipped
    ]


def check_solver(
    solver: Solver, *, settings: Settings | None = None,
    rules: Mapping[str, GradientRule] | None = None,
) -> None:
    """Check every property of :func:`solver_properties` on ``solver``; raise
    :class:`CheckFailed` naming the first that fails and its counterexample."""
    enforce(solver_properties(solver, settings=settings, rules=rules))
