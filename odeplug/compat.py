"""torchdiffeq's interface, solved by odeplug: ``import odeplug.compat as torchdiffeq``.

:func:`odeint`, :func:`odeint_adjoint` and :func:`odeint_event` take torchdiffeq's arguments, with
its defaults and meaning (tuple states, decreasing times, a one-element ``t``, ``options`` dicts,
callable norms, ``adjoint_options=dict(norm="seminorm")``), and run on odeplug's own solvers and
gradient rules through :func:`odeplug.solve`; torchdiffeq itself is never called. One keyword
more, ``rule=``, picks any gradient rule (``rule=odeplug.GQAdjoint()``, ``rule=odeplug.ACA()``),
and ``method=`` also takes an odeplug solver (``method=odeplug.Tsit5(rtol=1e-6)``).

A torchdiffeq method or option odeplug cannot honour raises an error naming it and what to do
instead; none is ignored. docs/coming-from-torchdiffeq.md maps every name.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import torch

from ._dispatch import register
from ._errors import InvalidArgumentError, InvalidOptionError, SolveError, UnsupportedCombinationError
from . import _verbs
from ._events import ending_at_event
from ._layout import Layout
from ._nouns import GradientRule, Norm, Solver, configuration
from ._plugins import exported
from ._problem import ADJOINT_STEP_CALLBACKS, STEP_CALLBACKS, ODEProblem, State
from ._solution import Stats
from ._solve import solve
from .backward import BacksolveRule

__all__ = ["odeint", "odeint_adjoint", "odeint_event"]

# torchdiffeq's defaults, shared by its signatures and the checks below.
_RTOL, _ATOL = 1e-7, 1e-9

# torchdiffeq's method names and the odeplug solvers that take the same steps.
_ADAPTIVE_METHODS = {"dopri5": "Dopri5", "bosh3": "Bosh3", "dopri8": "Dopri8", "fehlberg2": "Fehlberg2",
                     "adaptive_heun": "AdaptiveHeun"}
_FIXED_GRID_METHODS = {"euler": "Euler", "midpoint": "Midpoint", "heun2": "Heun2", "heun3": "Heun3",
                       "rk4": "RK4ThreeEighths", "explicit_adams": "ExplicitAdams",
                       "implicit_adams": "ImplicitAdams", "fixed_adams": "ImplicitAdams"}
# torchdiffeq's Adams methods: their history of slopes runs on across output times.
_ADAMS_METHODS = ("explicit_adams", "implicit_adams", "fixed_adams")
_ADAMS_MAX_ORDER = 12  # torchdiffeq's default max_order for all three
# Methods odeplug has no solver for yet: what to do instead.
_MISSING_METHODS = {
    "scipy_solver": "odeplug does not wrap SciPy's solvers (they cannot be differentiated by "
                    "odeplug's gradient rules); use method='dopri5', or odeplug.TorchDiffEq("
                    "'scipy_solver') through odeplug.solve",
}
# torchdiffeq's step-control constants, which odeplug's adaptive solvers use fixed.
_STEP_CONTROL = {"safety": 0.9, "ifactor": 10.0, "dfactor": 0.2}


def odeint(
    func: Callable[..., Any],
    y0: State,
    t: torch.Tensor,
    *,
    rtol: Any = _RTOL,
    atol: Any = _ATOL,
    method: str | Solver | None = None,
    options: dict[str, Any] | None = None,
    event_fn: Callable[..., Any] | None = None,
    rule: GradientRule | None = None,
) -> State:
    """``torchdiffeq.odeint``: y at every time of ``t`` (``t[0]`` the initial time), shaped
    ``(len(t), *y0.shape)`` (a tuple of such for a tuple ``y0``).

    Differentiated by ``rule`` (default ``odeplug.Direct()``: backpropagation through the
    solver, as torchdiffeq's ``odeint``). ``method`` is a torchdiffeq method name (default
    ``"dopri5"``) or an odeplug solver; ``options`` are that method's torchdiffeq options.
    """
    where = "odeint"
    plan = _Method.of(method, rtol, atol, options, y0, t, where, norm=_forward_norm(options, y0, where))
    if rule is None:
        rule = exported()["Direct"]()
    _check_rule(rule, where)
    if event_fn is not None:
        return _solve_until_event(func, y0, t, plan, rule, None, event_fn, method, options, where)
    return _solve(func, y0, t, plan, lambda: rule, params=None)


def odeint_adjoint(
    func: Callable[..., Any],
    y0: State,
    t: torch.Tensor,
    *,
    rtol: Any = _RTOL,
    atol: Any = _ATOL,
    method: str | Solver | None = None,
    options: dict[str, Any] | None = None,
    event_fn: Callable[..., Any] | None = None,
    adjoint_rtol: Any = None,
    adjoint_atol: Any = None,
    adjoint_method: str | Solver | None = None,
    adjoint_options: dict[str, Any] | None = None,
    adjoint_params: Iterable[torch.Tensor] | None = None,
    rule: GradientRule | None = None,
) -> State:
    """``torchdiffeq.odeint_adjoint``: as :func:`odeint`, differentiated by the adjoint method
    (``odeplug.Adjoint``) whose backward solve uses ``adjoint_method``, ``adjoint_rtol``,
    ``adjoint_atol`` and ``adjoint_options`` (defaults: the forward's, without its norm), with
    ``adjoint_options=dict(norm="seminorm")`` the seminorm adjoint.

    ``rule`` replaces the adjoint by any gradient rule; a rule with a backward solve
    (``GQAdjoint``, ``GaussAdjoint``) gets the adjoint_* settings unless it sets its own.
    ``adjoint_params`` are tensors whose gradients are wanted; every other tensor ``func`` reads
    that requires grad gets its gradient too (torchdiffeq leaves those without one).
    """
    where = "odeint_adjoint"
    given = {name: value for name, value in (
        ("adjoint_rtol", adjoint_rtol), ("adjoint_atol", adjoint_atol),
        ("adjoint_method", adjoint_method), ("adjoint_options", adjoint_options),
    ) if value is not None}
    # torchdiffeq's defaulting, in its order: the backward solve is the forward's unless told.
    adjoint_rtol = rtol if adjoint_rtol is None else adjoint_rtol
    adjoint_atol = atol if adjoint_atol is None else adjoint_atol
    if adjoint_method is None:
        adjoint_method = method
    if adjoint_method != method and options is not None and adjoint_options is None:
        raise InvalidArgumentError(
            "odeint_adjoint: adjoint_method differs from method and options were given, so the "
            "backward solve's options cannot be taken from them: pass adjoint_options too "
            "(adjoint_options={} for none)."
        )
    if adjoint_options is None:
        adjoint_options = {k: v for k, v in (options or {}).items() if k != "norm"}
    adjoint_options = dict(adjoint_options)
    forward_norm = _forward_norm(options, y0, where)
    backward_norm = _adjoint_norm(adjoint_options.pop("norm", None), forward_norm, y0)
    if adjoint_method in _FIXED_GRID_METHODS and "norm" not in given.get("adjoint_options", {}):
        backward_norm = None  # the norm torchdiffeq derives from the forward's: fixed grids drop it
    plan = _Method.of(method, rtol, atol, options, y0, t, where, norm=forward_norm)
    backward = _Method.of(adjoint_method, adjoint_rtol, adjoint_atol, adjoint_options, y0, t,
                          "odeint_adjoint (adjoint_*)", norm=backward_norm, adjoint=True)
    for name, times in backward.problem.items():
        if name not in plan.problem or not torch.equal(torch.as_tensor(times), torch.as_tensor(plan.problem[name])):
            key = "step_t" if name == "stop_times" else "jump_t"
            raise UnsupportedCombinationError(
                f"odeint_adjoint: adjoint_options[{key!r}] differs from options[{key!r}]: in odeplug "
                f"they are one property of the problem, where every solve (forward and backward) "
                f"stops; pass the same {key} to both, or leave it out of adjoint_options."
            )
    if rule is None:
        rule = exported()["Adjoint"]()
    _check_rule(rule, where)
    if isinstance(rule, BacksolveRule):
        own = {name for name in ("solver", "norm", "rtol", "atol") if getattr(rule, name) is not None}
        if own and given:
            raise InvalidArgumentError(
                f"odeint_adjoint: rule={rule!r} sets its own backward solve ({', '.join(sorted(own))}) "
                f"and {', '.join(sorted(given))} was given too; set the backward solve in one "
                "place (on the rule, or with the adjoint_* arguments)."
            )
        if own:
            def rule_for() -> GradientRule:
                return rule
        else:  # built when the solve runs (a grid_constructor is called then, once)
            def rule_for() -> GradientRule:
                return attrs.evolve(rule, solver=backward.solver_for(func, y0, t))
    else:
        if given:
            raise InvalidArgumentError(
                f"odeint_adjoint: rule={type(rule).__name__}() has no backward solve, so "
                f"{', '.join(sorted(given))} cannot apply; drop them, or use a rule with a "
                "backward solve (Adjoint, GQAdjoint, GaussAdjoint)."
            )

        def rule_for() -> GradientRule:
            return rule
    params = None
    if adjoint_params is not None:
        # torchdiffeq leaves out the tensors that do not require grad.
        params = [p for p in adjoint_params if not isinstance(p, torch.Tensor) or p.requires_grad]
    if event_fn is not None:
        return _solve_until_event(func, y0, t, plan, rule_for(), params, event_fn, method,
                                  options, where)
    return _solve(func, y0, t, plan, rule_for, params=params)


def odeint_event(func: Callable[..., Any], y0: State, t0: torch.Tensor, *, event_fn: Any,
                 reverse_time: bool = False, odeint_interface: Any = odeint,
                 **kwargs: Any) -> tuple[torch.Tensor, State]:
    """``torchdiffeq.odeint_event``: solve from ``t0`` (backwards with ``reverse_time=True``)
    until ``event_fn(t, y)`` crosses zero; return ``(event_t, solution)``, ``solution`` the
    states at ``t0`` and at ``event_t`` (two rows), both differentiable *through the event time*
    (Chen, Amos & Nickel, ICLR 2021; see docs/methods/events.md): dL/dθ includes how θ moves
    ``event_t``, also through the tensors ``event_fn`` reads.

    ``odeint_interface`` is :func:`odeint` or :func:`odeint_adjoint` (or a function with their
    signature returning ``(event_t, solution)`` with the state's derivative at fixed
    ``event_t``, as they do); ``kwargs`` go to it."""
    if not callable(event_fn):
        raise InvalidArgumentError(
            f"odeint_event: event_fn must be a function event_fn(t, y) returning a tensor, got "
            f"{type(event_fn).__name__}."
        )
    if not isinstance(t0, torch.Tensor) or t0.numel() != 1:
        raise InvalidArgumentError(
            f"odeint_event: t0 must be a one-element tensor (the initial time), got "
            f"{type(t0).__name__ if not isinstance(t0, torch.Tensor) else tuple(t0.shape)}."
        )
    start = t0.reshape(-1)
    t = torch.cat([start, start.detach() + (-1.0 if reverse_time else 1.0)])
    event_t, solution = odeint_interface(func, y0, t, event_fn=event_fn, **kwargs)
    problem = ODEProblem(func, y0, t, event=event_fn)
    ended = ending_at_event(problem, solution, torch.cat([start, event_t.reshape(1)]), event_t,
                            Stats(), through_event_time=True)
    return ended.event_t, ended.ys


# -- what runs --------------------------------------------------------------------------------


# Event mode ignores t[1] but for its direction (torchdiffeq's rule): the solve runs on until the
# event or the step budget; this far end only bounds odeplug's span.
_EVENT_HORIZON = 1e12


def _solve_until_event(
    func: Callable[..., Any],
    y0: State,
    t: torch.Tensor,
    plan: _Method,
    rule: GradientRule,
    params: list[torch.Tensor] | None,
    event_fn: Any,
    method: Any,
    options: dict[str, Any] | None,
    where: str,
) -> tuple[torch.Tensor, State]:
    """torchdiffeq's event mode: ``(event_t, solution)``, ``solution`` the states at ``t[0]``
    and at ``event_t``, ``event_t`` detached and the state's derivative taken at fixed
    ``event_t`` (torchdiffeq's semantics; :func:`odeint_event` adds the event time's own
    derivative)."""
    _check_t(t)
    if len(t) != 2:
        raise InvalidArgumentError(
            f"{where}: with event_fn, t must hold two times (the initial time, then any time "
            f"after it, or before it to solve backwards; only its direction is used), got "
            f"len(t)={len(t)}."
        )
    if isinstance(method, str) and method in _FIXED_GRID_METHODS and "step_size" not in (options or {}):
        raise InvalidArgumentError(
            f"{where}: event handling with the fixed-grid method {method!r} needs a step size: "
            "pass options=dict(step_size=...) (as torchdiffeq requires)."
        )
    start = t[0].detach()
    direction = 1.0 if bool(t[1] > t[0]) else -1.0
    horizon = start + direction * _EVENT_HORIZON * max(1.0, abs(float(start)))
    span = torch.stack([t[0], horizon.to(t.dtype)])
    field, callbacks = _torchdiffeq_callbacks(func, y0)
    problem = ODEProblem(field, y0, span, params=params, callbacks=callbacks, event=event_fn,
                         **plan.problem)
    solution = _verbs.solve_until_event(problem, plan.solver, rule, through_event_time=False)
    if solution.event_t is None:
        raise SolveError(
            f"{where}: event_fn did not cross zero before t={float(horizon):.6g}; check its sign "
            "along the solution."
        )
    return solution.event_t.to(t), solution.ys


def _solve(
    func: Callable[..., Any],
    y0: State,
    t: torch.Tensor,
    plan: _Method,
    rule_for: Callable[[], GradientRule],
    params: list[torch.Tensor] | None,
) -> State:
    _check_t(t)
    is_tuple = isinstance(y0, tuple)
    if len(t) == 1:  # torchdiffeq returns y0 alone, differentiably
        return tuple(part.unsqueeze(0) for part in y0) if is_tuple else y0.unsqueeze(0)
    field, callbacks = _torchdiffeq_callbacks(func, y0)
    problem = ODEProblem(field, y0, t, params=params, callbacks=callbacks, **plan.problem)
    # One solve, also for torchdiffeq's fixed grid without a step size: the fixed-step solver's
    # dt=None steps on the output times themselves.
    return solve(problem, plan.solver_for(func, y0, t), rule_for()).ys


@attrs.frozen
class _Method:
    """A torchdiffeq method with its tolerances and options, as an odeplug solver.

    ``grid_constructor``: torchdiffeq's ``options['grid_constructor']``, whose grid depends on
    the solve's func, y0 and t: :meth:`solver_for` calls it and hands its grid to the solver's
    ``grid`` option; ``adjoint`` says the solver is an adjoint's backward solve, whose grid is
    the constructor's for each output interval (torchdiffeq solves each on its own)."""

    solver: Solver
    #: ODEProblem options: torchdiffeq's step_t and jump_t are properties of the problem here
    #: (every solve of it, forward and backward, stops at them).
    problem: dict = attrs.field(factory=dict)
    grid_constructor: Callable[..., Any] | None = None
    adjoint: bool = False

    def solver_for(self, func: Callable[..., Any], y0: State, t: torch.Tensor) -> Solver:
        """The solver of a solve of ``func`` from ``y0`` over ``t``."""
        if self.grid_constructor is None or len(t) < 2:
            return self.solver
        grid = _constructed_grid(self.grid_constructor, func, y0, t, self.adjoint)
        return attrs.evolve(self.solver, grid=grid)

    @staticmethod
    def of(
        method: str | Solver | None,
        rtol: Any,
        atol: Any,
        options: dict[str, Any] | None,
        y0: State,
        t: torch.Tensor,
        where: str,
        *,
        norm: Norm | None,
        adjoint: bool = False,
    ) -> _Method:
        prefix = "adjoint_" if adjoint else ""
        if options is not None and not isinstance(options, dict):
            raise InvalidArgumentError(
                f"{where}: {prefix}options must be a dict of the method's options, got "
                f"{type(options).__name__}."
            )
        options = dict(options or {})
        if isinstance(method, Solver):
            return _Method(_given_solver(method, rtol, atol, options, norm, where, prefix))
        if method is None:
            method = "dopri5"
        if method in _MISSING_METHODS:
            raise UnsupportedCombinationError(
                f"{where}: {prefix}method={method!r} is not supported yet: {_MISSING_METHODS[method]}."
            )
        if method in _ADAPTIVE_METHODS:
            problem = {name: options.pop(key) for key, name in (("step_t", "stop_times"),
                       ("jump_t", "jump_times")) if key in options}
            return _Method(_adaptive(method, rtol, atol, options, norm, where, prefix), problem=problem)
        if method in _FIXED_GRID_METHODS:
            return _fixed_grid(method, rtol, atol, options, norm, t, where, prefix, adjoint)
        known = sorted({*_ADAPTIVE_METHODS, *_FIXED_GRID_METHODS, *_MISSING_METHODS})
        raise InvalidArgumentError(
            f"{where}: unknown {prefix}method {method!r}; torchdiffeq's methods are "
            f"{', '.join(known)} (or pass an odeplug solver, e.g. {prefix}method=odeplug.Tsit5())."
        )


def _torchdiffeq_callbacks(func: Callable[..., Any], y0: State) -> tuple[Callable[..., Any], Any]:
    """(the field, the callbacks) for an ODEProblem: ``func`` itself when it has no adjoint step
    callbacks; else a function calling it, and func's callbacks with the backward state handed
    over in torchdiffeq's order, (a_t, y, a_y, *a_θ) with a_t 0-d and y, a_y flat for a tuple
    state (odeplug's own order is (z, a_z, a_θ…, a_t)), so that torchdiffeq code unpacking it
    reads what it expects."""
    if not any(callable(getattr(func, name, None)) for name in ADJOINT_STEP_CALLBACKS):
        return func, None
    is_tuple = isinstance(y0, tuple)

    def joined(parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([p.reshape(-1) for p in parts]) if is_tuple else parts[0]

    def in_torchdiffeq_order(callback: Callable[..., Any]) -> Callable[..., Any]:
        def called(t0: torch.Tensor, blocks: Any, dt: torch.Tensor) -> Any:
            named = list(zip(blocks.names, blocks))
            state = [b for n, b in named if n.startswith("z")]
            adjoint = [b for n, b in named if n.startswith("a_z")]
            params = [b for n, b in named if n.startswith("a_θ")]
            a_t = [b.reshape(()) for n, b in named if n == "a_t"] or [state[0].new_zeros(())]
            return callback(t0, (a_t[0], joined(state), joined(adjoint), *params), dt)

        return called

    callbacks = types.SimpleNamespace()
    for name in (*STEP_CALLBACKS, *ADJOINT_STEP_CALLBACKS):
        callback = getattr(func, name, None)
        if callable(callback):
            setattr(callbacks, name, in_torchdiffeq_order(callback) if name in ADJOINT_STEP_CALLBACKS
                    else callback)

    def field(t: torch.Tensor, y: State) -> State:  # func without its callbacks, called once each
        return func(t, y)

    return field, callbacks


def _given_solver(solver: Solver, rtol: Any, atol: Any, options: dict[str, Any],
                  norm: Norm | None, where: str, prefix: str) -> Solver:
    """An odeplug solver passed as ``method``: it carries its own settings."""
    if options:
        raise InvalidArgumentError(
            f"{where}: {prefix}options {sorted(options)} cannot apply to {prefix}method={solver!r}: "
            f"an odeplug solver takes its options itself, e.g. {type(solver).__name__}(first_step=0.1)."
        )
    if _is_number(rtol) and _is_number(atol) and (float(rtol), float(atol)) == (_RTOL, _ATOL):
        return solver
    raise InvalidArgumentError(
        f"{where}: {prefix}rtol/{prefix}atol cannot apply to {prefix}method={solver!r}: set the "
        f"tolerances on the solver, e.g. {type(solver).__name__}(rtol=..., atol=...)."
    )


def _adaptive(method: str, rtol: Any, atol: Any, options: dict[str, Any], norm: Norm | None,
              where: str, prefix: str) -> Solver:
    settings: dict[str, Any] = {
        "rtol": _tolerance(f"{prefix}rtol", rtol, where),
        "atol": _tolerance(f"{prefix}atol", atol, where),
    }
    if norm is not None:
        settings["norm"] = norm
    options.pop("norm", None)  # already read, as ``norm``
    if "first_step" in options:
        first_step = options.pop("first_step")
        if first_step is not None:
            settings["first_step"] = _number(f"{prefix}options['first_step']", first_step, where)
    if "max_num_steps" in options:
        # torchdiffeq counts attempted steps per output interval, odeplug per solve (stricter).
        settings["max_steps"] = int(options.pop("max_num_steps"))
    if "min_step" in options:
        settings["min_step"] = _number(f"{prefix}options['min_step']", options.pop("min_step"), where)
    if "max_step" in options:
        max_step = options.pop("max_step")
        if float(max_step) != math.inf:  # torchdiffeq's default, no limit, is odeplug's None
            settings["max_step"] = _number(f"{prefix}options['max_step']", max_step, where)
    for key, default in _STEP_CONTROL.items():
        if key in options:
            value = _number(f"{prefix}options[{key!r}]", options.pop(key), where)
            if value != default:
                raise UnsupportedCombinationError(
                    f"{where}: {prefix}options[{key!r}]={value} is not supported: odeplug's "
                    f"adaptive solvers use torchdiffeq's default {key}={default}; drop the option."
                )
    if "dtype" in options:
        dtype = options.pop("dtype")
        if dtype != torch.float64:
            raise UnsupportedCombinationError(
                f"{where}: {prefix}options['dtype']={dtype} is not supported: odeplug keeps time "
                "in float64 (torchdiffeq's default); drop the option."
            )
    _refuse_remaining(options, method, where, prefix, {})
    return exported()[_ADAPTIVE_METHODS[method]](**settings)


def _fixed_grid(method: str, rtol: Any, atol: Any, options: dict[str, Any], norm: Norm | None,
                t: torch.Tensor, where: str, prefix: str, adjoint: bool = False) -> _Method:
    """A torchdiffeq fixed-grid method as the odeplug fixed-step solver that takes its steps:
    ``step_size`` is ``dt``; none means ``dt=None`` (steps on the output times); a
    ``grid_constructor``'s grid becomes ``grid`` (:meth:`_Method.solver_for`); ``interp`` is
    ``interpolation`` (torchdiffeq's default ``"linear"``); ``perturb`` is ``perturb``."""
    # rtol and atol mean nothing to a fixed grid (torchdiffeq ignores them too).
    if norm is not None or "norm" in options:
        raise InvalidArgumentError(
            f"{where}: {prefix}options['norm'] means nothing to the fixed-grid {prefix}method="
            f"{method!r} (no error control); drop it, or use an adaptive method such as 'dopri5'."
        )
    cls = exported()[_FIXED_GRID_METHODS[method]]
    settings: dict[str, Any] = {}
    if method in _ADAMS_METHODS:
        settings = _adams_settings(method, rtol, atol, options, where, prefix)
    step_size = options.pop("step_size", None)
    grid_constructor = options.pop("grid_constructor", None)
    interp = options.pop("interp", "linear")
    if interp not in ("linear", "cubic"):
        raise InvalidArgumentError(
            f"{where}: {prefix}options['interp'] must be 'linear' or 'cubic', got {interp!r}."
        )
    settings["interpolation"] = interp
    perturb = options.pop("perturb", False)
    if not isinstance(perturb, bool):
        raise InvalidArgumentError(
            f"{where}: {prefix}options['perturb'] must be True or False, got {perturb!r}."
        )
    settings["perturb"] = perturb
    _refuse_remaining(options, method, where, prefix, {})
    if step_size is not None and grid_constructor is not None:
        raise InvalidArgumentError(
            f"{where}: {prefix}options['step_size'] and {prefix}options['grid_constructor'] both "
            "say where the steps end (torchdiffeq refuses them together too); pass one of them."
        )
    if grid_constructor is not None and not callable(grid_constructor):
        raise InvalidArgumentError(
            f"{where}: {prefix}options['grid_constructor'] must be a function (func, y0, t) -> "
            f"1-D tensor of times from t[0] to t[-1], got {grid_constructor!r}."
        )
    if step_size is not None:
        settings["dt"] = _number(f"{prefix}options['step_size']", step_size, where)
    return _Method(cls(**settings), grid_constructor=grid_constructor, adjoint=adjoint)


def _constructed_grid(grid_constructor: Callable[..., Any], func: Callable[..., Any], y0: State,
                      t: torch.Tensor, adjoint: bool) -> tuple[float, ...]:
    """torchdiffeq's ``grid_constructor(func, y0, t)``, called with the user's func, y0 (a tuple
    flattened into one vector, as torchdiffeq passes it) and t. For an adjoint's backward solve,
    torchdiffeq calls it on each output interval, from t[k] back to t[k−1]: the backward grid is
    the union of those, so that each interval is stepped as there."""
    flat_y0 = torch.cat([part.reshape(-1) for part in y0]) if isinstance(y0, tuple) else y0
    spans = [t[k - 1 : k + 1].flip(0) for k in range(len(t) - 1, 0, -1)] if adjoint else [t]
    times: list[float] = []
    for span in spans:
        grid = grid_constructor(func, flat_y0, span)
        if not isinstance(grid, torch.Tensor) or grid.ndim != 1 or len(grid) < 2:
            raise InvalidArgumentError(
                f"options['grid_constructor'] must return a 1-D tensor of at least two times, "
                f"from t[0] to t[-1]; it returned {grid!r} for t={span.detach().tolist()}."
            )
        grid = grid.detach().double()
        ends = span.detach().double()[[0, -1]]
        if not torch.allclose(grid[[0, -1]], ends, rtol=1e-6, atol=1e-12):
            raise InvalidArgumentError(
                f"options['grid_constructor'] must return a grid that starts at t[0] and ends at "
                f"t[-1] (torchdiffeq asserts it too); it returned a grid from {float(grid[0])} to "
                f"{float(grid[-1])} for t from {float(ends[0])} to {float(ends[1])}."
            )
        times += grid.tolist()
    decreasing = bool(t[-1] < t[0])
    return tuple(sorted(set(times), reverse=decreasing))


def _adams_settings(method: str, rtol: Any, atol: Any, options: dict[str, Any], where: str,
                    prefix: str) -> dict[str, Any]:
    """torchdiffeq's Adams options (``max_order``, default 12; ``max_iters``, default 4) and,
    for the corrector of ``implicit_adams``/``fixed_adams``, odeint's ``rtol``/``atol``."""
    settings: dict[str, Any] = {"max_order": _ADAMS_MAX_ORDER}
    if "max_order" in options:
        max_order = options.pop("max_order")
        if isinstance(max_order, float) and max_order.is_integer():
            max_order = int(max_order)
        settings["max_order"] = max_order  # the solver checks the range (4 to 12)
    max_iters = options.pop("max_iters", None)  # explicit_adams takes and ignores it, as torchdiffeq
    if method != "explicit_adams":
        settings["rtol"] = _number(f"{prefix}rtol", rtol, where)
        settings["atol"] = _number(f"{prefix}atol", atol, where)
        if max_iters is not None:
            settings["max_iters"] = max_iters
    return settings


def _refuse_remaining(options: dict[str, Any], method: str, where: str, prefix: str,
                      not_yet: dict[str, str]) -> None:
    for key in options:
        if key in not_yet:
            raise UnsupportedCombinationError(
                f"{where}: {prefix}options[{key!r}] is not supported yet: {not_yet[key]}. Drop it "
                "meanwhile (the solve then ignores what it asked for), or keep torchdiffeq for "
                "this solve."
            )
    if options:
        raise InvalidArgumentError(
            f"{where}: {prefix}options {sorted(options)} are not options of torchdiffeq's "
            f"{method!r} method; drop them."
        )


# -- norms ------------------------------------------------------------------------------------


@configuration
class _CallableNorm(Norm):
    """torchdiffeq's ``options["norm"]``: a callable on the (scaled) state, shaped as ``y0``.

    On an adjoint's augmented state it is torchdiffeq's default adjoint norm: the largest of
    ``fn`` on z, ``fn`` on a_z, and the RMS of each integral channel (a_θ, a_t)."""

    fn: Callable[[Any], Any]
    state: Layout
    is_tuple: bool


@configuration
class _CallableAdjointNorm(Norm):
    """torchdiffeq's ``adjoint_options["norm"]``: a callable on the tuple
    ``(a_t, y, a_y, *a_θ)`` (``(a_t, *y, *a_y, *a_θ)`` for a tuple state)."""

    fn: Callable[[Any], Any]
    state: Layout
    is_tuple: bool


def _forward_norm(options: dict[str, Any] | None, y0: State, where: str) -> Norm | None:
    fn = (options or {}).get("norm") if isinstance(options, dict) else None
    if fn is None or isinstance(fn, Norm):
        return fn
    if not callable(fn):
        raise InvalidArgumentError(
            f"{where}: options['norm'] must be a callable on the state (torchdiffeq's) or an "
            f"odeplug.Norm, got {fn!r}."
        )
    return _CallableNorm(fn=fn, state=_layout(y0), is_tuple=isinstance(y0, tuple))


def _adjoint_norm(choice: Any, forward: Norm | None, y0: State) -> Norm | None:
    if choice is None:  # torchdiffeq's default adjoint norm is built on the forward's norm
        return forward
    if isinstance(choice, str):
        if choice != "seminorm":
            raise InvalidArgumentError(
                f"odeint_adjoint: adjoint_options['norm'] must be 'seminorm', a callable or an "
                f"odeplug.Norm, got {choice!r}."
            )
        # torchdiffeq's seminorm: the forward norm on y and on a_y, each; never a_θ.
        return exported()["Seminorm"](base=forward if forward is not None else exported()["MixedNorm"]())
    if isinstance(choice, Norm):
        return choice
    if not callable(choice):
        raise InvalidArgumentError(
            f"odeint_adjoint: adjoint_options['norm'] must be 'seminorm', a callable or an "
            f"odeplug.Norm, got {choice!r}."
        )
    return _CallableAdjointNorm(fn=choice, state=_layout(y0), is_tuple=isinstance(y0, tuple))


def _layout(y0: State) -> Layout:
    if isinstance(y0, torch.Tensor) or (isinstance(y0, tuple) and all(isinstance(p, torch.Tensor) for p in y0)):
        return Layout.of(y0)
    raise InvalidArgumentError(
        f"y0 must be a floating-point torch.Tensor or a tuple of them, got {type(y0).__name__}."
    )


def _adjoint_parts(layout: Layout, state: Layout, norm: Norm) -> int:
    """Check that ``layout`` is an adjoint's augmented state of ``state`` ([z, a_z] blocks, then
    integral channels); return the number of state blocks (m: z is blocks[:m], a_z the next m)."""
    m = len(state.blocks)
    shapes = [block.shape for block in state.blocks] * 2
    blocks = layout.blocks
    if (len(blocks) >= 2 * m and [b.shape for b in blocks[: 2 * m]] == shapes
            and all(b.role == "state" for b in blocks[: 2 * m])
            and all(b.role == "integral" for b in blocks[2 * m :])):
        return m
    raise InvalidOptionError(
        f"{type(norm).__name__} (a torchdiffeq norm callable) was given a state with blocks "
        f"{layout.names}, neither the solve's state {state.names} nor an adjoint's augmented "
        "state: use it with odeint/odeint_adjoint only, or use an odeplug.Norm."
    )


def _norm_value(value: Any, like: torch.Tensor) -> torch.Tensor:
    # torchdiffeq's norms may return Python numbers (its mixed norm of nothing is 0.).
    return torch.as_tensor(value, dtype=like.dtype, device=like.device).reshape(())


def _state_arg(parts: tuple[torch.Tensor, ...], is_tuple: bool) -> Any:
    return tuple(parts) if is_tuple else parts[0]


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.abs().pow(2).mean().sqrt()


@register
def norm(n: _CallableNorm, x: torch.Tensor, layout: Layout):
    parts = layout.unflatten(x)
    if layout == n.state:
        return _norm_value(n.fn(_state_arg(parts, n.is_tuple)), x)
    m = _adjoint_parts(layout, n.state, n)
    sizes = [n.fn(_state_arg(parts[:m], n.is_tuple)), n.fn(_state_arg(parts[m : 2 * m], n.is_tuple))]
    sizes += [_rms(part) for part in parts[2 * m :]]
    return torch.stack([_norm_value(size, x) for size in sizes]).max()


@register
def norm(n: _CallableAdjointNorm, x: torch.Tensor, layout: Layout):  # noqa: F811
    m = _adjoint_parts(layout, n.state, n)
    parts = layout.unflatten(x)
    rest = list(zip(layout.names[2 * m :], parts[2 * m :]))
    # odeplug carries a_t only when dL/dt is wanted; torchdiffeq's is then zero throughout.
    a_t = next((part.reshape(()) for name, part in rest if name == "a_t"), x.new_zeros(()))
    a_theta = [part for name, part in rest if name != "a_t"]
    z, a_z = parts[:m], parts[m : 2 * m]
    if n.is_tuple:
        return _norm_value(n.fn((a_t, *z, *a_z, *a_theta)), x)
    return _norm_value(n.fn((a_t, z[0], a_z[0], *a_theta)), x)


# -- checks -----------------------------------------------------------------------------------


def _check_rule(rule: Any, where: str) -> None:
    if not isinstance(rule, GradientRule):
        raise InvalidArgumentError(
            f"{where}: rule must be an odeplug.GradientRule such as odeplug.GQAdjoint(), got {rule!r}."
        )


def _check_t(t: Any) -> None:
    if isinstance(t, torch.Tensor) and t.ndim != 1:
        raise InvalidArgumentError(
            f"t must be a 1-D tensor of times (torchdiffeq's too), got shape {tuple(t.shape)}; "
            "for a single time write t.reshape(1), for the solution at t1 write torch.stack([t0, t1])."
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(name: str, value: Any, where: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = float(value)
    if not _is_number(value) or not math.isfinite(value):
        raise InvalidArgumentError(f"{where}: {name} must be a finite number, got {value!r}.")
    return float(value)


def _tolerance(name: str, value: Any, where: str) -> Any:
    """A torchdiffeq tolerance for an odeplug solver, which takes the same forms (a number, a
    tensor per element, a tuple per tensor of a tuple state) and checks them."""
    if isinstance(value, torch.Tensor) and value.requires_grad:
        raise InvalidArgumentError(f"{where}: {name} cannot require gradient (torchdiffeq's rule too).")
    return value
