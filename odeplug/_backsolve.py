"""The backward solve: an :class:`AdjointSystem` integrated from t_K back to t_0, with the state
changed at every output time.

At each interior output time t_k the backward solve lands exactly (``land=True``) and then

- **resets z** to the forward's y(t_k), as torchdiffeq, diffrax and SciMLSensitivity do: solving
  z backwards is unstable wherever the forward dynamics contract (the backward ones expand), and
  without the reset its error compounds from one interval into the next;
- **jumps a_z** by dL/dy(t_k);
- records dL/dt_k = dL/dy(t_k)ᵀ f(t_k, y_k) (and subtracts it from a_t, so that a_t(t_0) is
  dL/dt_0).

Both changes cost one evaluation of the field at the new state; the step size carries on (no
new initial-step search: torchdiffeq restarts its solver at every output time).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import torch

from ._adjoint_system import AdjointSystem
from ._errors import InvalidOptionError
from ._integrate import solver_times
from ._nouns import GradientRule, Norm, Solver, final
from ._stepping import Counts, Step, Stepper, StepState, VectorField, advance

__all__ = ["Backsolve", "BacksolveRule", "backsolve", "backward_solver"]


def _instance_or_none(kind: type, what: str):
    def check(instance, attribute, value):  # noqa: ANN001
        if value is not None and not isinstance(value, kind):
            raise InvalidOptionError(
                f"{type(instance).__name__}: {attribute.name} must be {what} or None, got {value!r}."
            )
    return check


def _positive_or_none(instance, attribute, value):  # noqa: ANN001
    if value is not None and not (isinstance(value, (int, float)) and value > 0):
        raise InvalidOptionError(
            f"{type(instance).__name__}: {attribute.name} must be positive (or None), "
            f"got {value!r}."
        )


@attrs.frozen(kw_only=True)
class BacksolveRule(GradientRule):
    """Abstract: a gradient rule with a backward solve, and the options that shape it.

    Options:
        norm: the norm of the backward step control over the blocks of the augmented state
            (None: the backward solver's own; ``Seminorm()`` leaves out the integral blocks).
        rtol, atol: backward tolerances (None: the forward solver's).
        solver: backward solver (None: the forward solver).
    """

    norm: Norm | None = attrs.field(default=None, validator=_instance_or_none(Norm, "an odeplug.Norm"))
    rtol: float | None = attrs.field(default=None, validator=_positive_or_none)
    atol: float | None = attrs.field(default=None, validator=_positive_or_none)
    solver: Solver | None = attrs.field(
        default=None, validator=_instance_or_none(Solver, "an odeplug.Solver such as Dopri5()")
    )


def backward_solver(forward: Solver, rule: BacksolveRule) -> Solver:
    """The solver of ``rule``'s backward solve: its ``solver`` option or the forward solver,
    with the rule's ``norm``, ``rtol`` and ``atol`` where set (None keeps the solver's own).
    Raises if the rule sets an option the solver does not have (a fixed-step solver has no
    tolerances)."""
    name = type(rule).__name__
    solver = rule.solver if rule.solver is not None else forward
    changes = {}
    for option in ("rtol", "atol", "norm"):
        value = getattr(rule, option)
        if value is None:
            continue
        if not any(field.name == option for field in attrs.fields(type(solver))):
            raise InvalidOptionError(
                f"{name}({option}=...) needs a backward solver with a {option!r} option, but "
                f"{type(solver).__name__} has none (fixed-step?). Drop {option}= or pass "
                f"solver=Dopri5(...) to {name}."
            )
        changes[option] = value
    return attrs.evolve(solver, **changes) if changes else solver


@final
@attrs.frozen
class Backsolve:
    """What :func:`backsolve` returns.

    Attributes:
        y: the augmented state at t_0 (a_z(t_0) is the part of dL/dy0 from the later outputs).
        time_gradients: dL/dt_k for k = 1, …, K at index k (index 0: a_t(t_0) when the system
            carries a_t, else ``None``), or ``None`` when not asked for.
        nfe: evaluations of the field by the backward solve.
        counts: accepted and rejected backward steps.
        stepper: the backward stepper (solver time s = −direction·t, increasing).
    """

    y: torch.Tensor
    time_gradients: list[torch.Tensor | None] | None
    nfe: int
    counts: Counts
    stepper: Stepper


def backsolve(
    system: AdjointSystem,
    solver: Solver,
    ys: torch.Tensor,
    grad_ys: torch.Tensor,
    ts: torch.Tensor,
    direction: float,
    *,
    time_gradients: bool = False,
    on_step: Callable[[Stepper, Step, int], None] | None = None,
    on_interval: Callable[[Stepper, int, StepState], None] | None = None,
) -> Backsolve:
    """Solve ``system`` from ``ts[-1]`` back to ``ts[0]``, resetting z and jumping a_z at every
    output time (see the module docstring).

    Args:
        ys, grad_ys: the forward's flat outputs (K+1, n) and dL/dys of the same shape.
        direction: the forward's direction (+1 for increasing ``ts``).
        time_gradients: record dL/dt_k.
        on_step: ``on_step(stepper, step, k)`` sees each accepted step inside (t_{k−1}, t_k].
        on_interval: ``on_interval(stepper, k, state)`` runs on reaching t_{k−1}, before the
            reset and jump there.
    """
    from ._verbs import make_stepper

    K = len(ts) - 1
    n = system.n
    field = VectorField(system, -direction)
    stepper: Stepper = make_stepper(solver, field, system.layout)
    counts = Counts()
    s = solver_times(ts.detach(), -direction).flip(0)  # increasing: t_K → t_0
    state = stepper.start(s[0], system.initial(ys[K], grad_ys[K]), s[-1])
    time_grads: list[torch.Tensor | None] | None = [None] * (K + 1) if time_gradients else None
    carries_a_t = system.time_gradients

    def record_time_gradient(k: int, state: StepState) -> StepState:
        # The stepper's F is (−direction)·(user-time field); its z-part gives f(t_k, y_k).
        g = (grad_ys[k] * (-direction) * state.f[:n]).sum()
        time_grads[k] = g
        if not carries_a_t:
            return state
        y = state.y.clone()
        y[-1] -= g
        return StepState(state.t, y, state.f, state.h)

    if time_grads is not None:
        state = record_time_gradient(K, state)
    for k in range(K, 0, -1):
        hook = None if on_step is None else (lambda step, k=k: on_step(stepper, step, k))
        state, _ = advance(stepper, state, s[K - k + 1], counts, on_step=hook, land=True)
        if on_interval is not None:
            on_interval(stepper, k, state)
        if k > 1:
            y = state.y.clone()
            y[:n] = ys[k - 1]
            y[n : 2 * n] += grad_ys[k - 1]
            state = stepper.restart(state, y)
            if time_grads is not None:
                state = record_time_gradient(k - 1, state)
    if time_grads is not None and carries_a_t:
        time_grads[0] = state.y[-1]
    return Backsolve(state.y, time_grads, field.nfe, counts, stepper)
