"""A quadrature: the n-point Clenshaw–Curtis rule, nodes at the Chebyshev extrema."""

import numpy as np
import torch

import odeplug as op


@op.configuration
class ClenshawCurtis(op.Quadrature):
    """Nodes cos(kπ/N), N = n − 1 (the midpoint for n = 1), weights integrating every
    polynomial of degree ≤ N exactly; by symmetry also degree N + 1 when N is even (Clenshaw &
    Curtis, Numer. Math. 2, 1960)."""


def clenshaw_curtis(n):
    """Float64 ``(nodes, weights)`` of the n-point rule, nodes increasing.

    The weights in closed form (Trefethen, SIAM Review 50, 2008, eq. (2.5)): for N = n − 1,
    w_k = (c_k / N)(1 − Σ_{j=1..⌊N/2⌋} b_j cos(2jkπ/N) / (4j² − 1)), c_k = 1 at the ends and 2
    inside, b_j = 1 for j = N/2 and 2 otherwise — no linear system, stable for any n.
    """
    if n < 1:
        raise op.InvalidArgumentError(f"ClenshawCurtis needs n >= 1 nodes, got n={n}.")
    if n == 1:
        return torch.zeros(1, dtype=torch.float64), torch.full((1,), 2.0, dtype=torch.float64)
    N = n - 1
    k = np.arange(n)
    j = np.arange(1, N // 2 + 1)
    b = np.where(2 * j == N, 1.0, 2.0)
    sums = (b / (4 * j**2 - 1) * np.cos(2 * np.outer(k, j) * np.pi / N)).sum(axis=1)
    ends = np.where((k == 0) | (k == N), 1.0, 2.0)
    weights = ends / N * (1 - sums)
    nodes = -np.cos(k * np.pi / N)  # increasing
    return torch.from_numpy(nodes), torch.from_numpy(weights)


def register():
    @op.register
    def quadrature(rule: ClenshawCurtis, n: int):
        return clenshaw_curtis(int(n))

    @op.register
    def exact_degree(rule: ClenshawCurtis, n: int):
        n = int(n)
        return n if n % 2 == 1 else n - 1

    op.export(ClenshawCurtis)
