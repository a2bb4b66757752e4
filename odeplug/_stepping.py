"""The contract between solvers and gradient rules: a Stepper drives a VectorField step by step.

A gradient rule owns the loop (as in diffrax): it asks the solver for a :class:`Stepper` once per
solve (``make_stepper``, dispatched once), then calls its plain methods in the loop. Steppers
always integrate forward in their own time ``s``; a rule that integrates backwards builds its
:class:`VectorField` with ``direction=-1`` (s = −t, dy/ds = −f(−s, y)), exactly as torchdiffeq
does, so that adaptive step control is identical in both directions.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import NamedTuple

import torch

from ._errors import NonFiniteStateError, StepBudgetExhaustedError, StepSizeUnderflowError
from ._nouns import Noun, final

__all__ = ["VectorField", "StepState", "Step", "Stepper", "Counts", "advance", "exact_gap"]


@final
class VectorField(Noun):
    """A flat vector field ``F(s, y) = direction · f(direction · s, y)`` that counts its calls.

    ``nfe`` counts every evaluation, whoever makes it (the initial-step probe, rejected steps,
    dense-output helpers), so the figures in ``Solution.stats`` are counted, not estimated.

    :meth:`prime` hands the field a value it already knows: the next call at that very state
    tensor returns it without evaluating f (and without counting). Rules use it to reuse an
    evaluation they made themselves (finding what f depends on) or a first stage they kept
    (a checkpointed F(t_i, y_i)).

    The problem's *stop* and *jump* times travel with the field, in solver time ``s``
    (increasing): ``stops`` is every time a step must land on (stops and jumps, sorted, with a
    trailing +inf so that "the next stop" is one ``searchsorted``), ``jumps`` the times where f
    is discontinuous (sorted), both ``None`` when there are none. ``callbacks`` is ``None`` or
    the triple (step, accept, reject) of plain functions ``(t_user, y_flat, dt)`` resolved once
    per solve (see :func:`advance`).
    """

    __slots__ = ("fn", "direction", "nfe", "_primed", "stops", "jumps", "callbacks", "open_end")

    def __init__(
        self,
        fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        direction: float = 1.0,
        *,
        stop_times: torch.Tensor | None = None,
        jump_times: torch.Tensor | None = None,
        callbacks: tuple[Callable | None, Callable | None, Callable | None] | None = None,
        open_end: bool = False,
    ):
        self.fn = fn
        self.direction = float(direction)
        # The solve may end before the end time it is given (an event search): steppers then
        # do not refuse up front a span their step budget could not cover.
        self.open_end = open_end
        self.nfe = 0
        self._primed: tuple[torch.Tensor, torch.Tensor] | None = None
        # A problem's flat field carries its stop and jump times and step callbacks
        # (ODEProblem.flat_field); explicit arguments override them.
        if stop_times is None:
            stop_times = getattr(fn, "stop_times", None)
        if jump_times is None:
            jump_times = getattr(fn, "jump_times", None)
        if callbacks is None:
            callbacks = getattr(fn, "step_callbacks", None)
        self.stops, self.jumps = _solver_stops(stop_times, jump_times, self.direction)
        self.callbacks = callbacks if callbacks is not None and any(callbacks) else None

    def __call__(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        primed = self._primed
        if primed is not None:
            self._primed = None
            if primed[0] is y:
                return primed[1]
        self.nfe += 1
        return self.uncounted(s, y)

    def uncounted(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """F(s, y) without counting it or consulting :meth:`prime`: for compiled code, which
        cannot keep a Python counter (``torch.compile`` would specialise on its value and
        compile again at every call) and adds its evaluations with :meth:`count` instead."""
        if self.direction > 0:
            return self.fn(s, y)
        return -self.fn(-s, y)

    def count(self, evaluations: int) -> None:
        """Add evaluations made through :meth:`uncounted`."""
        self.nfe += evaluations

    def prime(self, y: torch.Tensor, value: torch.Tensor) -> None:
        """Make the next call return ``value`` (= F(s, y)) if it is made at the tensor ``y``
        itself; any other next call evaluates as usual and forgets ``value``."""
        self._primed = (y, value)

    def to_user_time(self, s: torch.Tensor) -> torch.Tensor:
        return s if self.direction > 0 else -s


def _solver_stops(
    stop_times: torch.Tensor | None, jump_times: torch.Tensor | None, direction: float
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """User-time stop and jump times → (landing times + [inf], jump times), sorted in solver
    time s = direction · t, float64 (or wider); ``None`` where there are none."""
    parts = [t for t in (stop_times, jump_times) if t is not None and t.numel() > 0]
    if not parts:
        return None, None
    dtype = torch.promote_types(parts[0].dtype, torch.float64)
    every = torch.cat([p.detach().reshape(-1).to(dtype) for p in parts]) * direction
    inf = torch.full((1,), float("inf"), dtype=dtype, device=every.device)
    stops = torch.cat([torch.unique(every), inf])  # unique sorts
    jumps = None
    if jump_times is not None and jump_times.numel() > 0:
        jumps = torch.unique(jump_times.detach().reshape(-1).to(dtype) * direction)
    return stops, jumps


class StepState(NamedTuple):
    """Where a solve stands: time ``t`` (solver time), flat state ``y``, ``f = F(t, y)`` (reused
    as the first stage of the next step), and the step size ``h`` to try next (> 0)."""

    t: torch.Tensor
    y: torch.Tensor
    f: torch.Tensor
    h: torch.Tensor


class Step(NamedTuple):
    """One accepted step from ``t0`` to ``t1``: enough to evaluate its dense output, and to
    recompute it exactly (``Stepper.step_from(t0, y0, h)``).

    ``h`` is the size the step was taken with (``t1 − t0`` need not equal it in floating point,
    and a step shortened to land on a stop depends on that stop's time). ``landed`` (a 0-d bool
    tensor, so reading it costs no device synchronisation) says the step was shortened to end
    exactly on its target (``land=True``), on one of the field's stops (then ``t1`` is that
    stop exactly), or, for a fixed-step solver, on the end time.
    ``stages[0]`` is the first stage F(t0, y0). ``f1`` is F(t1, y1) when the step itself
    computed it (first-same-as-last tableaus, fixed-step dense output): the next step's first
    stage, on the step's own graph; ``None`` otherwise.
    """

    t0: torch.Tensor
    t1: torch.Tensor
    y0: torch.Tensor
    y1: torch.Tensor
    stages: torch.Tensor  # (number of stages, state size)
    h: torch.Tensor
    landed: torch.Tensor
    f1: torch.Tensor | None = None


class Stepper(Noun):
    """A solver bound to one vector field and one state layout.

    Rules for implementing a stepper (register ``make_stepper`` for your solver to return it):

    1. ``start(t0, y0, t_end)`` evaluates ``F(t0, y0)``, picks the first step size (the solver's
       ``first_step`` or its own selection) and returns a :class:`StepState`. ``t_end`` is where
       the solve ends, for fixed-step solvers that land on it.
    2. ``attempt(state, t_target)`` tries one step of size ``state.h`` and returns
       ``(new_state, step, status)``: ``step`` is the accepted :class:`Step` (or ``None`` if
       rejected; then ``new_state`` keeps ``t`` and ``y``, with a smaller ``h``), and ``status``
       is ``(accepted, finite, step_size_ok, reached)`` as Python bools, read from one tensor
       (one device synchronisation per attempt); ``reached`` means ``new_state.t >= t_target``.
       A rejected attempt must leave nothing in the autograd graph, and step-size *control* is
       never differentiated (adaptive ``h`` is detached); a step shortened to land on the end
       time (fixed-step solvers) depends on that time, and that dependence is differentiated. With ``land=True`` the step is shortened so
       that it ends exactly on ``t_target`` if it would pass it (a jump in the solution happens
       there, e.g. the adjoint's dL/dy(t_k)); after an accepted shortened step, the next step
       size is at least the one proposed before shortening, so a jump does not cost a new start.
       ``status`` may carry a fifth bool, ``forced``: the step was accepted only because its
       size was at the solver's ``min_step`` (counted in ``Counts.forced``).
    2a. Stops and jumps (``field.stops``, ``field.jumps``, solver time): a step never passes the
       next stop after ``state.t``; it is shortened to end exactly on it (``t0 + h == stop``, so
       that ``step_from`` reproduces it), as with ``land=True``, keeping the proposed size for the
       next step. f is discontinuous at a jump: stages at the end of a step that ends on a jump
       are evaluated at the float just before it (in the state's dtype, in the direction of
       integration), and the first stage of a step that starts on one at the float just after
       it, in ``start``, ``restart``, ``attempt`` (a fresh evaluation once the step is accepted)
       and ``step_from`` alike; such a step's ``Step.f1`` is ``None`` (the next first stage is
       not the step's last one). A stepper that cannot do this sets ``supports_stops = False``
       and problems with stop or jump times are refused with it.
    3. ``interpolate(step, t)`` evaluates the dense output at solver time ``t`` in
       ``[step.t0, step.t1]``, differentiably in the step's tensors and ``t``. ``t`` is a 0-d
       tensor (result: the flat state) or a 1-D tensor of times (result: one row per time,
       computed together: the forward reads all outputs a step covers in one call).
    4. ``restart(state, y)`` replaces the state at the same time (a jump: the adjoint's
       dL/dy(t_k)), re-evaluating only ``F(t, y)`` and keeping ``h``.
    5. ``step_from(t0, y0, h)`` recomputes one step from a checkpoint with whatever graph is
       active (for checkpointing rules): given an accepted step's ``t0``, ``y0`` and ``h`` it
       must reproduce its ``y1``, ``stages`` and ``f1`` exactly, evaluating F(t0, y0) through
       the field (a rule may have primed that value, see :meth:`VectorField.prime`).
    6. Evaluate the field only through ``self.field`` (it counts), or, in code compiled by
       ``torch.compile``, through ``self.field.uncounted``, adding those evaluations with
       ``self.field.count(n)`` outside the compiled code.
    7. A stepper with costs of its own (an implicit solver's Jacobian evaluations, LU
       factorisations, Newton iterations) may define ``stats() -> dict[str, int]``: the forward
       solve copies those counts into ``Solution.stats`` next to ``nfe``, and a backsolve
       (``odeplug.backward``'s kit) adds its stepper's as ``<name>_backward``.
    """

    __slots__ = ()
    field: VectorField
    max_steps: int
    #: Whether the stepper honours ``field.stops`` and ``field.jumps`` (rule 2a).
    supports_stops: bool = False
    #: Order of the method's solution (used by rules that choose quadrature orders per step).
    order: int
    #: Order q of the continuous extension ``interpolate`` (local error O(h^(q+1))); a stepper
    #: that does not say is taken to have q = order − 1, as every standard extension does.
    dense_order: int

    @abc.abstractmethod
    def start(self, t0: torch.Tensor, y0: torch.Tensor, t_end: torch.Tensor) -> StepState: ...

    @abc.abstractmethod
    def attempt(
        self, state: StepState, t_target: torch.Tensor, land: bool = False
    ) -> tuple[StepState, Step | None, tuple[bool, bool, bool, bool]]: ...

    @abc.abstractmethod
    def interpolate(self, step: Step, t: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def restart(self, state: StepState, y: torch.Tensor) -> StepState: ...

    @abc.abstractmethod
    def step_from(self, t0: torch.Tensor, y0: torch.Tensor, h: torch.Tensor) -> Step: ...


@final
class Counts(Noun):
    """Accepted and rejected steps of one solve direction (evaluations live on the field), and
    ``forced``: accepted steps whose error test failed at the solver's ``min_step``."""

    __slots__ = ("accepted", "rejected", "forced")

    def __init__(self) -> None:
        self.accepted = 0
        self.rejected = 0
        self.forced = 0


def advance(
    stepper: Stepper,
    state: StepState,
    t_target: torch.Tensor,
    counts: Counts,
    on_step: Callable[[Step], None] | None = None,
    land: bool = False,
) -> tuple[StepState, Step]:
    """Step until ``state.t >= t_target`` (at least one step); return the state and the last
    accepted step, which covers ``t_target``.

    ``on_step`` sees every accepted step (checkpointing, per-step quadrature); when it returns
    true, the loop stops after that step (an event has happened in it).
    ``land=True`` ends the last step exactly on ``t_target`` (see :meth:`Stepper.attempt`).

    Step callbacks (``stepper.field.callbacks``, resolved once per solve; nothing is done when
    there are none): ``step(t0, y0, dt)`` before each attempt, with the size about to be tried,
    then ``accept(t0, y0, dt)`` or ``reject(t0, y0, dt)`` with the size of the accepted step or
    of the rejected attempt (torchdiffeq's ``callback_step``, ``callback_accept_step``,
    ``callback_reject_step``); ``t0`` is in user time. Fixed-step solvers call ``step`` only,
    as torchdiffeq's fixed-grid solvers do.
    """
    if stepper.field.callbacks is not None:
        return _advance_with_callbacks(stepper, state, t_target, counts, on_step, land)
    while True:
        _check_budget(stepper, state, t_target, counts)
        new_state, step, status = stepper.attempt(state, t_target, land)
        accepted, finite, size_ok, reached = status[:4]
        _check(stepper, state, t_target, finite, size_ok)
        state = new_state
        if accepted:
            if _accepted(counts, status, step, on_step, reached):
                return state, step
        else:
            counts.rejected += 1


def _accepted(counts: Counts, status: tuple[bool, ...], step: Step,
              on_step: Callable[[Step], bool | None] | None, reached: bool) -> bool:
    """Count an accepted step (and whether it was forced at ``min_step``), show it to
    ``on_step``; whether the loop ends after it (the target reached, or ``on_step`` said so)."""
    counts.accepted += 1
    if len(status) > 4 and status[4]:
        counts.forced += 1
    stop = on_step is not None and on_step(step)
    return bool(stop) or reached


def exact_gap(t0: torch.Tensor, limit: torch.Tensor) -> torch.Tensor:
    """``limit − t0``, its value nudged so that ``t0 + gap == limit`` in floating point (a step of
    that size lands there, and ``step_from(t0, y0, gap)`` too), its derivative that of
    ``limit − t0``: how every stepper shortens a step to land on a time (rule 2a)."""
    gap = limit - t0
    g = gap.detach()
    t0d, lim = t0.detach(), limit.detach()
    g = torch.where(t0d + g == lim, g, g + (lim - (t0d + g)))
    return g + (gap - gap.detach())


def _check_budget(
    stepper: Stepper, state: StepState, t_target: torch.Tensor, counts: Counts
) -> None:
    """Raise when the solver's ``max_steps`` attempts are spent short of ``t_target``."""
    budget = stepper.max_steps
    if counts.accepted + counts.rejected >= budget:
        where = stepper.field.to_user_time(state.t)
        raise StepBudgetExhaustedError(
            f"max_steps={budget} steps were attempted ({counts.accepted} accepted, "
            f"{counts.rejected} rejected) and the solve stopped at t={float(where):.10g}, "
            f"short of t={float(stepper.field.to_user_time(t_target)):.10g}. Raise the solver's "
            "max_steps, loosen rtol/atol, or check the problem for stiffness or blow-up."
        )


def _advance_with_callbacks(
    stepper: Stepper,
    state: StepState,
    t_target: torch.Tensor,
    counts: Counts,
    on_step: Callable[[Step], None] | None,
    land: bool,
) -> tuple[StepState, Step]:
    """:func:`advance` with the field's step callbacks (a separate loop: no cost without)."""
    field = stepper.field
    on_attempt, on_accept, on_reject = field.callbacks
    if not getattr(stepper, "adaptive", True):
        on_accept = on_reject = None  # torchdiffeq's fixed-grid solvers call callback_step only
    to_user = field.to_user_time
    while True:
        _check_budget(stepper, state, t_target, counts)
        if on_attempt is not None:
            on_attempt(to_user(state.t), state.y, state.h)
        new_state, step, status = stepper.attempt(state, t_target, land)
        accepted, finite, size_ok, reached = status[:4]
        _check(stepper, state, t_target, finite, size_ok)
        if accepted:
            if on_accept is not None:
                on_accept(to_user(step.t0), step.y0, step.h)
            state = new_state
            if _accepted(counts, status, step, on_step, reached):
                return state, step
        else:
            counts.rejected += 1
            if on_reject is not None:
                on_reject(to_user(state.t), state.y, getattr(stepper, "last_dt", state.h))
            state = new_state


def _check(stepper: Stepper, state: StepState, t_target: torch.Tensor, finite: bool, size_ok: bool) -> None:
    if not finite:
        where = float(stepper.field.to_user_time(state.t))
        raise NonFiniteStateError(
            f"the state became NaN or infinite in the step from t={where:.6g} "
            f"(step size {float(state.h):.3g}). Check f for overflow (e.g. exp of a large "
            "state), lower the step size with tighter rtol/atol, or solve in float64."
        )
    if not size_ok:
        where = float(stepper.field.to_user_time(state.t))
        raise StepSizeUnderflowError(
            f"the step size underflowed (t + h == t) at t={where:.6g}: the problem is likely "
            "stiff or singular there. Loosen rtol/atol, rescale time, or check f near that t."
        )
