"""Problem transforms: controlled, second-order and augmented problems, each solved as an
:class:`odeplug.ODEProblem`, so that transforms chain in one expression and every solver and
gradient rule applies to the result.

- :func:`odeplug.interpolate` turns irregularly sampled observations into a :class:`ControlPath`
  (:class:`NaturalCubicSpline`, :class:`LinearInterpolation`); :func:`odeplug.controlled` turns a
  :class:`CDEProblem` dy = f(t, y) dX(t) into dy/dt = f(t, y) · dX/dt (Kidger et al., "Neural
  Controlled Differential Equations for Irregular Time Series", NeurIPS 2020).
- :func:`odeplug.first_order` turns a :class:`SecondOrderProblem` y'' = f(t, y, y') into the ODE on
  (y, y').
- :func:`odeplug.augment` appends zero channels to a problem's state (:class:`ZeroAugmentation`;
  Dupont et al., "Augmented Neural ODEs", NeurIPS 2019).
"""

from __future__ import annotations

import torch

import odeplug
from odeplug import GradientRule, ODEProblem, Solver
from odeplug_sde import SDEProblem

from ._augment import Augmentation, ZeroAugmentation
from ._cde import CDEProblem, controlled_ode
from ._paths import (
    ControlPath,
    Interpolation,
    LinearInterpolation,
    NaturalCubicSpline,
    PiecewisePolynomialPath,
    linear_interpolation,
    natural_cubic_spline,
)
from ._second_order import SecondOrderProblem, first_order_ode

__all__ = [
    "Augmentation", "ZeroAugmentation", "CDEProblem", "SecondOrderProblem", "ControlPath",
    "Interpolation", "LinearInterpolation", "NaturalCubicSpline", "PiecewisePolynomialPath",
    "register",
]


def register() -> None:
    """The plugin's hook."""

    @odeplug.register
    def interpolate(scheme: NaturalCubicSpline, times: torch.Tensor, values: torch.Tensor):
        return natural_cubic_spline(scheme, times, values)

    @odeplug.register
    def interpolate(scheme: LinearInterpolation, times: torch.Tensor, values: torch.Tensor):  # noqa: F811
        return linear_interpolation(scheme, times, values)

    @odeplug.register
    def controlled(problem: CDEProblem):
        return controlled_ode(problem)

    @odeplug.register
    def first_order(problem: SecondOrderProblem):
        return first_order_ode(problem)

    @odeplug.register
    def augment(problem: ODEProblem, augmentation: ZeroAugmentation):
        y0 = tuple(map(augmentation.pad, problem.y0)) if problem.is_tuple else augmentation.pad(problem.y0)
        return ODEProblem(
            problem.f, y0, problem.ts, params=problem.params, stop_times=problem.stop_times,
            jump_times=problem.jump_times, callbacks=problem.callbacks,
            event=_on_original_channels(problem.event, augmentation),
        )

    @odeplug.register
    def augment(problem: SecondOrderProblem, augmentation: ZeroAugmentation):  # noqa: F811
        return SecondOrderProblem(
            problem.f, augmentation.pad(problem.y0), augmentation.pad(problem.v0), problem.ts,
            params=problem.params,
        )

    @odeplug.register
    def augment(problem: CDEProblem, augmentation: ZeroAugmentation):  # noqa: F811
        return CDEProblem(
            problem.f, problem.path, augmentation.pad(problem.y0), problem.ts, params=problem.params
        )

    @odeplug.register
    def augment(problem: SDEProblem, augmentation: ZeroAugmentation):  # noqa: F811
        return SDEProblem(
            problem.drift, problem.diffusion, augmentation.pad(problem.y0), problem.ts,
            noise=problem.noise, brownian_size=problem.brownian_size, params=problem.params,
        )

    # Solving the problems directly solves their ODEs.
    @odeplug.register
    def solve(problem: CDEProblem, solver: Solver, rule: GradientRule, **options):
        return odeplug.solve(controlled_ode(problem), solver, rule, **options)

    @odeplug.register
    def solve(problem: SecondOrderProblem, solver: Solver, rule: GradientRule, **options):  # noqa: F811
        return odeplug.solve(first_order_ode(problem), solver, rule, **options)

    odeplug.export(
        CDEProblem, SecondOrderProblem, ControlPath, PiecewisePolynomialPath, Interpolation,
        NaturalCubicSpline, LinearInterpolation, Augmentation, ZeroAugmentation,
    )


def _on_original_channels(event, augmentation: Augmentation):  # noqa: ANN001, ANN202
    """A problem's event functions, reading the original channels of the widened state (the
    event is a property of the model's state, not of the added channels)."""
    if event is None:
        return None

    def projected(g):  # noqa: ANN001, ANN202
        def on_original(t, y):  # noqa: ANN001, ANN202
            return g(t, augmentation.project(y))

        return on_original

    if isinstance(event, tuple):
        return tuple(map(projected, event))
    return projected(event)
