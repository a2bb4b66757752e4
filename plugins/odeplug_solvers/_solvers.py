"""The built-in solvers: explicit Runge–Kutta methods, each a tableau plus options."""

from __future__ import annotations

import abc
import math

import attrs

import odeplug
from odeplug import Layout, Solver, VectorField, configuration

from . import _methods
from ._stepper import RungeKuttaStepper
from ._tableau import ButcherTableau

__all__ = ["RungeKutta", "AdaptiveRungeKutta", "FixedStep", "FixedStepRungeKutta", "Dopri5", "Tsit5",
           "Bosh3", "Euler", "Midpoint", "RK4", "RK4ThreeEighths", "Heun2", "Heun3", "Dopri8", "Fehlberg2",
           "AdaptiveHeun"]

_DEFAULT_MAX_STEPS = 1_000_000


def _positive(name: str):
    def check(instance, attribute, value):
        if value is not None and not value > 0:
            raise odeplug.InvalidOptionError(
                f"{type(instance).__name__}: {name} must be positive, got {value!r}."
            )
    return check


def _non_negative(instance, attribute, value):
    if not value >= 0:
        raise odeplug.InvalidOptionError(
            f"{type(instance).__name__}: {attribute.name} must be >= 0, got {value!r}."
        )


@attrs.frozen
class ElementwiseTolerance:
    """A per-element tolerance, stored hashable (a shape and a tuple of floats) so that solver
    configurations stay frozen and hashable; ``tensor()`` gives it back as a float64 tensor.
    Made by the solvers' ``rtol``/``atol`` options from a tensor or a (nested) list."""

    shape: tuple[int, ...]
    values: tuple[float, ...]

    def tensor(self):  # noqa: ANN201
        import torch

        return torch.tensor(self.values, dtype=torch.float64).reshape(self.shape)

    def __repr__(self) -> str:
        return f"tensor({self.tensor().tolist()!r})"


def _tolerance(value):  # noqa: ANN001, ANN201
    """rtol/atol converter: a number stays a float; a tensor or nested list becomes an
    :class:`ElementwiseTolerance`; a tuple keeps one entry per element of a tuple state."""
    import torch

    if isinstance(value, bool):
        return value  # refused by the validator
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, ElementwiseTolerance):
        return value
    if isinstance(value, tuple) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return tuple(float(v) for v in value)
    if isinstance(value, tuple):
        return tuple(_tolerance(v) for v in value)
    if isinstance(value, (torch.Tensor, list)):
        try:
            tensor = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
        except (TypeError, ValueError, RuntimeError):
            return value  # refused by the validator
        if tensor.ndim == 0:
            return float(tensor)
        return ElementwiseTolerance(tuple(tensor.shape), tuple(tensor.reshape(-1).tolist()))
    return value


def _tolerance_values(value) -> list[float] | None:  # noqa: ANN001
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        return [value]
    if isinstance(value, ElementwiseTolerance):
        return list(value.values)
    if isinstance(value, tuple):
        out: list[float] = []
        for v in value:
            part = _tolerance_values(v)
            if part is None:
                return None
            out += part
        return out
    return None


def _valid_tolerance(instance, attribute, value):
    values = _tolerance_values(value)
    if values is None or not values or not all(v >= 0 and v == v and v != float("inf") for v in values):
        raise odeplug.InvalidOptionError(
            f"{type(instance).__name__}: {attribute.name} must be a non-negative number, or per "
            f"element a tensor (or nested list) broadcastable to the state, or for a tuple state a "
            f"tuple with one such entry per tensor; got {value!r}."
        )


def _min_step(instance, attribute, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise odeplug.InvalidOptionError(
            f"{type(instance).__name__}: min_step must be a number >= 0 (0: no minimum), got {value!r}."
        )


def _max_step(instance, attribute, value):
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
        raise odeplug.InvalidOptionError(
            f"{type(instance).__name__}: max_step must be a positive number or None (no maximum), "
            f"got {value!r}."
        )


def _norm_or_none(instance, attribute, value):
    if value is not None and not isinstance(value, odeplug.Norm):
        raise odeplug.InvalidOptionError(
            f"{type(instance).__name__}: norm must be an odeplug.Norm instance such as "
            f"odeplug.RMSNorm(), got {value!r}."
        )


def _positive_int(instance, attribute, value):
    if not (isinstance(value, int) and value >= 1):
        raise odeplug.InvalidOptionError(
            f"{type(instance).__name__}: {attribute.name} must be a positive int, got {value!r}."
        )


def _grid(value):  # noqa: ANN001, ANN201
    """``grid`` converter: a sequence of numbers or a 1-D tensor becomes a tuple of floats
    (hashable, as configuration holds Python scalars); anything else is left for the validator."""
    import torch

    if value is None or isinstance(value, (str, bytes)):
        return value
    if isinstance(value, torch.Tensor):
        if value.ndim != 1:
            return value  # refused by the validator
        return tuple(float(v) for v in value.detach().cpu().double().tolist())
    try:
        items = list(value)
    except TypeError:
        return value
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
        return tuple(float(v) for v in items)
    return value


def _valid_grid(instance, attribute, value):
    if value is None:
        return
    kind = type(instance).__name__
    if not isinstance(value, tuple) or len(value) < 2:
        raise odeplug.InvalidOptionError(
            f"{kind}: grid must be a sequence of at least two times (numbers or a 1-D tensor), "
            f"from ts[0] to ts[-1], e.g. grid=[0.0, 0.1, 0.25, 1.0]; got {value!r}."
        )
    if not all(math.isfinite(v) for v in value):
        raise odeplug.InvalidOptionError(f"{kind}: grid contains NaN or infinite times: {value!r}.")
    gaps = [b - a for a, b in zip(value, value[1:])]
    if not (all(g > 0 for g in gaps) or all(g < 0 for g in gaps)):
        raise odeplug.InvalidOptionError(
            f"{kind}: grid must be strictly increasing or strictly decreasing (from ts[0] to "
            f"ts[-1]); got {value!r}. Sort it and drop duplicates."
        )


def _interpolation(instance, attribute, value):
    if value not in ("cubic", "linear"):
        raise odeplug.InvalidOptionError(
            f"{type(instance).__name__}: interpolation must be 'cubic' (the cubic Hermite through "
            f"the step's ends and slopes) or 'linear' (between the step's ends), got {value!r}."
        )


_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _compile_mode(instance, attribute, value):  # noqa: ANN001
    if value is True or value is False or value in _COMPILE_MODES:
        return
    raise odeplug.InvalidOptionError(
        f"{type(instance).__name__}: compile must be True, False or a torch.compile mode "
        f"({', '.join(map(repr, _COMPILE_MODES))}), got {value!r}."
    )


def _stiff_steps(instance, attribute, value):  # noqa: ANN001
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return
    raise odeplug.InvalidOptionError(
        f"{type(instance).__name__}: stiff_steps must be a positive int (steps at the stability "
        f"limit before the stiffness error) or None (no test), got {value!r}."
    )


def _boolean(instance, attribute, value):
    if not isinstance(value, bool):
        raise odeplug.InvalidOptionError(
            f"{type(instance).__name__}: {attribute.name} must be True or False, got {value!r}."
        )


@attrs.frozen(kw_only=True)
class FixedStep(Solver):
    """Abstract: a solver without error control, stepping on a grid fixed before the solve
    (the Runge–Kutta :class:`FixedStepRungeKutta` and the multistep :class:`Adams`).

    Options (where the steps end, one of three ways):
        dt: the step size: steps t0, t0 + dt, ..., the last one shortened to land on the final
            time; a stop time (``ODEProblem(stop_times=...)``) is landed on and the grid goes
            on from it with the same dt.
        dt=None, no grid (the default): every step ends exactly on the next output time (of
            ``ts``) or stop/jump time of the problem, whichever comes first: torchdiffeq's fixed
            grid without ``step_size``. A step's size is then the difference of two of those
            times, so dL/dts flows through the step sizes (as in torchdiffeq), and no output is
            interpolated.
        grid: the step grid itself, a strictly monotonic sequence of times (numbers or a 1-D
            tensor, stored as a tuple of floats) from ``ts[0]`` to ``ts[-1]``: steps end exactly
            on these times (and on the problem's stop/jump times); outputs in between are
            interpolated. Its ends must be ``ts[0]`` and ``ts[-1]`` (to float32 rounding; the
            solve uses ``ts``'s own ends there, with their gradients), checked when a solve
            starts; the times in between are constants. A backward solve runs the same grid in
            reverse, so either order is accepted. diffrax's ``StepTo``; torchdiffeq's
            ``grid_constructor`` (called once, its result passed here). Excludes ``dt``.
        interpolation: how outputs between a step's ends are read: ``"cubic"`` (default), the
            cubic Hermite through y0, y1 and the slopes F(t0, y0), F(t1, y1) (torchdiffeq's
            ``interp="cubic"``); ``"linear"``, (1 − θ) y0 + θ y1 (torchdiffeq's default
            ``interp="linear"``), exactly y0 or y1 at the step's ends (its derivative in the
            output time there is zero, as torchdiffeq's: the output time only picks the end).
        perturb: evaluate f just inside each step, for a field discontinuous at the grid's
            times (torchdiffeq's ``perturb=True``): a step's first stage at the float just after
            t0 and its stages at t1 (c = 1) at the float just before t1, in the state's dtype and
            the direction of integration (its other stages as usual). With ``"cubic"`` the
            interpolant's end slope is F at t1 itself, as torchdiffeq's (one more evaluation
            per step).
        max_steps: steps allowed per solve before :class:`odeplug.StepBudgetExhaustedError`.
    """

    dt: float | None = attrs.field(default=None, validator=_positive("dt"))
    grid: tuple[float, ...] | None = attrs.field(default=None, converter=_grid, validator=_valid_grid)
    interpolation: str = attrs.field(default="cubic", validator=_interpolation)
    perturb: bool = attrs.field(default=False, validator=_boolean)
    max_steps: int = attrs.field(default=_DEFAULT_MAX_STEPS, validator=_positive_int)

    def __attrs_post_init__(self) -> None:
        if self.dt is not None and self.grid is not None:
            kind = type(self).__name__
            raise odeplug.InvalidOptionError(
                f"{kind}: dt and grid both say where the steps end; pass one of them: "
                f"{kind}(dt={self.dt!r}) for a uniform grid, {kind}(grid=[...]) for your own."
            )


class RungeKutta(Solver):
    """Abstract: an explicit Runge–Kutta method given by its :class:`ButcherTableau`."""

    __slots__ = ()

    @property
    @abc.abstractmethod
    def tableau(self) -> ButcherTableau: ...


@attrs.frozen(kw_only=True)
class AdaptiveRungeKutta(RungeKutta):
    """Abstract: an embedded pair with error control (torchdiffeq's step control).

    Options:
        rtol, atol: relative and absolute tolerance (torchdiffeq's defaults, 1e-7 and 1e-9): a
            number, or per element a tensor (or nested list) broadcastable to the state, or for
            a tuple state a tuple with one number or tensor per tensor of the state. Stored
            hashable (:class:`ElementwiseTolerance`); broadcast to the flat state once per solve.
        norm: the :class:`odeplug.Norm` of the scaled error (default ``MixedNorm()``).
        first_step: initial step size (default: Hairer's selection, one extra evaluation).
        min_step: smallest step size (default 0). A step the error control would shrink below
            it is taken at ``min_step`` and accepted anyway (diffrax's ``force_dtmin``),
            counted in ``Solution.stats["steps_forced"]``.
        max_step: largest step size (default None: no limit).
        max_steps: attempted steps (accepted + rejected) allowed per solve before
            :class:`odeplug.StepBudgetExhaustedError`.
        compile: opt in to the compiled path: ``torch.compile`` of the field together with
            each step's stage arithmetic (adaptive: and its step-size control), so that a step
            is a few compiled kernels instead of dozens of eager operations, which at small
            widths is most of a step's time. ``True``, or a ``torch.compile`` mode
            (``"reduce-overhead"`` adds CUDA graphs on a GPU). Results equal the eager path's
            to rounding. The first solve of a shape compiles (seconds to a minute, reported
            apart by ``odeplug bench compiled``); later solves reuse the code. f must be
            traceable by ``torch.compile``; what it cannot trace runs eagerly.
        stiff_steps: the stiffness test (default 1000; ``None`` turns it off). Each accepted
            step estimates h·ρ, ρ the field's stiffest rate, from its last two stages (Hairer &
            Wanner, *Solving ODEs II*, sec. IV.2); after this many steps at the method's
            stability limit (six calm steps in a row reset the count) the solve stops with
            :class:`odeplug.StiffProblemError`, which names the implicit solvers: the step size
            is then set by stability, and an explicit solver would go on for minutes.
    """

    rtol: float = attrs.field(default=1e-7, converter=_tolerance, validator=_valid_tolerance)
    atol: float = attrs.field(default=1e-9, converter=_tolerance, validator=_valid_tolerance)
    norm: odeplug.Norm | None = attrs.field(default=None, validator=_norm_or_none)
    first_step: float | None = attrs.field(default=None, validator=_positive("first_step"))
    min_step: float = attrs.field(default=0.0, validator=_min_step)
    max_step: float | None = attrs.field(default=None, validator=_max_step)
    max_steps: int = attrs.field(default=_DEFAULT_MAX_STEPS, validator=_positive_int)
    compile: bool | str = attrs.field(default=False, validator=_compile_mode)
    stiff_steps: int | None = attrs.field(default=1000, validator=_stiff_steps)

    def __attrs_post_init__(self) -> None:
        if max(_tolerance_values(self.rtol)) == 0 and max(_tolerance_values(self.atol)) == 0:
            raise odeplug.InvalidOptionError(
                f"{type(self).__name__}: rtol and atol cannot both be 0; set e.g. rtol=1e-6, atol=1e-8."
            )
        if self.max_step is not None and self.min_step > self.max_step:
            raise odeplug.InvalidOptionError(
                f"{type(self).__name__}: min_step={self.min_step!r} is larger than "
                f"max_step={self.max_step!r}; lower min_step or raise max_step."
            )
        if self.first_step is not None and self.max_step is not None and self.first_step > self.max_step:
            raise odeplug.InvalidOptionError(
                f"{type(self).__name__}: first_step={self.first_step!r} is larger than "
                f"max_step={self.max_step!r}; it would be clamped. Lower first_step."
            )


@attrs.frozen(kw_only=True)
class FixedStepRungeKutta(FixedStep, RungeKutta):
    """Abstract: a fixed-step Runge–Kutta method, its options :class:`FixedStep`'s (``dt``,
    ``grid``, ``interpolation``, ``perturb``, ``max_steps``) and one of its own. The cubic
    interpolant costs no extra evaluation: F(t1, y1) is the next step's first stage.

    Options:
        compile: the compiled path, as :class:`AdaptiveRungeKutta`'s (here each step's stages
            and its end state are compiled; there is no step-size control).
    """

    compile: bool | str = attrs.field(default=False, validator=_compile_mode)


@configuration
class Dopri5(AdaptiveRungeKutta):
    """Dormand–Prince 5(4) (J. Comput. Appl. Math. 6, 1980), with Shampine's 4th-order dense output.

    Takes the same steps as ``torchdiffeq.odeint(method="dopri5")`` on the same problem."""

    tableau = _methods.DOPRI5


@configuration
class Tsit5(AdaptiveRungeKutta):
    """Tsitouras 5(4) (Comput. Math. Appl. 62, 2011) with its free 4th-order interpolant."""

    tableau = _methods.TSIT5


@configuration
class Bosh3(AdaptiveRungeKutta):
    """Bogacki–Shampine 3(2) (Appl. Math. Lett. 2, 1989) with cubic Hermite dense output."""

    tableau = _methods.BOSH3


@configuration
class Euler(FixedStepRungeKutta):
    """Forward Euler, order 1: y1 = y0 + h f(t0, y0)."""

    tableau = _methods.EULER


@configuration
class Midpoint(FixedStepRungeKutta):
    """Explicit midpoint, order 2: y1 = y0 + h f(t0 + h/2, y0 + h/2 f(t0, y0))."""

    tableau = _methods.MIDPOINT


@configuration
class RK4(FixedStepRungeKutta):
    """The classical fourth-order Runge–Kutta method (Kutta 1901). torchdiffeq's ``rk4`` is
    :class:`RK4ThreeEighths`, not this one."""

    tableau = _methods.RK4


@configuration
class RK4ThreeEighths(FixedStepRungeKutta):
    """Kutta's 3/8 rule, fourth order (Kutta, "Beitrag zur näherungsweisen Integration totaler
    Differentialgleichungen", Z. Math. Phys. 46, 1901): torchdiffeq's ``rk4``, which takes the
    same steps. Same order as :class:`RK4`, other coefficients (a smaller error constant)."""

    tableau = _methods.RK4_THREE_EIGHTHS


@configuration
class Heun2(FixedStepRungeKutta):
    """Heun's second-order method, the explicit trapezoidal rule (Z. Math. Phys. 45, 1900):
    y1 = y0 + h/2 (f(t0, y0) + f(t0 + h, y0 + h f(t0, y0))); torchdiffeq's ``heun2``."""

    tableau = _methods.HEUN2


def register() -> None:
    """The plugin's hook: one ``make_stepper`` method per family, the declared ``order`` of
    every Runge–Kutta method (its tableau's), and the public names."""

    @odeplug.register
    def make_stepper(solver: AdaptiveRungeKutta, field: VectorField, layout: Layout):
        norm = solver.norm if solver.norm is not None else odeplug.MixedNorm()
        return RungeKuttaStepper(
            solver.tableau, field, layout, rtol=solver.rtol, atol=solver.atol, norm=norm,
            first_step=solver.first_step, max_steps=solver.max_steps, min_step=solver.min_step,
            max_step=solver.max_step, compile=solver.compile, stiff_steps=solver.stiff_steps,
        )

    @odeplug.register
    def make_stepper(solver: FixedStepRungeKutta, field: VectorField, layout: Layout):  # noqa: F811
        return RungeKuttaStepper(
            solver.tableau, field, layout, adaptive=False, dt=solver.dt, grid=solver.grid,
            interpolation=solver.interpolation, perturb=solver.perturb, max_steps=solver.max_steps,
            compile=solver.compile,
        )

    @odeplug.register
    def order(solver: RungeKutta):
        # The tableau is the one source: RungeKuttaStepper.order reads the same number.
        return solver.tableau.order

    odeplug.export(Dopri5, Tsit5, Bosh3, Euler, Midpoint, RK4, RungeKutta, AdaptiveRungeKutta,
                   FixedStep, FixedStepRungeKutta)
    odeplug.export(Dopri8, Fehlberg2, AdaptiveHeun, Heun3, RK4ThreeEighths, Heun2)


@configuration
class Dopri8(AdaptiveRungeKutta):
    """Dormand–Prince 8(7), RK8(7)13M of Prince & Dormand (J. Comput. Appl. Math. 7, 1981), with a
    free 5th-order continuous extension. Takes the same steps as
    ``torchdiffeq.odeint(method="dopri8")`` on the same problem."""

    tableau = _methods.DOPRI8


@configuration
class Fehlberg2(AdaptiveRungeKutta):
    """Runge–Kutta–Fehlberg 1(2) (NASA TR R-315, 1969), second-order solution propagated, as
    torchdiffeq's ``fehlberg2``; cubic Hermite dense output. Evaluates F(t1, y1) after each step,
    where torchdiffeq reuses F at the first-order solution (one evaluation fewer, other steps)."""

    tableau = _methods.FEHLBERG2


@configuration
class AdaptiveHeun(AdaptiveRungeKutta):
    """Heun–Euler 2(1): Heun's method (1900) with forward Euler as its error estimate, as
    torchdiffeq's ``adaptive_heun``; cubic Hermite dense output. Evaluates F(t1, y1) after each
    step, where torchdiffeq reuses F at the Euler value (one evaluation fewer, other steps)."""

    tableau = _methods.ADAPTIVE_HEUN


@configuration
class Heun3(FixedStepRungeKutta):
    """Heun's third-order method (Z. Math. Phys. 45, 1900), torchdiffeq's ``heun3``."""

    tableau = _methods.HEUN3
