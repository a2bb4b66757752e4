"""Continuous paths through discrete observations, to drive controlled differential equations.

Kidger, Morrill, Foster & Lyons, "Neural Controlled Differential Equations for Irregular Time
Series", NeurIPS 2020, section 3: a (possibly irregularly sampled) series of observations
x_0, …, x_{n-1} at times t_0 < … < t_{n-1} becomes a path X: [t_0, t_{n-1}] → R^channels with
X(t_i) = (t_i, x_i), time being its first channel (so the path always moves, and the model sees
how much time passed). Conventions follow torchcde's: observations are ``(..., length,
channels)``, one time grid shared by the batch.
"""

from __future__ import annotations

import abc

import attrs
import torch

from odeplug import InvalidArgumentError, configuration, final
from odeplug._nouns import Noun  # the abstract root (not re-exported by the core)

__all__ = [
    "Interpolation", "NaturalCubicSpline", "LinearInterpolation", "ControlPath",
    "PiecewisePolynomialPath", "natural_cubic_spline", "linear_interpolation",
]


class Interpolation(Noun):
    """Abstract: a scheme that turns observations into a :class:`ControlPath`.

    1. Subclass ``Interpolation`` with a :func:`odeplug.configuration` class; 2. register
    :func:`odeplug.interpolate` for ``(YourScheme, torch.Tensor, torch.Tensor)`` returning a
    ControlPath.
    """

    __slots__ = ()


@configuration
class NaturalCubicSpline(Interpolation):
    """The natural cubic spline through the observations: cubic on every segment, twice
    continuously differentiable, with zero second derivative at the first and last knot.

    Its derivative is continuous, so the CDE it drives has no kinks (no jump times).

    Options:
        time_channel: prepend t as channel 0 of the path (Kidger et al. 2020, section 3.1).
    """

    time_channel: bool = True


@configuration
class LinearInterpolation(Interpolation):
    """The piecewise-linear path through the observations. Its derivative jumps at every knot,
    so the CDE it drives passes the interior knots to the solver as jump times.

    Options:
        time_channel: prepend t as channel 0 of the path (Kidger et al. 2020, section 3.1).
    """

    time_channel: bool = True


class ControlPath(Noun):
    """Abstract: a path X(t) through data, what :func:`odeplug.interpolate` returns and a
    :class:`CDEProblem` is driven by. A subclass (final) provides:

    - ``shape``: the shape of X(t), ``(*batch, channels)``;
    - ``knots``: the increasing 1-D tensor of knot times; X is defined on [knots[0], knots[-1]];
    - ``breakpoints``: the times strictly inside where dX/dt is discontinuous (a 1-D tensor,
      maybe empty);
    - ``value(t)`` and ``derivative(t, side=...)``, shape ``(*batch, channels)`` for a 0-d
      ``t`` and ``(*batch, len(t), channels)`` for a 1-D one, differentiable in t and in the data.
      At a breakpoint, ``side="left"`` gives the derivative of the piece ending there and
      ``side="right"`` that of the piece starting there.
    """

    __slots__ = ()
    shape: tuple[int, ...]
    knots: torch.Tensor
    breakpoints: torch.Tensor

    @abc.abstractmethod
    def value(self, t: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def derivative(self, t: torch.Tensor, side: str = "left") -> torch.Tensor: ...


@final
class PiecewisePolynomialPath(ControlPath):
    """X(t) = Σ_k c_{i,k} (t − t_i)^k on the i-th segment [t_i, t_{i+1}].

    ``coefficients`` has shape ``(*batch, segments, channels, degree + 1)``, lowest power first.
    Beyond the knots the first and last pieces extend the path.
    """

    __slots__ = ("coefficients", "knots", "breakpoints", "shape", "_lookup", "_slopes")

    def __init__(self, coefficients: torch.Tensor, knots: torch.Tensor, breakpoints: torch.Tensor):
        self.coefficients = coefficients
        self.knots = knots
        self.breakpoints = breakpoints
        self.shape = (*coefficients.shape[:-3], coefficients.shape[-2])
        # Segment lookup and offsets in float64: the solver's times are float64, and a float32
        # knot compared in float32 could put a time in the wrong segment.
        self._lookup = knots.to(torch.promote_types(knots.dtype, torch.float64))
        powers = torch.arange(1, coefficients.shape[-1], dtype=coefficients.dtype, device=coefficients.device)
        self._slopes = coefficients[..., 1:] * powers

    def _segment(self, t: torch.Tensor, side: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Index of the segment holding each time (flattened), and the offset t − t_i."""
        if side not in ("left", "right"):
            raise InvalidArgumentError(
                f"ControlPath.derivative: side must be 'left' or 'right', got {side!r}."
            )
        if not isinstance(t, torch.Tensor):
            t = torch.tensor(t, dtype=self._lookup.dtype, device=self._lookup.device)
        flat = t.reshape(-1).to(self._lookup.dtype)
        index = torch.searchsorted(self._lookup, flat.detach(), right=side == "right") - 1
        index = index.clamp(0, len(self._lookup) - 2)
        offset = (flat - self._lookup.index_select(0, index)).to(self.coefficients.dtype)
        return index, offset

    def _evaluate(self, coefficients: torch.Tensor, t: torch.Tensor, side: str) -> torch.Tensor:
        index, offset = self._segment(t, side)
        pieces = coefficients.index_select(-3, index)  # (*batch, len(t), channels, degree + 1)
        offset = offset[:, None]
        out = pieces[..., -1]
        for k in range(pieces.shape[-1] - 2, -1, -1):  # Horner
            out = out * offset + pieces[..., k]
        return out.squeeze(-2) if not isinstance(t, torch.Tensor) or t.ndim == 0 else out

    def value(self, t: torch.Tensor) -> torch.Tensor:
        """X(t); continuous, so the side of a knot does not matter."""
        return self._evaluate(self.coefficients, t, "left")

    def derivative(self, t: torch.Tensor, side: str = "left") -> torch.Tensor:
        """dX/dt at t; at a breakpoint, of the piece ending (``"left"``) or starting there."""
        return self._evaluate(self._slopes, t, side)

    def __repr__(self) -> str:
        return (
            f"PiecewisePolynomialPath(degree={self.coefficients.shape[-1] - 1}, shape={self.shape}, "
            f"knots={len(self.knots)}, breakpoints={len(self.breakpoints)})"
        )


def _observations(where: str, scheme: Interpolation, times: torch.Tensor, values: torch.Tensor):
    """Check the data; return (times, values with time as channel 0 if the scheme says so)."""
    if not isinstance(times, torch.Tensor) or times.ndim != 1 or not torch.is_floating_point(times):
        raise InvalidArgumentError(
            f"{where}: times must be a 1-D floating tensor of observation times (one grid shared "
            f"by the batch), got {_describe(times)}."
        )
    if len(times) < 2:
        raise InvalidArgumentError(f"{where}: a path needs at least two observation times, got {len(times)}.")
    if not bool(torch.isfinite(times).all()):
        raise InvalidArgumentError(f"{where}: times contains NaN or infinite values.")
    steps = times[1:] - times[:-1]
    if not bool((steps > 0).all()):
        i = int(torch.nonzero(steps <= 0)[0, 0])
        raise InvalidArgumentError(
            f"{where}: times must be strictly increasing; times[{i}] = {float(times[i])} is "
            f"followed by times[{i + 1}] = {float(times[i + 1])}. Sort the observations: "
            "order = times.argsort(); times, values = times[order], values[..., order, :] "
            "(and merge repeated times)."
        )
    if not isinstance(values, torch.Tensor) or not torch.is_floating_point(values) or values.ndim < 2:
        raise InvalidArgumentError(
            f"{where}: values must be a floating tensor shaped (..., length, channels), time along "
            f"dim -2 as in torchcde, got {_describe(values)}; for one channel use values.unsqueeze(-1)."
        )
    if values.shape[-2] != len(times):
        raise InvalidArgumentError(
            f"{where}: values has {values.shape[-2]} observations along dim -2 (shape "
            f"{tuple(values.shape)}) but times has {len(times)}; values must be shaped "
            "(..., len(times), channels). If time is the last dim, use values.transpose(-1, -2)."
        )
    if values.device != times.device:
        raise InvalidArgumentError(
            f"{where}: values is on {values.device} but times on {times.device}; move one, e.g. "
            "times.to(values.device)."
        )
    missing = ~torch.isfinite(values)
    if bool(missing.any()):
        where_missing = tuple(int(i) for i in torch.nonzero(missing)[0])
        raise InvalidArgumentError(
            f"{where}: values contains NaN or infinite entries (the first at index {where_missing}). "
            "Fill missing observations before interpolating (e.g. carry the last observation "
            "forward) and, if their absence is informative, add a channel counting the "
            "observations made so far."
        )
    if scheme.time_channel:
        clock = times.to(values.dtype)[:, None].expand(*values.shape[:-1], 1)
        values = torch.cat([clock, values], dim=-1)
    return times, values


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


def linear_interpolation(scheme: LinearInterpolation, times: torch.Tensor, values: torch.Tensor) -> PiecewisePolynomialPath:
    """X(t) = x_i + (x_{i+1} − x_i)(t − t_i)/(t_{i+1} − t_i) on [t_i, t_{i+1}]."""
    times, values = _observations("interpolate(LinearInterpolation, times, values)", scheme, times, values)
    widths = (times[1:] - times[:-1]).to(values.dtype)[:, None]
    slopes = (values[..., 1:, :] - values[..., :-1, :]) / widths
    coefficients = torch.stack([values[..., :-1, :], slopes], dim=-1)
    return PiecewisePolynomialPath(coefficients, times, times[1:-1])


def natural_cubic_spline(scheme: NaturalCubicSpline, times: torch.Tensor, values: torch.Tensor) -> PiecewisePolynomialPath:
    """The natural cubic spline: second derivatives M_i at the knots solve, for 0 < i < n − 1,

        h_{i−1} M_{i−1} + 2 (h_{i−1} + h_i) M_i + h_i M_{i+1} = 6 (δ_i − δ_{i−1}),   M_0 = M_{n−1} = 0,

    with h_i = t_{i+1} − t_i and δ_i = (x_{i+1} − x_i)/h_i; then on [t_i, t_{i+1}], s = t − t_i,
    X = x_i + (δ_i − h_i (2M_i + M_{i+1})/6) s + M_i/2 s² + (M_{i+1} − M_i)/(6 h_i) s³.
    """
    times, values = _observations("interpolate(NaturalCubicSpline, times, values)", scheme, times, values)
    h = (times[1:] - times[:-1]).to(values.dtype)
    slopes = (values[..., 1:, :] - values[..., :-1, :]) / h[:, None]
    n = len(times)
    curvature = values.new_zeros(values.shape)
    if n > 2:
        # The system is tridiagonal and strictly diagonally dominant: a dense solve is exact
        # enough, shared by every series and channel, and differentiable in the data.
        system = torch.diag(2 * (h[:-1] + h[1:])) + torch.diag(h[1:-1], 1) + torch.diag(h[1:-1], -1)
        rhs = 6 * (slopes[..., 1:, :] - slopes[..., :-1, :])
        curvature[..., 1:-1, :] = torch.linalg.solve(system, rhs)
    m0, m1 = curvature[..., :-1, :], curvature[..., 1:, :]
    hh = h[:, None]
    coefficients = torch.stack(
        [values[..., :-1, :], slopes - hh * (2 * m0 + m1) / 6, m0 / 2, (m1 - m0) / (6 * hh)], dim=-1
    )
    return PiecewisePolynomialPath(coefficients, times, times[:0])
