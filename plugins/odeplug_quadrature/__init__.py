"""Quadrature rules on [-1, 1] for the quadrature adjoints.

:class:`GaussLegendre`: the n-point Gauss–Legendre rule, exact for polynomials of degree ≤ 2n−1
(Gauss 1814; Golub & Welsch, Math. Comp. 23, 1969), as its ``odeplug.exact_degree`` declares.
Nodes and weights come from numpy's ``leggauss`` (eigenvalues of the Jacobi matrix refined by
Newton steps, accurate to float64 round-off for n in the hundreds) and are cached per n, and per
(n, dtype, device) as tensors.

Other rules are added by users through the public API: subclass :class:`odeplug.Quadrature` and
register ``quadrature(rule, n)``; docs/methods/quadrature.md shows Clenshaw–Curtis in full.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

import odeplug
from odeplug import Quadrature, configuration

__all__ = ["GaussLegendre", "register"]


@configuration
class GaussLegendre(Quadrature):
    """n-point Gauss–Legendre: ∫_{-1}^{1} g(x) dx ≈ Σ_j w_j g(x_j), exact for degree ≤ 2n−1."""


@functools.lru_cache(maxsize=512)
def _gauss_legendre(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    if n < 1:
        raise odeplug.InvalidArgumentError(f"GaussLegendre: n must be >= 1, got {n}.")
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return torch.from_numpy(nodes.copy()), torch.from_numpy(weights.copy())


def register() -> None:
    """The plugin's hook."""

    @odeplug.register
    def quadrature(rule: GaussLegendre, n: int):
        return _gauss_legendre(int(n))

    @odeplug.register
    def exact_degree(rule: GaussLegendre, n: int):
        # n nodes and n weights fit the 2n moments ∫x^k, k < 2n; no n-point rule is exact for
        # ∏(x − x_j)², of degree 2n, positive, and zero at every node.
        return 2 * int(n) - 1

    odeplug.export(GaussLegendre)
