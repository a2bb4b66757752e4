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

__all__ = ["VectorField", "StepState", "Step", "Stepper", "Counts", "advance"]


@final
class VectorField(Noun):
    """A flat vector field ``F(s, y) = direction · f(direction · s, y)`` that counts its calls.

    ``nfe`` counts every evaluation, whoever makes it (the initial-step probe, rejected steps,
    dense-output helpers), so the figures in ``Solution.stats`` are counted, not estimated.

    :meth:`prime` hands the field a value it already knows: the next call at that very state
    tensor returns it without evaluating f (and without counting). Rules use it to reuse an
    evaluation they made themselves (finding what f depends on) or a first stage they kept
    (a checkpointed F(t_i, y_i)).
    """

    __slots__ = ("fn", "direction", "nfe", "_primed")

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], direction: float = 1.0):
        self.fn = fn
        self.direction = float(direction)
        self.nfe = 0
        self._primed: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        primed = self._primed
        if primed is not None:
            self._primed = None
            if primed[0] is y:
                return primed[1]
        self.nfe += 1
        if self.direction > 0:
            return self.fn(s, y)
        return -self.fn(-s, y)

    def prime(self, y: torch.Tensor, value: torch.Tensor) -> None:
        """Make the next call return ``value`` (= F(s, y)) if it is made at the tensor ``y``
        itself; any other next call evaluates as usual and forgets ``value``."""
        self._primed = (y, value)

    def to_user_time(self, s: torch.Tensor) -> torch.Tensor:
        return s if self.direction > 0 else -s


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
    exactly on its target (``land=True``) or, for a fixed-step solver, on the end time.
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
    6. Evaluate the field only through ``self.field`` (it counts).
    """

    __slots__ = ()
    field: VectorField
    max_steps: int
    #: Order of the method's solution (used by rules that choose quadrature orders per step).
    order: int

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
    """Accepted and rejected steps of one solve direction (evaluations live on the field)."""

    __slots__ = ("accepted", "rejected")

    def __init__(self) -> None:
        self.accepted = 0
        self.rejected = 0


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

    ``on_step`` sees every accepted step (checkpointing, per-step quadrature).
    ``land=True`` ends the last step exactly on ``t_target`` (see :meth:`Stepper.attempt`).
    """
    budget = stepper.max_steps
    while True:
        if counts.accepted + counts.rejected >= budget:
            where = stepper.field.to_user_time(state.t)
            raise StepBudgetExhaustedError(
                f"max_steps={budget} steps were attempted ({counts.accepted} accepted, "
                f"{counts.rejected} rejected) and the solve stopped at t={float(where):.6g}, "
                f"short of t={float(stepper.field.to_user_time(t_target)):.6g}. Raise the solver's "
                "max_steps, loosen rtol/atol, or check the problem for stiffness or blow-up."
            )
        new_state, step, status = stepper.attempt(state, t_target, land)
        accepted, finite, size_ok, reached = status
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
        state = new_state
        if accepted:
            counts.accepted += 1
            last = step
            if on_step is not None:
                on_step(step)
            if reached:
                return state, last
        else:
            counts.rejected += 1
