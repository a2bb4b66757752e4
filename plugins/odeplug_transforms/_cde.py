"""Controlled differential equations as ODEs.

Kidger, Morrill, Foster & Lyons, "Neural Controlled Differential Equations for Irregular Time
Series", NeurIPS 2020, eqs. (2)–(4): for a path X of bounded variation, the CDE

    y(t) = y(t_0) + ∫_{t_0}^t f(s, y(s)) dX(s)

is, for X differentiable between its knots, the ODE dy/dt = f(t, y) · dX/dt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

import odeplug
from odeplug import InvalidArgumentError, ODEProblem, Problem, final
from odeplug._problem import collect_params

from ._paths import ControlPath

__all__ = ["CDEProblem", "controlled_ode"]


@final
class CDEProblem(Problem):
    """The controlled differential equation dy = f(t, y) dX(t), y(ts[0]) = y0, observed at ``ts``.

    Kidger et al., "Neural Controlled Differential Equations for Irregular Time Series",
    NeurIPS 2020. Solve it with :func:`odeplug.controlled`, which gives the ODE
    dy/dt = f(t, y) · dX/dt (every solver and rule applies).

    Args:
        f: called as ``f(t, y)`` with ``y`` shaped like ``y0`` = ``(*batch, hidden)``; returns
            the matrix ``(*batch, hidden, channels)`` that multiplies dX/dt.
        path: a :class:`ControlPath` X (from :func:`odeplug.interpolate`) of shape
            ``(*batch, channels)``; its batch must broadcast to y0's.
        y0: the initial hidden state, ``(*batch, hidden)``, usually a function of X(ts[0]).
        ts: 1-D output times inside the path's knots, increasing or decreasing.
        params: as for :class:`odeplug.ODEProblem` (rarely needed: every rule finds the tensors
            f reads).
    """

    __slots__ = ("f", "path", "y0", "ts", "params", "direction")

    def __init__(
        self,
        f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        path: ControlPath,
        y0: torch.Tensor,
        ts: torch.Tensor,
        *,
        params: Sequence[torch.Tensor] | None = None,
    ) -> None:
        if not callable(f):
            raise InvalidArgumentError(
                f"CDEProblem: f must be callable as f(t, y), got {type(f).__name__}."
            )
        if not isinstance(path, ControlPath):
            raise InvalidArgumentError(
                f"CDEProblem: path must be an odeplug.ControlPath, got {type(path).__name__}; make "
                "one with odeplug.interpolate(odeplug.NaturalCubicSpline(), times, values)."
            )
        if not isinstance(y0, torch.Tensor) or y0.ndim == 0:
            raise InvalidArgumentError(
                "CDEProblem: y0 must be a floating tensor shaped (*batch, hidden), got "
                f"{tuple(y0.shape) if isinstance(y0, torch.Tensor) else type(y0).__name__}."
            )
        try:  # the core's checks of y0 and ts, with this problem's name
            probe = ODEProblem(f, y0, ts)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(str(exc).replace("ODEProblem:", "CDEProblem:", 1)) from None
        batch = tuple(y0.shape[:-1])
        try:
            broadcast = tuple(torch.broadcast_shapes(batch, path.shape[:-1]))
        except RuntimeError:
            broadcast = None
        if broadcast != batch:
            raise InvalidArgumentError(
                f"CDEProblem: the path's batch shape {path.shape[:-1]} does not broadcast to y0's "
                f"{batch} (y0 is (*batch, hidden) = {tuple(y0.shape)}); interpolate one series "
                "per row of y0."
            )
        lo, hi = float(path.knots[0]), float(path.knots[-1])
        slack = 1e-9 * (hi - lo)
        first, last = float(ts.min()), float(ts.max())
        if first < lo - slack or last > hi + slack:
            raise InvalidArgumentError(
                f"CDEProblem: ts runs from {float(ts[0]):g} to {float(ts[-1]):g} but the path is "
                f"defined on its knots [{lo:g}, {hi:g}]; keep the output times inside the "
                "observation times."
            )
        self.f = f
        self.path = path
        self.y0 = y0
        self.ts = probe.ts
        self.params = collect_params("CDEProblem", (f,), params)
        self.direction = probe.direction


def controlled_ode(problem: CDEProblem) -> ODEProblem:
    """dy/dt = f(t, y) · dX/dt; the breakpoints of X inside the output times are jump times."""
    path, f = problem.path, problem.f
    channels = path.shape[-1]
    # At a breakpoint the solver ends a step (and evaluates there) arriving from the previous
    # piece in its direction of travel: increasing times arrive from the left.
    side = "left" if problem.direction > 0 else "right"

    def first(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        matrix = f(t, y)
        expected = (*y.shape, channels)  # y, not y0: an augmentation may have widened it
        if not isinstance(matrix, torch.Tensor) or tuple(matrix.shape) != expected:
            got = tuple(matrix.shape) if isinstance(matrix, torch.Tensor) else type(matrix).__name__
            raise InvalidArgumentError(
                f"controlled(CDEProblem): f(t, y) returned {got}; it must return the matrix "
                f"(*y.shape, channels) = {expected} that multiplies dX/dt (channels = "
                f"{channels}, the path's last dim), e.g. a network's output .view(*y.shape, {channels})."
            )
        slope = path.derivative(t, side)
        if slope.dtype != matrix.dtype:
            raise InvalidArgumentError(
                f"controlled(CDEProblem): the path is {slope.dtype} but f returns {matrix.dtype}; "
                f"interpolate data of the model's dtype (values.to({matrix.dtype}))."
            )
        field.call = fast
        return (matrix @ slope.unsqueeze(-1)).squeeze(-1)

    def fast(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (f(t, y) @ path.derivative(t, side).unsqueeze(-1)).squeeze(-1)

    def field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return field.call(t, y)

    field.call = first  # type: ignore[attr-defined]
    lo, hi = sorted((float(problem.ts[0]), float(problem.ts[-1])))
    # Where the solver stops is not differentiated (ODEProblem refuses jump times that require
    # grad), even when the knot times are.
    inside = path.breakpoints.detach()
    inside = inside[(inside > lo) & (inside < hi)]
    return odeplug.ODEProblem(field, problem.y0, problem.ts, params=problem.params, jump_times=inside)
