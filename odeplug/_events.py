"""Terminal events: end a solve where an event function g(t, y(t)) crosses zero, with the event
time t* differentiable (Chen, Amos & Nickel, "Learning Neural Event Functions for Ordinary
Differential Equations", ICLR 2021).

The core's method of :func:`odeplug.solve_until_event` runs in two parts, so that every
gradient rule applies unchanged:

1. *Locate* (no graph): the solver steps from ``ts[0]`` towards ``ts[-1]``, evaluating g at the
   end of every accepted step. When some component of g has changed sign, its root in that
   step is found on the solver's dense output by the Illinois variant of regula falsi, to the
   resolution of the time dtype. No crossing before ``ts[-1]``: no event.
2. *Differentiate*: the gradient rule solves the problem again, its output times cut at t*
   (detached) and running on to the end of the step t* was found in, so that it takes the very
   same steps and y* = Y(t*; p), read from the same dense output, carries ∂Y/∂p at fixed t* for
   every input p (y0, θ, ts[0]).

Direct's method does both in one forward under autograd (:func:`solve_forward_until_event`).

t* is defined implicitly by G(t*, p) = g(t*, Y(t*; p); φ) = 0, where φ are the tensors g reads.
By the implicit function theorem

    dt*/dp = −(g_y · ∂Y/∂p + g_φ) / (g_t + g_y · f(t*, y*)),

and the returned state y(t*) = Y(t*(p); p) has dy*/dp = ∂Y/∂p + f · dt*/dp. So for a loss L
with dL/dt* = a and dL/dy* = b, and λ = −(a + b · f) / (g_t + g_y · f),

    dL/dp = (b + λ g_y) · ∂Y/∂p + λ g_φ,

which :class:`_EventTime` hands to autograd: (b + λ g_y) as the gradient of y* (which the rule
then carries to y0, θ and ts[0]) and λ g_φ to the event function's own tensors.

A component that crosses zero twice inside one step is missed, as in torchdiffeq and diffrax;
a smaller ``max_step`` or tighter tolerances resolve it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import torch

from . import _verbs
from ._errors import InvalidArgumentError, SolveError, UnsupportedCombinationError
from ._inputs import field_inputs, held_tensors
from ._integrate import check_stops, forward_stats, solver_times
from ._solution import Solution, Stats
from ._stepping import Counts, Step, Stepper, VectorField, advance

__all__ = [
    "check_event", "ending_at_event", "event_state", "event_values", "locate_event",
    "locate_then_solve", "solve_forward_until_event",
]

# Regula falsi iterations before giving up on the root (each halves the bracket at worst every
# few steps, so this is far more than a float64 time ever needs).
_MAX_ROOT_ITERATIONS = 200


def check_event(event: Any) -> Callable[..., Any] | tuple[Callable[..., Any], ...] | None:
    """The ``event`` argument of :class:`odeplug.ODEProblem`: ``None``, a callable, or a
    non-empty sequence of callables (kept as a tuple)."""
    if event is None or callable(event):
        return event
    if isinstance(event, (list, tuple)) and event and all(callable(g) for g in event):
        return tuple(event)
    raise InvalidArgumentError(
        f"ODEProblem: event must be a function g(t, y) returning a tensor (each element an event "
        f"function; the solve ends when any crosses zero) or a sequence of such functions, got "
        f"{type(event).__name__}."
    )


def event_values(problem: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """g on (user time, flat state) → a 1-D tensor: every event function's value."""
    event, unflatten = problem.event, problem.unflatten
    functions = event if isinstance(event, tuple) else (event,)

    def values(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        state = unflatten(y)
        parts = []
        for g in functions:
            value = g(t, state)
            if not isinstance(value, torch.Tensor) or not torch.is_floating_point(value):
                raise InvalidArgumentError(
                    f"ODEProblem: the event function {getattr(g, '__name__', g)!r} returned "
                    f"{type(value).__name__ if not isinstance(value, torch.Tensor) else value.dtype}; "
                    "it must return a floating-point tensor (one element per event function)."
                )
            parts.append(value.reshape(-1))
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    return values


def locate_then_solve(problem: Any, solver: Any, rule: Any, options: dict[str, Any], *,
                      through_event_time: bool = True) -> Solution:
    """:func:`odeplug.solve` for a problem with an ``event``: locate it, then solve up to it with
    ``rule`` and make the event time and state differentiable (see the module docstring);
    ``through_event_time=False``: t* detached, y(t*) differentiated at a fixed t*."""
    t_event, step_end, counts = locate_event(problem, solver)
    # Solving on to the end of the step the event was found in takes the search's very steps and
    # reads y(t*) from the same dense output (on the event surface), instead of shortening the
    # last step onto t*.
    cut = problem.without_event(until=t_event, then=step_end)
    solution = _verbs.solve(cut, solver, rule, **options)
    stats: Stats = solution.stats
    stats.update(counts)
    if t_event is None:
        return Solution(solution.ys, solution.ts, stats)
    upto = len(cut.ts) - int(bool(cut.ts[-1] != t_event))  # the rows up to t*, without the step end
    ys = tuple(p[:upto] for p in solution.ys) if problem.is_tuple else solution.ys[:upto]
    return ending_at_event(problem, ys, solution.ts[:upto], t_event, stats, through_event_time)


def ending_at_event(problem: Any, ys: Any, ts: torch.Tensor, t_event: torch.Tensor, stats: Stats,
                     through_event_time: bool) -> Solution:
    """The Solution whose outputs ``ys`` (the user's shape) at ``ts`` end at the event, their
    last row y(t*) differentiated at a fixed t*; with ``through_event_time``, t* and that row
    made differentiable through the event time (:func:`event_state`)."""
    parts = ys if problem.is_tuple else (ys,)
    y_event = problem.layout.flatten(tuple(p[-1] for p in parts))
    if not through_event_time:
        with torch.no_grad():
            index = event_index(problem, t_event, y_event)
        return Solution(ys, ts, stats, event_t=t_event, event_index=index)
    t_out, y_out, index = event_state(problem, t_event, y_event)
    ends = problem.layout.unflatten(y_out.unsqueeze(0))
    parts = tuple(torch.cat([p[:-1], e]) for p, e in zip(parts, ends))
    ts = torch.cat([ts[:-1], t_out.reshape(1)])
    return Solution(parts if problem.is_tuple else parts[0], ts, stats, event_t=t_out, event_index=index)


def event_state(
    problem: Any, t_event: torch.Tensor, y_event: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(t*, y*, index) from the event time found by :func:`locate_event` (detached) and the
    flat state there as a gradient rule computed it (∂Y/∂p at fixed t*): t* and y* then carry
    the total derivatives of the module docstring; ``index`` is the event function that
    crossed (the least of them, each signed to start positive)."""
    values = event_values(problem)
    with torch.no_grad():
        index = event_index(problem, t_event, y_event)
    event_inputs = _event_inputs(problem, values, t_event, y_event)
    spec = (problem.flat_field(), values, index)
    t_out, y_out = _EventTime.apply(spec, t_event.detach(), y_event, *event_inputs)
    return t_out, y_out, index


def event_index(problem: Any, t_event: torch.Tensor, y_event: torch.Tensor) -> int:
    """Which event function crossed at (t*, y*): the least of them, each signed to start
    positive."""
    values = event_values(problem)
    signs = torch.sign(values(problem.ts[0].to(problem.dtype), problem.flat_y0()))
    return int(torch.argmin(values(t_event.to(problem.dtype), y_event) * signs))


def locate_event(
    problem: Any, solver: Any
) -> tuple[torch.Tensor | None, torch.Tensor | None, dict[str, int]]:
    """Step without a graph from ``ts[0]`` until some event function changes sign; return
    (t* in the dtype of ``ts``, or ``None`` when none does by ``ts[-1]``; the end of the step
    t* was found in, in user time; the counts of this search: ``nfe_event``,
    ``steps_accepted_event``, ``steps_rejected_event``, ``event_evaluations``)."""
    with torch.no_grad():
        run = _integrate_until_event(problem, solver, read_outputs=False)
    stats = {"nfe_event": run.nfe, "steps_accepted_event": run.counts.accepted,
             "steps_rejected_event": run.counts.rejected, "event_evaluations": run.evaluations}
    return run.t_event, run.step_end, stats


def solve_forward_until_event(problem: Any, solver: Any, *, through_event_time: bool = True) -> Solution:
    """The event solve of a rule that differentiates through the solver's own operations
    (Direct): one forward under autograd that reads the outputs before t*, locates t* without a
    graph and reads y(t*) from the dense output at the detached t*, so that ∂Y/∂p at fixed t*
    is on the graph; then t* and y* are made differentiable as in :func:`locate_then_solve`.
    Half the evaluations of locating first and solving again.

    ``through_event_time=False`` stops short of that last part: ``event_t`` detached and y(t*)
    differentiated at a fixed t* (torchdiffeq's ``odeint(..., event_fn=...)``)."""
    run = _integrate_until_event(problem, solver, read_outputs=True)
    stats = forward_stats(run.field, run.counts, run.stepper)
    stats["event_evaluations"] = run.evaluations
    flat = torch.cat(run.outputs)
    if run.t_event is None:
        return Solution(problem.unflatten(flat), problem.ts, stats)
    ts = torch.cat([problem.ts[: len(flat) - 1], run.t_event.reshape(1)])
    return ending_at_event(problem, problem.unflatten(flat), ts, run.t_event, stats, through_event_time)


@attrs.define
class _EventRun:
    """What :func:`_integrate_until_event` found: t* (``None``: no event by ``ts[-1]``), the
    end of the step it lies in (user time, the dtype of ``ts``), the flat outputs at the output
    times before it and, last, y at the detached t* (when read), the stepper, its field and
    counts, and the number of event-function evaluations."""

    t_event: torch.Tensor | None
    step_end: torch.Tensor | None
    outputs: list[torch.Tensor]
    stepper: Stepper
    field: VectorField
    counts: Counts
    evaluations: int

    @property
    def nfe(self) -> int:
        return self.field.nfe


def _integrate_until_event(problem: Any, solver: Any, *, read_outputs: bool) -> _EventRun:
    """Step from ``ts[0]``, evaluating the event functions (without a graph) at the end of every
    accepted step, until the least of them (each signed to start positive) reaches zero; find
    the root in that step on the dense output. With ``read_outputs``, the outputs at the output
    times passed are read as the steps go (on whatever graph is active), and the step
    callbacks are called; without, this is a search only (no callbacks: they belong to the
    solve the user sees)."""
    values = event_values(problem)
    field = VectorField(problem.flat_field(), problem.direction,
                        callbacks=None if read_outputs else (None, None, None), open_end=True)
    try:
        stepper = _verbs.make_stepper(solver, field, problem.layout)
    except UnsupportedCombinationError as error:
        raise UnsupportedCombinationError(
            f"events are located on the solver's own steps and dense output, which {solver!r} "
            f"does not expose: {error}"
        ) from None
    check_stops(stepper)
    s = solver_times(problem.ts, problem.direction)
    counts, calls = Counts(), [0]
    to_user, dtype = field.to_user_time, problem.dtype

    def g(t_solver: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        with torch.no_grad():
            return values(to_user(t_solver).to(dtype), y)

    y0 = problem.flat_y0()
    start = g(s[0], y0)
    if not bool((start != 0).all()):
        raise InvalidArgumentError(
            f"ODEProblem: event function {int(torch.nonzero(start == 0)[0, 0])} is zero at the "
            f"initial time t={float(problem.ts[0]):.6g}, so no crossing can be told from it; "
            "start the solve where every event function is nonzero (e.g. just after the event)."
        )
    # Every component made positive at the start: the event is where the least one reaches 0.
    signs = torch.sign(start)
    outputs, crossing, reached = [y0.unsqueeze(0)], [], [1]  # reached: outputs read so far

    def read(step: Step, until: torch.Tensor, right: bool) -> None:
        k = reached[0]
        j = max(int(torch.searchsorted(s, until.to(s.dtype), right=right)), k)
        if j > k:
            outputs.append(stepper.interpolate(step, s[k:j]))
            reached[0] = j

    def on_step(step: Step) -> bool:
        if bool((g(step.t1, step.y1) * signs).min() <= 0):
            crossing.append(step)
            return True
        if read_outputs:
            read(step, step.t1, right=True)
        return False

    advance(stepper, stepper.start(s[0], y0, s[-1]), s[-1], counts, on_step=on_step)
    t_event = step_end = None
    if crossing:
        step = crossing[0]
        with torch.no_grad():  # t* is a constant of the graph: its derivative is _EventTime's
            t_root = _root(lambda t: (g(t, stepper.interpolate(step, t)) * signs).min(),
                           step.t0.detach(), step.t1.detach())
        if bool(t_root <= s[-1]):
            t_event = to_user(t_root).to(problem.ts.dtype)
            step_end = to_user(step.t1.detach()).to(problem.ts.dtype)
            if read_outputs:  # the outputs strictly before t*, then y at t* (as the user's dtype)
                read(step, t_root, right=False)
                t_solver = solver_times(t_event.reshape(1), problem.direction)
                outputs.append(stepper.interpolate(step, t_solver))
        elif read_outputs:  # a crossing past the end: the step covers every output left
            read(step, s[-1], right=True)
    return _EventRun(t_event, step_end, outputs, stepper, field, counts, calls[0])


def _root(
    combined: Callable[[torch.Tensor], torch.Tensor], a: torch.Tensor, b: torch.Tensor
) -> torch.Tensor:
    """The end ``b`` of a bracket [a, b] with combined(a) > 0 ≥ combined(b), narrowed by the
    Illinois method (regula falsi that halves the value kept at the end not moved twice running)
    with a bisection every fourth iteration, until the bracket is a few ulps of the time dtype
    wide. Returns the side where the event has happened (combined ≤ 0)."""
    fa, fb = combined(a), combined(b)
    eps = torch.finfo(a.dtype).eps
    kept_end = 0  # +1: a kept last time, −1: b kept last time
    for iteration in range(_MAX_ROOT_ITERATIONS):
        if bool(fb == 0) or bool(b - a <= 4 * eps * torch.maximum(a.abs(), b.abs()).clamp(min=1.0)):
            break
        m = b - fb * (b - a) / (fb - fa)
        if iteration % 4 == 3 or not bool((m > a) & (m < b)):
            m = (a + b) / 2
        fm = combined(m)
        if bool(fm <= 0):
            b, fb = m, fm
            if kept_end == 1:
                fa = fa / 2
            kept_end = 1
        else:
            a, fa = m, fm
            if kept_end == -1:
                fb = fb / 2
            kept_end = -1
    else:
        raise SolveError(
            f"the event's root was not located to round-off in {_MAX_ROOT_ITERATIONS} iterations "
            f"(bracket [{float(a):.17g}, {float(b):.17g}]); the event function may not be "
            "continuous along the solution."
        )
    return b


def _event_inputs(
    problem: Any, values: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    t_event: torch.Tensor, y_event: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """The tensors requiring grad the event functions read or hold (their parameters, closures):
    they get λ g_φ."""
    event = problem.event
    held = [t for g in (event if isinstance(event, tuple) else (event,)) for t in held_tensors(g)]
    return field_inputs(values, t_event.to(problem.dtype), y_event, held=held).tensors


class _EventTime(torch.autograd.Function):
    """(t*, y*) ↦ (t*, y*) in the forward; the backward reroutes dL/dt* and dL/dy* through the
    implicit function theorem (module docstring): (b + λ g_y) to y*, λ g_φ to φ."""

    @staticmethod
    def forward(ctx: Any, spec: tuple, t_event: torch.Tensor, y_event: torch.Tensor,
                *event_inputs: torch.Tensor):
        ctx.spec = spec
        ctx.save_for_backward(t_event, y_event, *event_inputs)
        return t_event.clone(), y_event.clone()

    @staticmethod
    def backward(ctx: Any, grad_t: torch.Tensor, grad_y: torch.Tensor):
        if torch.is_grad_enabled():  # create_graph=True: this backward is not differentiable
            raise UnsupportedCombinationError(
                "second derivatives through an event time are not supported (the backward of "
                "the implicit function theorem is not itself differentiated); take first "
                "derivatives only, or solve to a fixed end time for higher ones."
            )
        field, values, index = ctx.spec
        t_event, y_event, *event_inputs = ctx.saved_tensors
        with torch.enable_grad():
            t = t_event.detach().to(y_event.dtype).requires_grad_()
            y = y_event.detach().requires_grad_()
            c = values(t, y)[index]
            wrt = (t, y, *event_inputs)
            # An event function read through no differentiable operation has zero partials.
            g_t, g_y, *g_inputs = (torch.autograd.grad(c, wrt, allow_unused=True) if c.requires_grad
                                   else (None,) * len(wrt))
        with torch.no_grad():
            f = field(t.detach(), y.detach())
        g_t = torch.zeros_like(t) if g_t is None else g_t
        g_y = torch.zeros_like(y) if g_y is None else g_y
        slope = g_t + (g_y * f).sum()  # dG/dt along the solution
        if not bool(slope != 0):
            raise SolveError(
                f"event function {index} has a zero rate of change along the solution at its "
                f"crossing t*={float(t_event):.6g} (it touches zero there, or jumps across it "
                "without depending on t and y smoothly), so the event time has no derivative; "
                "use an event function that crosses zero with a nonzero slope."
            )
        weight = -(grad_t.to(y.dtype) + (grad_y * f).sum()) / slope
        grad_y_event = grad_y + weight * g_y
        grads_inputs = tuple(None if g is None else weight.to(g.dtype) * g for g in g_inputs)
        return None, None, grad_y_event, *grads_inputs
