"""Fixed-step Adams methods: Adams–Bashforth, and Adams–Bashforth–Moulton predictor–corrector.

A k-step Adams method integrates the polynomial through the last k slopes F(t_{n−j}, y_{n−j}) over
one step (Hairer, Nørsett & Wanner, *Solving ODEs I*, sec. III.1):

- Adams–Bashforth (explicit, Bashforth & Adams 1883), order k:
  y_{n+1} = y_n + h Σ_{j<k} β_j F_{n−j};
- Adams–Moulton (implicit, Moulton 1926), with k + 1 slopes, order k + 1:
  y_{n+1} = y_n + h (μ_0 F(t_{n+1}, y_{n+1}) + Σ_{j<k} μ_{j+1} F_{n−j}), solved by fixed-point
  iteration from the Adams–Bashforth value (a predictor–corrector).

The coefficients are computed here, exactly, from that definition (:func:`adams_coefficients`).
The algorithm is torchdiffeq's ``explicit_adams`` / ``implicit_adams`` (``fixed_adams`` is the
latter's other name), so that on the same grid odeplug takes the same steps:

- the number of slopes used grows by one per step, up to ``max_order − 1``; while fewer than
  three are known the step is Kutta's 3/8 rule (fourth order, three more evaluations);
- the corrector iterates at most ``max_iters`` times, until successive increments agree to
  ‖Δ_old − Δ‖ / (atol + rtol·max(|Δ_old|, |Δ|)) < 1 in the max norm; when it does not
  converge the oldest slope is dropped (the next steps use one slope fewer).

A step depends on the slopes of the steps before it, so it cannot be recomputed from
``(t0, y0, h)`` alone (stepper rule 5): :meth:`AdamsStepper.step_from` only continues the solve
it is part of, and refuses to recompute a past step with :class:`odeplug.UnsupportedCombinationError`.
Rules that replay steps from checkpoints (ACA) are therefore refused at their backward pass;
Direct and the continuous adjoints (Adjoint, GQAdjoint, GaussAdjoint) work.

Where the steps end is :class:`FixedStep`'s choice: every ``dt``; with ``dt=None`` on every
output time, as torchdiffeq's Adams methods without ``step_size`` (one solve, the slopes carried
across output times); or on a given ``grid``. A problem's ``stop_times`` cut a step short to land
on each (with ``dt`` the grid goes on from it with the same dt; the next steps use the same
slopes, as torchdiffeq on a grid through those times); ``jump_times`` are refused. The formulas
use the coefficients of equal steps whatever the step sizes, as torchdiffeq's do.

With ``perturb=True`` (torchdiffeq's): every slope kept is F just after its time, the
corrector evaluates F just before the step's end, and the Runge–Kutta start steps as
:class:`RK4ThreeEighths` with perturb does.
"""

from __future__ import annotations

import functools
import warnings
from fractions import Fraction

import attrs
import torch

import odeplug
from odeplug import Layout, Step, Stepper, StepState, VectorField, configuration, final

from . import _methods
from ._solvers import FixedStep, _non_negative, _positive_int
from ._stepper import (
    RungeKuttaStepper, add_grid_stops, check_grid_ends, fixed_step_end, linear_interpolation,
    unprimed,
)

__all__ = ["Adams", "ExplicitAdams", "ImplicitAdams", "AdamsStepper", "adams_coefficients"]

#: torchdiffeq's bounds: below 4 its Adams methods never leave the Runge–Kutta start.
MIN_ORDER, MAX_ORDER = 4, 12
#: Slopes needed before the first Adams step; fewer, and the step is Kutta's 3/8 rule.
_STARTUP_SLOPES = 3


def _integral_of_lagrange_basis(nodes: list[int], j: int) -> Fraction:
    """∫_0^1 ℓ_j(s) ds for the Lagrange basis polynomial ℓ_j on integer ``nodes``."""
    coefficients = [Fraction(1)]  # of s^0, s^1, ...
    denominator = Fraction(1)
    for m, node in enumerate(nodes):
        if m == j:
            continue
        shifted = [Fraction(0)] + coefficients  # s · p(s)
        coefficients = [a - node * b for a, b in zip(shifted, coefficients + [Fraction(0)])]
        denominator *= nodes[j] - node
    return sum(c / (p + 1) for p, c in enumerate(coefficients)) / denominator


@functools.cache
def adams_coefficients(slopes: int, implicit: bool) -> tuple[float, ...]:
    """The weights of ``slopes`` slopes, newest first: Adams–Bashforth on s = 0, −1, …
    (order ``slopes``), or Adams–Moulton on s = 1, 0, −1, … (order ``slopes``, the first weight
    that of the new slope F(t_{n+1}, y_{n+1})), in units of the step, exact then rounded."""
    first = 1 if implicit else 0
    nodes = [first - j for j in range(slopes)]
    return tuple(float(_integral_of_lagrange_basis(nodes, j)) for j in range(slopes))


def _order_in_range(instance, attribute, value):
    if not (isinstance(value, int) and MIN_ORDER <= value <= MAX_ORDER):
        raise odeplug.InvalidOptionError(
            f"{type(instance).__name__}: max_order must be an int from {MIN_ORDER} to {MAX_ORDER} "
            f"(torchdiffeq's range: below {MIN_ORDER} no Adams step is ever taken), got {value!r}."
        )


class Adams(FixedStep):
    """Abstract: a fixed-step Adams method (torchdiffeq's ``explicit_adams``/``implicit_adams``).

    Options: :class:`FixedStep`'s (``dt``, or ``dt=None`` to step on the output times, or
    ``grid``; ``interpolation``, ``perturb``, ``max_steps``), and ``max_order``: as
    torchdiffeq's, at most ``max_order − 1`` past slopes are used (4 to 12).

    Outputs between steps come from the cubic Hermite through the step's two ends and their
    slopes (third order, below the solution's order), or the line between them. A step depends
    on past slopes, so ACA (which recomputes steps from checkpoints) refuses these solvers;
    Direct and the continuous adjoints work.
    """

    __slots__ = ()


@configuration
class ExplicitAdams(Adams):
    """Adams–Bashforth (Bashforth & Adams, *An attempt to test the theories of capillary
    action*, Cambridge 1883) of growing order up to ``max_order − 1``, started by Kutta's 3/8
    rule: torchdiffeq's ``explicit_adams``. One evaluation per step once started.

    Order 4 (3 for ``max_order=4``): the one third-order step after the start limits it.

    ``max_order`` defaults to 5 (Adams–Bashforth of order 4), not torchdiffeq's 12: order 11's
    stability region is so small that y' = Ay blows up already at h‖A‖ ≈ 0.05. Pass
    ``max_order=12`` for torchdiffeq's default."""

    max_order: int = attrs.field(default=5, validator=_order_in_range)


@configuration
class ImplicitAdams(Adams):
    """Adams–Bashforth–Moulton predictor–corrector (Moulton, *New Methods in Exterior
    Ballistics*, Chicago 1926): the Adams–Bashforth value corrected by fixed-point iteration
    of the Adams–Moulton formula with one slope more, started by Kutta's 3/8 rule: torchdiffeq's
    ``implicit_adams`` (also called ``fixed_adams`` there). Order 5 (4 for ``max_order=4``).

    Options besides :class:`Adams`'s: ``max_order`` (12, torchdiffeq's default: Adams–Moulton
    of order up to 12); ``rtol``, ``atol`` (1e-7, 1e-9, torchdiffeq's defaults):
    when the corrector's successive increments agree; ``max_iters`` (4): corrector iterations
    per step (each one evaluation)."""

    max_order: int = attrs.field(default=MAX_ORDER, validator=_order_in_range)
    rtol: float = attrs.field(default=1e-7, validator=_non_negative)
    atol: float = attrs.field(default=1e-9, validator=_non_negative)
    max_iters: int = attrs.field(default=4, validator=_positive_int)


def _declared_order(solver: Adams) -> int:
    """The global order: the steady formula's, or that of the start, whichever is lower. The
    start is a fixed number of steps, so their local errors add up without the 1/h of the many
    steady ones: Kutta's 3/8 rule (local error O(h⁵)) and, for Adams–Bashforth, one step with
    three slopes (O(h⁴)) limit ExplicitAdams to 4; ImplicitAdams's first corrected step is
    fourth-order (O(h⁵)), so it reaches 5."""
    if isinstance(solver, ExplicitAdams):
        return min(solver.max_order - 1, _STARTUP_SLOPES + 1)
    return min(solver.max_order, _methods.RK4_THREE_EIGHTHS.order + 1)


@final
class AdamsStepper(Stepper):
    """A :class:`Stepper` for :class:`ExplicitAdams` and :class:`ImplicitAdams`. It keeps the
    slopes of the current solve (newest first) and starts afresh at :meth:`start` and
    :meth:`restart`."""

    __slots__ = (
        "field", "order", "dense_order", "max_steps", "dt", "implicit", "rtol", "atol", "max_iters",
        "most_slopes", "_starter", "_slopes", "_end", "_t_end", "_coefficients", "_warned",
        "supports_stops", "_stops", "grid", "linear", "perturb", "_to_outputs", "_origin",
    )
    #: A fixed step: no step is ever rejected.
    adaptive = False

    def __init__(self, solver: Adams, field: VectorField, layout: Layout) -> None:
        self.field = field
        self.order = _declared_order(solver)
        self.linear = solver.interpolation == "linear"
        self.dense_order = 1 if self.linear else 3  # the line or cubic Hermite of interpolate()
        self.max_steps = solver.max_steps
        self.dt = solver.dt
        self.grid = solver.grid
        self.perturb = solver.perturb
        self._to_outputs = solver.dt is None and solver.grid is None
        self._origin: tuple[torch.Tensor, torch.Tensor] | None = None
        if solver.grid is not None:
            add_grid_stops(field, solver.grid)
        self.implicit = isinstance(solver, ImplicitAdams)
        self.rtol = solver.rtol if self.implicit else 0.0
        self.atol = solver.atol if self.implicit else 0.0
        self.max_iters = solver.max_iters if self.implicit else 0
        self.most_slopes = solver.max_order - 1
        # Only its step_from is used, with this stepper's step sizes (its dt is never read),
        # and no dense slope needed (the slope kept is this stepper's).
        self._starter = RungeKuttaStepper(
            _methods.RK4_THREE_EIGHTHS, field, layout, adaptive=False, dt=1.0,
            interpolation="linear", perturb=solver.perturb, max_steps=solver.max_steps,
        )
        self._slopes: list[torch.Tensor] = []
        self._end: tuple[torch.Tensor, torch.Tensor] | None = None  # (t, y) the solve stands at
        self._t_end: torch.Tensor | None = None
        self._coefficients: dict[tuple[int, bool, torch.dtype], torch.Tensor] = {}
        self._warned = False
        # Steps land on the problem's stop_times (the grid goes on from each with the same dt),
        # as the Runge–Kutta stepper's. Jump times (a restart just after them) are not handled.
        self._stops = field.stops if field.jumps is None else None
        self.supports_stops = field.jumps is None

    def _weights(self, slopes: int, implicit: bool, like: torch.Tensor) -> torch.Tensor:
        key = (slopes, implicit, like.dtype)
        if key not in self._coefficients:
            values = adams_coefficients(slopes, implicit)
            self._coefficients[key] = torch.tensor(values, dtype=like.dtype, device=like.device)
        return self._coefficients[key]

    def _after(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Where a slope at ``t`` is evaluated: ``t``, or with perturb the float just after it."""
        ty = t.to(dtype)
        return torch.nextafter(ty, torch.full_like(ty, float("inf"))) if self.perturb else ty

    def _before(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Where the corrector evaluates F at a step's end: with perturb, just before it."""
        ty = t.to(dtype)
        return torch.nextafter(ty, torch.full_like(ty, float("-inf"))) if self.perturb else ty

    def start(self, t0: torch.Tensor, y0: torch.Tensor, t_end: torch.Tensor) -> StepState:
        if self.grid is not None:
            check_grid_ends(self.grid, self.field, t0, t_end)
        f0 = self.field(self._after(t0, y0.dtype), unprimed(y0) if self.perturb else y0)
        self._t_end = t_end
        self._origin = (t0, torch.zeros_like(t0))  # of a dt grid
        if self._stops is not None:
            self._stops = self._stops.to(t0.device)
        self._begin(t0, y0, f0)
        # With dt=None the grid sets each step; h is then the span, never used as a size.
        h = (t_end - t0).detach() if self.dt is None else t0.new_tensor(self.dt)
        return StepState(t0, y0, f0, h)

    def _begin(self, t: torch.Tensor, y: torch.Tensor, f: torch.Tensor) -> None:
        self._slopes = [f]
        self._end = (t, y)

    def restart(self, state: StepState, y: torch.Tensor) -> StepState:
        # Past slopes belong to the old state: start again (as torchdiffeq, which starts a new
        # solve at every output time of its adjoint).
        f = self.field(self._after(state.t, y.dtype), y)
        self._begin(state.t, y, f)
        return StepState(state.t, y, f, state.h)

    def attempt(
        self, state: StepState, t_target: torch.Tensor, land: bool = False
    ) -> tuple[StepState, Step | None, tuple[bool, bool, bool, bool]]:
        t0, y0, f0, dt = state
        end = t_target if (land or self._to_outputs) else self._t_end
        h, t1, landed, self._origin = fixed_step_end(
            t0, None if self.dt is None else dt, end, self._stops, self._t_end, land, self._origin
        )
        step, slope = self._step(t0, y0, f0, h, landed, t1)
        with torch.no_grad():
            status = torch.stack(
                [torch.isfinite(step.y1).all(), step.t1 > t0, step.t1 >= t_target]
            ).tolist()
        finite, size_ok, reached = status
        return StepState(step.t1, step.y1, slope, dt), step, (True, finite, size_ok, reached)

    def step_from(self, t0: torch.Tensor, y0: torch.Tensor, h: torch.Tensor) -> Step:
        """The next step of this solve, from where it stands (``y0`` is the state its last step
        ended at, or was started from). A step in the past cannot be recomputed: it needs the
        slopes of the steps before it, which ``(t0, y0, h)`` does not carry."""
        end_t, end_y = self._end if self._end is not None else (None, None)
        continues = end_y is not None and (y0 is end_y or (
            bool(torch.equal(y0, end_y)) and abs(float(t0 - end_t)) <= 1e-12 * max(1.0, abs(float(t0)))
        ))
        if not continues:
            raise odeplug.UnsupportedCombinationError(
                "an Adams step depends on the slopes of the steps before it, so it cannot be "
                "recomputed from (t0, y0, h) alone, as rules that replay steps from checkpoints "
                "(ACA) need. Use Direct(), Adjoint(), GQAdjoint() or GaussAdjoint() with Adams "
                "solvers, or ACA with a one-step solver such as RK4(dt=...) or Dopri5()."
            )
        landed = torch.zeros((), dtype=torch.bool, device=t0.device)
        step, _ = self._step(t0, y0, self._slopes[0], h, landed, t0 + h)
        return step

    def _step(
        self, t0: torch.Tensor, y0: torch.Tensor, f0: torch.Tensor, h: torch.Tensor, landed: torch.Tensor,
        t1: torch.Tensor,
    ) -> tuple[Step, torch.Tensor]:
        """One step, and the slope it adds (the next step's F(t1, y1), just after t1 with
        perturb)."""
        known = min(len(self._slopes), self.most_slopes)
        f1 = None
        if known < _STARTUP_SLOPES:
            self.field.prime(y0, f0)
            started = self._starter.step_from(t0, y0, h)
            y1, f1 = started.y1, started.f1  # f1 is None with perturb
        else:
            hy = h.to(y0.dtype)
            past = torch.stack(self._slopes[:known])  # (known, n), newest first
            increment = torch.mv(past.t(), self._weights(known, False, y0) * hy)
            if self.implicit:
                increment = self._correct(t1, y0, past, increment, hy)
            y1 = y0 + increment
        if not self.perturb:
            if f1 is None:
                f1 = self.field(t1.to(y0.dtype), y1)
            slope = end_slope = f1
        else:
            slope = self.field(self._after(t1, y0.dtype), y1)
            # torchdiffeq's cubic interpolation reads F at t1 itself (one evaluation more).
            end_slope = None if self.linear else self.field(t1.to(y0.dtype), y1)
        self._slopes.insert(0, slope)
        del self._slopes[self.most_slopes:]
        self._end = (t1, y1)
        stages = f0.unsqueeze(0) if end_slope is None else torch.stack([f0, end_slope])
        return Step(t0, t1, y0, y1, stages, h, landed, None if self.perturb else slope), slope

    def _correct(
        self, t1: torch.Tensor, y0: torch.Tensor, past: torch.Tensor, increment: torch.Tensor,
        hy: torch.Tensor,
    ) -> torch.Tensor:
        weights = self._weights(past.shape[0] + 1, True, y0) * hy
        known_part = torch.mv(past.t(), weights[1:])
        t1y = self._before(t1, y0.dtype)
        converged = False
        for _ in range(self.max_iters):
            previous = increment
            increment = weights[0] * self.field(t1y, y0 + previous) + known_part
            with torch.no_grad():
                scale = self.atol + self.rtol * torch.maximum(previous.abs(), increment.abs())
                converged = bool(((previous - increment).abs() / scale).max() < 1)
            if converged:
                break
        if not converged:
            if not self._warned:
                warnings.warn(
                    f"the Adams–Moulton corrector did not converge in max_iters={self.max_iters} "
                    f"iterations at t={float(self.field.to_user_time(t1.detach())):.6g}; the step keeps "
                    "its last iterate and the next steps use one past slope fewer. Lower dt, or "
                    "raise max_iters or rtol/atol.",
                    RuntimeWarning, stacklevel=2,
                )
                self._warned = True
            self._slopes.pop()
        return increment

    def interpolate(self, step: Step, t: torch.Tensor) -> torch.Tensor:
        """The cubic Hermite through (y0, f0) and (y1, f1), or the line through y0 and y1."""
        y0, y1 = step.y0, step.y1
        theta = ((t - step.t0) / (step.t1 - step.t0)).to(y0.dtype)
        if self.linear:
            return linear_interpolation(theta, y0, y1)
        f0, f1 = step.stages[0], step.stages[1]
        h = (step.t1 - step.t0).to(y0.dtype)
        if theta.dim() == 1:
            theta = theta.unsqueeze(-1)
        rest = 1 - theta
        return (
            (1 + 2 * theta) * rest * rest * y0 + theta * theta * (3 - 2 * theta) * y1
            + h * theta * rest * (rest * f0 - theta * f1)
        )


def register() -> None:
    """Adams methods: their stepper and order, and the public names."""

    @odeplug.register
    def make_stepper(solver: Adams, field: VectorField, layout: Layout):
        return AdamsStepper(solver, field, layout)

    @odeplug.register
    def order(solver: Adams):
        # AdamsStepper.order reads the same function.
        return _declared_order(solver)

    odeplug.export(Adams, ExplicitAdams, ImplicitAdams)
