"""The autograd shell every rule with its own backward runs in: :func:`differentiate`.

A rule supplies two functions, its forward (no graph) and its backward (gradients for y0, the
output times and the tensors f depends on); the shell does everything else once, the same way
for every rule:

1. finds the tensors f depends on that require grad (:func:`field_inputs`: parameters,
   closures, tensors computed from parameters), unites them with ``params=``, each once, and
   reuses the evaluation that found them as the forward's first;
2. refuses randomness in f unless the rule replays it, since re-evaluations would draw new
   numbers (a rule that replays them starts from ``Tape.rng_state``, the generators' state
   before the first evaluation);
3. runs the forward inside a ``torch.autograd.Function`` whose inputs are (y0, ts, *inputs), and
   saves them, so that an in-place change between forward and backward (``optimizer.step()``)
   raises instead of differentiating at the new values;
4. in backward, refuses second derivatives unless the rule computes them, keeps the tensors f
   changes in place (BatchNorm running statistics, of a module f is or closes over) as the
   forward left them, and fills ``Solution.stats``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import torch

from ._errors import SolveError, UnsupportedCombinationError
from ._inputs import RNGState, field_inputs, held_tensors
from ._integrate import forward_stats, integrate, solver_times
from ._nouns import GradientRule, Solver, final
from ._problem import ODEProblem
from ._solution import Solution, Stats
from ._stepping import Counts, Step, VectorField

__all__ = ["Tape", "Gradients", "Needs", "differentiate", "forward_outputs"]


@final
@attrs.define(eq=False)
class Tape:
    """One solve as a rule's forward and backward see it.

    Attributes:
        problem, solver, rule: what was solved, and how it is differentiated.
        field: the forward's flat field (counting; primed with the first evaluation).
        y0: the flat initial state; ``s``: the output times in solver time (increasing).
        inputs: the tensors f depends on that require grad (gradients are returned for these).
        uses_rng: f draws random numbers.
        state: tensors from outside f that it changes in place (BatchNorm running statistics);
            the shell puts them back after backward's re-evaluations.
        rng_state: the random number generators' state before f's first evaluation (F(t0, y0),
            the one ``field`` is primed with), for rules that replay f's draws.
        stats: the solution's :class:`Stats`; the forward and the backward add their counts.
        memo: the rule's own per-solve values (set in forward, read in backward).
        saved: tensors the forward asks the shell to save for backward (freed after it).
        differentiated: the solve is differentiated; ``False`` when nothing requires grad (or
            grad mode is off), and then the forward need keep nothing for a backward.
    """

    problem: ODEProblem
    solver: Solver
    rule: GradientRule
    field: VectorField
    y0: torch.Tensor
    s: torch.Tensor
    inputs: tuple[torch.Tensor, ...]
    uses_rng: bool
    rng_state: RNGState
    state: tuple[torch.Tensor, ...]
    stats: Stats
    memo: dict = attrs.field(factory=dict)
    saved: tuple[torch.Tensor, ...] = ()
    differentiated: bool = True

    @property
    def direction(self) -> float:
        return self.problem.direction


@final
@attrs.frozen
class Gradients:
    """What a rule's backward returns (``None`` where a gradient is not needed).

    ``y0``: dL/dy0, flat. ``ts``: dL/dts, shaped like ``ts``. ``inputs``: one per
    :attr:`Tape.inputs`."""

    y0: torch.Tensor | None
    ts: torch.Tensor | None
    inputs: tuple[torch.Tensor | None, ...]


@final
@attrs.frozen
class Needs:
    """Which gradients autograd asks the backward for."""

    y0: bool
    ts: bool
    inputs: tuple[bool, ...]


Forward = Callable[[Tape], torch.Tensor]
Backward = Callable[[Tape, torch.Tensor, Needs], Gradients]


@contextmanager
def _state_kept(state: tuple[torch.Tensor, ...]) -> Iterator[None]:
    """Re-evaluations in backward must not move f's state (BatchNorm running statistics) a
    second time: put back what the forward left."""
    kept = [x.detach().clone() for x in state]
    try:
        yield
    finally:
        with torch.no_grad():
            for x, value in zip(state, kept):
                x.copy_(value)


#: FSDP's wrapper (FSDP1) and the class fully_shard mixes in (FSDP2); the parameters of a unit
#: that is not gathered: FSDP1's flat parameter, FSDP2's DTensor.
_FSDP_UNITS = ("FullyShardedDataParallel", "FSDPModule")
_SHARDED = ("FlatParameter", "DTensor")


def _refuse_fsdp_inside(rule: GradientRule, f: object, tensors: tuple[torch.Tensor, ...]) -> None:
    """When the vector field, or a module inside it, is an FSDP unit of its own, FSDP gathers
    its parameters around each evaluation and frees or reshards them after, while the rule's
    backward re-evaluates f from the tensors the forward saved: shapes that do not match, or
    freed memory. Refuse it up front, with the fix. (The module that calls ``solve`` wrapped as
    one unit is fine: its parameters stay gathered through the solve and its backward.)"""
    modules = f.modules() if isinstance(f, torch.nn.Module) else ()
    unit = next((m for m in modules if any(c.__name__ in _FSDP_UNITS for c in type(m).__mro__)), None)
    sharded = next((x for x in tensors if any(c.__name__ in _SHARDED for c in type(x).__mro__)), None)
    if unit is not None or sharded is not None:
        what = (f"the module {type(unit).__name__} in f is an FSDP unit" if unit is not None else
                f"f reads a sharded parameter ({type(sharded).__name__} of shape {tuple(sharded.shape)})")
        raise UnsupportedCombinationError(
            f"{type(rule).__name__}: {what}; this rule re-evaluates f in backward() from the "
            "parameters the forward saved, which FSDP frees or reshards after each evaluation of a "
            "unit inside f. Wrap the module whose forward calls odeplug.solve as one FSDP unit, "
            "with no unit inside the vector field (docs/distributed.md)."
        )


class _Shell(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, spec: tuple, y0: torch.Tensor, ts: torch.Tensor, *inputs: torch.Tensor):
        tape, forward, _backward, _double = spec
        ys = forward(tape)
        ctx.spec = spec
        ctx.save_for_backward(y0, ts, *inputs, *tape.saved)
        tape.saved = ()
        return ys

    @staticmethod
    def backward(ctx: Any, grad_ys: torch.Tensor):
        tape, _forward, backward, double = ctx.spec
        name = type(tape.rule).__name__
        if torch.is_grad_enabled() and not double:
            raise UnsupportedCombinationError(
                f"{name} cannot give second derivatives (backward with create_graph=True, e.g. "
                "a Hessian-vector product or a gradient penalty): its backward solve is not "
                "differentiable. Use Direct() or ACA(), which compute them exactly."
            )
        try:
            saved = ctx.saved_tensors
        except RuntimeError as exc:
            if "inplace" not in str(exc):
                raise
            raise SolveError(
                f"{name}: a tensor the solve depends on (y0, ts, or a parameter of f) was changed "
                "in place between the forward solve and backward(), e.g. by optimizer.step() or "
                "an in-place update. Call loss.backward() before changing parameters, or solve "
                "again after the change."
            ) from exc
        k = len(tape.inputs)
        tape.y0 = saved[0]  # saved[1], ts, is saved so that an in-place change of it raises
        tape.inputs = tuple(saved[2 : 2 + k])
        tape.saved = tuple(saved[2 + k :])
        need = ctx.needs_input_grad
        needs = Needs(need[1], need[2], tuple(need[3 : 3 + k]))
        from ._backsolve import BACKWARD_STATS

        token = BACKWARD_STATS.set(tape.stats)  # backward solves add their own counts there
        try:
            with _state_kept(tape.state):
                grads = backward(tape, grad_ys, needs)
        finally:
            BACKWARD_STATS.reset(token)
        tape.saved = ()
        inputs = [g if wanted else None for g, wanted in zip(grads.inputs, needs.inputs)]
        return (None, grads.y0 if needs.y0 else None, grads.ts if needs.ts else None, *inputs)


def forward_outputs(tape: Tape, on_step: Callable[[Step], None] | None = None) -> torch.Tensor:
    """The plain forward of a backsolve rule: solve on ``tape.field``, count into
    ``tape.stats``, and keep the flat outputs (K+1, n) for the backward (``tape.saved``, where
    a backsolve reads them to reset z). ``on_step`` sees every accepted step (to keep more)."""
    from ._verbs import make_stepper

    stepper = make_stepper(tape.solver, tape.field, tape.problem.layout)
    counts = Counts()
    ys, _ = integrate(stepper, tape.y0, tape.s, counts, on_step)
    tape.stats.update(forward_stats(tape.field, counts, stepper))
    tape.saved = (ys,)
    return ys


def differentiate(
    problem: ODEProblem,
    solver: Solver,
    rule: GradientRule,
    forward: Forward,
    backward: Backward,
    *,
    replays_randomness: bool = False,
    second_derivatives: bool = False,
) -> Solution:
    """Solve ``problem`` with ``forward`` and make ``loss.backward()`` call ``backward``.

    Args:
        forward: ``forward(tape) -> ys``, the flat outputs (K+1, n), run without a graph. It
            counts into ``tape.stats`` and may set ``tape.saved`` (tensors kept for backward) and
            ``tape.memo``.
        backward: ``backward(tape, grad_ys, needs) -> Gradients``, run under ``no_grad`` (or,
            with ``second_derivatives``, with grad mode as autograd sets it: on for
            ``create_graph=True``, and then the gradients must be differentiable).
        replays_randomness: the rule reproduces f's random draws in backward (ACA); otherwise
            a field that draws random numbers is refused.
        second_derivatives: the rule's backward supports ``create_graph=True``; otherwise it is
            refused with an error naming the rules that do.

    When nothing requires grad (or grad mode is off) the forward runs on its own.
    """
    field = VectorField(problem.flat_field(), problem.direction)
    y0 = problem.flat_y0()
    s = solver_times(problem.ts, problem.direction)
    rng_state = RNGState.capture(y0)  # where the draws of that first evaluation begin
    found = field_inputs(field, s[0].to(y0.dtype), y0, problem.params, held_tensors(problem.f))
    _refuse_fsdp_inside(rule, problem.f, found.tensors)
    field.prime(y0, found.value)
    stats = Stats()
    tape = Tape(problem, solver, rule, field, y0, s, found.tensors,
                found.uses_rng, rng_state, found.state, stats)
    tape.differentiated = torch.is_grad_enabled() and (
        y0.requires_grad or problem.ts.requires_grad or bool(tape.inputs)
    )
    if not tape.differentiated:
        with torch.no_grad():
            ys = forward(tape)
        tape.saved = ()
        return Solution(problem.unflatten(ys), problem.ts, stats)
    if found.uses_rng and not replays_randomness:
        raise UnsupportedCombinationError(
            f"{type(rule).__name__}: f draws random numbers (Dropout in train mode, noise sampled "
            "inside f), and this rule re-evaluates f in backward at other points, so its "
            "gradient would not be the gradient of the forward's output. Use ACA() (replays "
            "the random numbers) or Direct(), or make f deterministic (model.eval())."
        )
    ys = _Shell.apply((tape, forward, backward, second_derivatives), y0, problem.ts, *tape.inputs)
    return Solution(problem.unflatten(ys), problem.ts, stats)
