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
from contextvars import ContextVar

import attrs
import torch

from ._adjoint_system import AdjointSystem
from ._errors import InvalidOptionError, SolveError
from ._integrate import check_stops, solver_times
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
    # The adjoint system's evaluations call torch.autograd.grad, which torch.compile cannot
    # trace: a compiled forward solver's backward solve runs eagerly (one given as the rule's
    # solver= keeps what it says).
    if rule.solver is None and getattr(solver, "compile", False):
        changes["compile"] = False
    # A per-element tolerance is shaped for the forward state, not the augmented one: the
    # backward solve uses its smallest element (unless the rule sets its own).
    for option in ("rtol", "atol"):
        if option not in changes and hasattr(solver, option):
            value = getattr(solver, option)
            if not isinstance(value, (int, float)):
                changes[option] = _smallest(value)
    return attrs.evolve(solver, **changes) if changes else solver


def _smallest(value) -> float:  # noqa: ANN001
    """The smallest element of a per-element tolerance (a number, a tuple of them, or an
    object with ``values``)."""
    if isinstance(value, (int, float)):
        return float(value)
    if hasattr(value, "values") and not isinstance(value, dict):
        return float(min(value.values))
    return min(_smallest(v) for v in value)


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
        jump_time_gradient: the part of dL/dt_0 from the problem's jump times that the
            system's a_t channel cannot see (∂f/∂t has a Dirac mass there): Σ over the jumps
            crossed of a_z(σ)ᵀ (f just after σ − f just before σ), in the direction of the
            forward solve. Already included in ``y``'s a_t (and ``time_gradients[0]``) when the
            system carries a_t; rules that integrate a_zᵀ ∂f/∂t themselves add it.
    """

    y: torch.Tensor
    time_gradients: list[torch.Tensor | None] | None
    nfe: int
    counts: Counts
    stepper: Stepper
    jump_time_gradient: torch.Tensor | float = 0.0


class AdjointBlocks(tuple):
    """The augmented state of a backward solve split into its blocks (z, a_z, a_θ…, a_t, in the
    order of :class:`AdjointSystem`'s layout), as the ``*_adjoint`` step callbacks get it;
    ``names`` names each block (``"z"``, ``"a_z"``, ``"a_θ[0]"``, …, ``"a_t"``; a tuple state's
    blocks carry its index, ``"z[1]"``)."""

    names: tuple[str, ...]

    def __new__(cls, parts, names):  # noqa: ANN001, ANN204
        blocks = super().__new__(cls, parts)
        blocks.names = names
        return blocks


def _adjoint_callbacks(found, layout):  # noqa: ANN001, ANN202
    """torchdiffeq's ``callback_*_adjoint`` for the backward solve: called as
    ``(t0, blocks, dt)`` with ``t0`` in user time and the augmented state as
    :class:`AdjointBlocks`."""
    if found is None:
        return None
    names = layout.names
    return tuple(
        None if cb is None else (lambda t, y, dt, cb=cb: cb(t, AdjointBlocks(layout.unflatten(y), names), dt))
        for cb in found
    )


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
    # The problem's stop and jump times (carried by its flat field): the backward solve lands
    # on them and restarts at jumps as the forward does, going backwards.
    forward_f = getattr(system, "f", None)
    field = VectorField(
        system, -direction,
        stop_times=getattr(forward_f, "stop_times", None),
        jump_times=getattr(forward_f, "jump_times", None),
        callbacks=_adjoint_callbacks(getattr(forward_f, "adjoint_callbacks", None), system.layout),
    )
    stepper: Stepper = make_stepper(solver, field, system.layout)
    check_stops(stepper)
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

    # Jumps in backward solver time: the solve lands on each (the stepper does that for every
    # stop), and when time gradients are wanted adds the jump's part of dL/dt_0 there.
    jumps = field.jumps.tolist() if (time_grads is not None and field.jumps is not None) else []
    bounds = s.tolist() if jumps else []
    extra = {"nfe": 0, "g": 0.0}

    def jump_term(state: StepState, where: float) -> StepState:
        # ∂f/∂t has a Dirac mass (f⁺ − f⁻) δ(t − σ) at a jump: a_t misses a_zᵀ (f⁺ − f⁻).
        z, a = state.y[:n], state.y[n : 2 * n]
        t = torch.tensor(-direction * where, dtype=z.dtype, device=z.device)
        after = torch.nextafter(t, torch.tensor(direction * float("inf"), dtype=z.dtype, device=z.device))
        before = torch.nextafter(t, torch.tensor(-direction * float("inf"), dtype=z.dtype, device=z.device))
        g = (a * (system.f(after, z) - system.f(before, z))).sum()
        extra["nfe"] += 2
        if not carries_a_t:
            extra["g"] = extra["g"] + g
            return state
        y = state.y.clone()
        y[-1] += g
        return StepState(state.t, y, state.f, state.h)

    if time_grads is not None:
        state = record_time_gradient(K, state)
    try:
        for k in range(K, 0, -1):
            hook = None if on_step is None else (lambda step, k=k: on_step(stepper, step, k))
            for where in jumps:
                if bounds[K - k] < where < bounds[K - k + 1]:
                    target = torch.tensor(where, dtype=s.dtype, device=s.device)
                    state, _ = advance(stepper, state, target, counts, on_step=hook, land=True)
                    state = jump_term(state, where)
            state, _ = advance(stepper, state, s[K - k + 1], counts, on_step=hook, land=True)
            if on_interval is not None:
                on_interval(stepper, k, state)
            if k > 1:
                if jumps and bounds[K - k + 1] in jumps:
                    state = jump_term(state, bounds[K - k + 1])
                y = state.y.clone()
                y[:n] = ys[k - 1]
                y[n : 2 * n] += grad_ys[k - 1]
                state = stepper.restart(state, y)
                if time_grads is not None:
                    state = record_time_gradient(k - 1, state)
    except SolveError as error:  # the same error, saying why a backward solve can fail
        raise type(error)(f"{error} {_BACKWARD_HINT}") from error
    if time_grads is not None and carries_a_t:
        time_grads[0] = state.y[-1]
    add_backward_counts(stepper)
    return Backsolve(state.y, time_grads, field.nfe + extra["nfe"], counts, stepper, extra["g"])


#: Said with every error of a backward solve: why it can fail where the forward did not.
_BACKWARD_HINT = (
    "(This happened in the backward solve, which integrates z back from the last output time: "
    "where the forward dynamics contract fast (a stiff field, rates far left of zero) z grows "
    "like e^(|λ|·t) backwards and the solve cannot follow it. Direct() and ACA() differentiate "
    "the forward's own steps and never solve z backwards; use one of them here.)"
)


#: The stats of the solve whose ``backward()`` is running (set by the autograd shell), where
#: backward solves add their steppers' own counts (``Stepper.stats()``, rule 7) as ``<name>_backward``.
BACKWARD_STATS: ContextVar[dict | None] = ContextVar("odeplug_backward_stats", default=None)


def add_backward_counts(stepper: Stepper) -> None:
    """Add ``stepper``'s own counts (an implicit solver's ``njev``, ``nlu``, ...) to the running
    backward's stats, suffixed ``_backward``; nothing for a stepper without them."""
    sink, counts = BACKWARD_STATS.get(), getattr(stepper, "stats", None)
    if sink is None or counts is None:
        return
    for key, value in counts().items():
        sink[f"{key}_backward"] = sink.get(f"{key}_backward", 0) + value
