"""Hypothesis strategies for testing odeplug plugins (``from odeplug.testing import strategies``).

Problems with known solutions (linear systems solved by the matrix exponential, scalar
exponentials, harmonic oscillators) in both time directions, with tensor or tuple states, in
float32 and float64; output grids; tolerances; fields that read parameters, closures and
tensors computed from parameters; and the layouts of flat states (plain, tuple, adjoint) with
scaled error vectors for norms.
"""

from ._layouts import (
    FLOAT_DTYPES,
    adjoint_layouts,
    block_shapes,
    float_dtypes,
    integral_mask,
    layouts,
    layouts_and_errors,
    mixed_role_layouts,
    scaled_errors,
    signed_magnitudes,
    state_layouts,
    tuple_state_layouts,
)
from ._strategies import (
    KnownSolution,
    Linear,
    MLPField,
    TupleMLPField,
    harmonic_oscillators,
    known_solutions,
    linear_systems,
    mlp_problems,
    scalar_exponentials,
    time_grids,
    tolerances,
)

__all__ = [
    # problems and fields
    "KnownSolution", "known_solutions", "linear_systems", "scalar_exponentials",
    "harmonic_oscillators", "mlp_problems", "Linear", "MLPField", "TupleMLPField",
    # grids and tolerances
    "time_grids", "tolerances",
    # layouts and scaled errors
    "FLOAT_DTYPES", "float_dtypes", "block_shapes", "state_layouts", "tuple_state_layouts",
    "adjoint_layouts", "mixed_role_layouts", "layouts", "integral_mask", "signed_magnitudes",
    "scaled_errors", "layouts_and_errors",
]
