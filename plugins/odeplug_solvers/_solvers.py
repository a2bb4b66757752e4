"""The built-in solvers: explicit Runge–Kutta methods, each a tableau plus options."""

from __future__ import annotations

import abc

import attrs

import odeplug
from odeplug import Layout, Solver, VectorField, configuration

from . import _methods
from ._stepper import RungeKuttaStepper
from ._tableau import ButcherTableau

__all__ = ["RungeKutta", "AdaptiveRungeKutta", "FixedStepRungeKutta", "Dopri5", "Tsit5", "Bosh3",
           "Euler", "Midpoint", "RK4"]

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


def _norm_or_none(instance, attribute, value):
    if value is not None and not isinstance(value, odeplug.Norm):
        raise odeplug.InvalidOptionError(
            f"{type(instance).__name__}: norm must be an odeplug.Norm instance such as "
            f"odeplug.RMSNorm(), got {value!r}."
        )


def _max_steps(instance, attribute, value):
    if not (isinstance(value, int) and value >= 1):
        raise odeplug.InvalidOptionError(
            f"{type(instance).__name__}: max_steps must be a positive int, got {value!r}."
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
        rtol, atol: relative and absolute tolerance (torchdiffeq's defaults, 1e-7 and 1e-9).
        norm: the :class:`odeplug.Norm` of the scaled error (default ``MixedNorm()``).
        first_step: initial step size (default: Hairer's selection, one extra evaluation).
        max_steps: attempted steps (accepted + rejected) allowed per solve before
            :class:`odeplug.StepBudgetExhaustedError`.
    """

    rtol: float = attrs.field(default=1e-7, validator=_non_negative)
    atol: float = attrs.field(default=1e-9, validator=_non_negative)
    norm: odeplug.Norm | None = attrs.field(default=None, validator=_norm_or_none)
    first_step: float | None = attrs.field(default=None, validator=_positive("first_step"))
    max_steps: int = attrs.field(default=_DEFAULT_MAX_STEPS, validator=_max_steps)

    def __attrs_post_init__(self) -> None:
        if self.rtol == 0 and self.atol == 0:
            raise odeplug.InvalidOptionError(
                f"{type(self).__name__}: rtol and atol cannot both be 0; set e.g. rtol=1e-6, atol=1e-8."
            )


@attrs.frozen(kw_only=True)
class FixedStepRungeKutta(RungeKutta):
    """Abstract: a fixed-step method. ``dt`` (required) is the step; the last step is shortened to
    land on the final time. Outputs between steps come from the cubic Hermite through the step's
    two ends and their slopes (F(t1, y1) is the next step's first stage: no extra evaluation)."""

    dt: float = attrs.field(default=None, validator=_positive("dt"))
    max_steps: int = attrs.field(default=_DEFAULT_MAX_STEPS, validator=_max_steps)

    def __attrs_post_init__(self) -> None:
        if self.dt is None:
            raise odeplug.InvalidOptionError(
                f"{type(self).__name__} is a fixed-step solver and needs a step size: "
                f"{type(self).__name__}(dt=0.01). For error control use Dopri5 or Tsit5."
            )


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
    """The classical fourth-order Runge–Kutta method."""

    tableau = _methods.RK4


def register() -> None:
    """The plugin's hook: one ``make_stepper`` method per family, the declared ``order`` of
    every Runge–Kutta method (its tableau's), and the public names."""

    @odeplug.register
    def make_stepper(solver: AdaptiveRungeKutta, field: VectorField, layout: Layout):
        norm = solver.norm if solver.norm is not None else odeplug.MixedNorm()
        return RungeKuttaStepper(
            solver.tableau, field, layout, rtol=solver.rtol, atol=solver.atol, norm=norm,
            first_step=solver.first_step, max_steps=solver.max_steps,
        )

    @odeplug.register
    def make_stepper(solver: FixedStepRungeKutta, field: VectorField, layout: Layout):  # noqa: F811
        return RungeKuttaStepper(
            solver.tableau, field, layout, dt=solver.dt, max_steps=solver.max_steps
        )

    @odeplug.register
    def order(solver: RungeKutta):
        # The tableau is the one source: RungeKuttaStepper.order reads the same number.
        return solver.tableau.order

    odeplug.export(Dopri5, Tsit5, Bosh3, Euler, Midpoint, RK4, RungeKutta, AdaptiveRungeKutta,
                   FixedStepRungeKutta)
