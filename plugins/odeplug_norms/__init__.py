"""odeplug's built-in norms for step-size control.

All take the flat scaled error ``x = err / (atol + rtol·|y|)`` and the state's :class:`Layout`:

- :class:`RMSNorm`: sqrt(mean(x²)) over every element;
- :class:`MaxNorm`: max |x|;
- :class:`MixedNorm`: RMS per block, then the max over blocks (torchdiffeq's default; plain RMS
  for a single tensor). The default of every solver;
- :class:`Seminorm`: its ``base`` norm over the blocks that feed back into the dynamics only,
  ignoring blocks the layout marks ``role="integral"`` (the adjoint's a_θ and a_t). Kidger, Chen &
  Lyons, "Hey, that's not an ODE: Faster ODE Adjoints via Seminorms", ICML 2021, sec. 2.2.
"""

from __future__ import annotations

import attrs
import torch

import odeplug
from odeplug import Layout, Norm, configuration

__all__ = ["RMSNorm", "MaxNorm", "MixedNorm", "Seminorm", "register"]


@configuration
class RMSNorm(Norm):
    """‖x‖ = sqrt(mean_i x_i²) over the whole flat state."""


@configuration
class MaxNorm(Norm):
    """‖x‖ = max_i |x_i|."""


@configuration
class MixedNorm(Norm):
    """‖x‖ = max over blocks b of sqrt(mean_{i∈b} x_i²) (torchdiffeq's default norm)."""


def _base_norm(instance, attribute, value):
    if not isinstance(value, Norm) or isinstance(value, Seminorm):
        raise odeplug.InvalidOptionError(
            f"Seminorm: base must be a (non-semi) odeplug.Norm instance such as RMSNorm(), got {value!r}."
        )


@configuration
class Seminorm(Norm):
    """``base`` applied to the ``state`` blocks only; blocks with ``role="integral"`` are ignored.

    On a layout with no integral blocks it equals ``base``. In the adjoint's backward solve this
    drops a_θ and a_t, whose errors never feed back into the dynamics, so fewer steps are rejected
    (Kidger, Chen & Lyons, ICML 2021: 40% fewer backward evaluations at the median).
    """

    base: Norm = attrs.field(factory=RMSNorm, validator=_base_norm)


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.abs().pow(2).mean().sqrt()


def register() -> None:
    """The plugin's hook."""

    @odeplug.register
    def norm(n: RMSNorm, x: torch.Tensor, layout: Layout):
        return _rms(x)

    @odeplug.register
    def norm(n: MaxNorm, x: torch.Tensor, layout: Layout):  # noqa: F811
        return x.abs().max()

    @odeplug.register
    def norm(n: MixedNorm, x: torch.Tensor, layout: Layout):  # noqa: F811
        if len(layout.blocks) == 1:
            return _rms(x)
        ids = layout.block_ids(x.device)
        sums = torch.zeros(len(layout.blocks), dtype=x.dtype, device=x.device)
        sums = sums.index_add(0, ids, x.abs().pow(2))
        sizes = torch.tensor(layout.sizes, dtype=x.dtype, device=x.device)
        return (sums / sizes).max().sqrt()

    @odeplug.register
    def norm(n: Seminorm, x: torch.Tensor, layout: Layout):  # noqa: F811
        if not layout.has_integral_blocks:
            return odeplug.norm(n.base, x, layout)
        kept, selector = layout.state_part()
        if not kept.blocks:  # nothing feeds back: no error to control
            return x.new_zeros(())
        return odeplug.norm(n.base, x[selector], kept)

    @odeplug.register
    def bind_norm(n: Seminorm, like: torch.Tensor, layout: Layout):
        # The base norm bound once for the state blocks: no dispatch in the steps.
        if not layout.has_integral_blocks:
            return odeplug.bind_norm(n.base, like, layout)
        kept, selector = layout.state_part()
        if not kept.blocks:
            return _no_error
        base = odeplug.bind_norm(n.base, like[selector], kept)
        return lambda x: base(x[selector])

    odeplug.export(RMSNorm, MaxNorm, MixedNorm, Seminorm)


def _no_error(x: torch.Tensor) -> torch.Tensor:
    """The seminorm of a state with nothing that feeds back: no error to control."""
    return x.new_zeros(())
