"""A norm: the RMS of the scaled error with the integral blocks weighted down."""

import attrs
import torch

import odeplug as op


def _weight_in_unit_interval(instance, attribute, value):
    if not 0.0 <= value <= 1.0:
        raise op.InvalidOptionError(
            f"WeightedRMSNorm: integral_weight must lie in [0, 1] (1 is RMSNorm, 0 ignores the "
            f"integral blocks), got {value!r}."
        )


@op.configuration
class WeightedRMSNorm(op.Norm):
    """‖x‖ = sqrt(Σ_i w_i x_i² / N): w_i = ``integral_weight`` on the blocks whose role is
    "integral" (the adjoint's a_θ and a_t), 1 elsewhere. Between the seminorm of Kidger, Chen &
    Lyons (ICML 2021; weight 0) and plain RMS (weight 1): the backward solve still watches the
    parameter gradients, a little."""

    integral_weight: float = attrs.field(default=0.1, validator=_weight_in_unit_interval)


def register():
    @op.register
    def norm(n: WeightedRMSNorm, x: torch.Tensor, layout: op.Layout):
        if not layout.has_integral_blocks:
            return x.abs().pow(2).mean().sqrt()
        per_block = torch.tensor(
            [n.integral_weight if block.role == "integral" else 1.0 for block in layout.blocks],
            dtype=x.dtype, device=x.device,
        )
        weights = per_block[layout.block_ids(x.device)]
        return (weights * x.abs().pow(2)).mean().sqrt()

    op.export(WeightedRMSNorm)
