"""A Wiener approximation: Brownian motion as Wiener's Fourier-sine series, truncated."""

import math

import attrs
import torch

import odeplug as op
from odeplug_sde import WienerPath


def _non_negative_int(instance, attribute, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise op.InvalidOptionError(
            f"FourierSine: terms must be a non-negative int (sine terms after the linear one), "
            f"got {value!r}."
        )


@op.configuration
class FourierSine(op.WienerApproximation):
    """On [t0, t1], c = t1 − t0, s = (t − t0)/c:

        B(t) = √|c| (ξ_0 s + Σ_{k=1..m} ξ_k √2 sin(kπs) / (kπ)),   ξ_k ~ N(0, I),

    a straight line plus a Brownian bridge by its sine series (Wiener 1923; Lévy). Var B(t) =
    |c| (s² + Σ 2 sin²(kπs)/(kπ)²) → |c| s as m → ∞. ``terms`` = m; smooth for every m."""

    positional_options = ("terms",)

    terms: int = attrs.field(default=10, validator=_non_negative_int)


@op.final
class FourierSinePath(WienerPath):
    """One sample of :class:`FourierSine`: the ξ (``terms + 1`` × noise shape) drawn once."""

    __slots__ = ("xi", "shape", "t0", "t1", "_frequency", "_value_coef", "_derivative_coef")

    def __init__(self, xi, t0, t1):
        self.xi = xi
        self.shape = tuple(xi.shape[1:])
        self.t0, self.t1 = float(t0), float(t1)
        c = self.t1 - self.t0
        k = torch.arange(xi.shape[0], dtype=torch.float64, device=xi.device)
        self._frequency = k * math.pi / c  # phase per unit time
        flat = xi.reshape(xi.shape[0], -1).to(torch.float64)
        # Term 0 is the line; the clamp only keeps its unused 1/(0·π) finite.
        amplitude = torch.where(k == 0, 1.0, math.sqrt(2.0) / (k * math.pi).clamp_min(1e-300))
        self._value_coef = (math.sqrt(abs(c)) * amplitude)[:, None] * flat
        rate = torch.where(k == 0, 1 / c, self._frequency)  # d/dt of s, and of kπs
        self._derivative_coef = self._value_coef * rate[:, None]

    def _phase(self, t):
        """Each term's phase at t (term 0's unused), and t, in float64."""
        t = torch.as_tensor(t, device=self.xi.device).to(torch.float64)
        return (t - self.t0).unsqueeze(-1) * self._frequency, t

    def value(self, t):
        """B(t), shape ``(*t.shape, *shape)``; differentiable in t."""
        phase, t = self._phase(t)
        s = ((t - self.t0) / (self.t1 - self.t0)).unsqueeze(-1)
        basis = torch.cat([s, torch.sin(phase[..., 1:])], dim=-1)
        out = (basis @ self._value_coef).to(self.xi.dtype)
        return out.reshape(*phase.shape[:-1], *self.shape)

    def derivative(self, t):
        """dB/dt, shape ``(*t.shape, *shape)``; differentiable in t."""
        phase, _ = self._phase(t)
        basis = torch.cat([torch.ones_like(phase[..., :1]), torch.cos(phase[..., 1:])], dim=-1)
        out = (basis @ self._derivative_coef).to(self.xi.dtype)
        return out.reshape(*phase.shape[:-1], *self.shape)

    def __repr__(self):
        return (f"FourierSinePath(terms={self.xi.shape[0] - 1}, shape={self.shape}, "
                f"t0={self.t0:g}, t1={self.t1:g})")


def sample_fourier_sine(approximation, like, t0, t1, generator=None):
    """Draw ξ from ``generator`` (fresh entropy if None, never the global generator)."""
    if float(t0) == float(t1):
        raise op.InvalidArgumentError(
            f"sample(FourierSine, ...): t0 and t1 must differ (the interval the path covers), "
            f"got {t0!r} twice."
        )
    if generator is None:
        generator = torch.Generator(device=like.device)
        generator.seed()
    xi = torch.randn((approximation.terms + 1, *like.shape), generator=generator,
                     dtype=like.dtype, device=generator.device)
    return FourierSinePath(xi.to(like.device), t0, t1)


def register():
    @op.register
    def sample(approximation: FourierSine, like: torch.Tensor, t0, t1, *, generator=None):
        return sample_fourier_sine(approximation, like, t0, t1, generator)

    op.export(FourierSine, FourierSinePath)
