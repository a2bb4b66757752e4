"""An explicit Runge–Kutta method as data: a Butcher tableau, its orders, its dense output.

The one Runge–Kutta algorithm (``_stepper.py``) reads these numbers; adding a method means adding
a tableau, not code (the approach of diffrax's ``_solver/`` and of Hairer, Nørsett & Wanner,
*Solving ODEs I*, sec. II.1).

Dense output is stored in one form for every method: weights polynomial in θ ∈ [0, 1],

    y(t0 + θh) = y0 + h Σ_i b_i(θ) k_i,   b_i(θ) = Σ_j P[i, j] θ^(j+1),

so that evaluating it is one small matrix product. Methods whose published interpolant is a
Hermite fit (Dopri5's quartic through Shampine's midpoint, a cubic Hermite) are converted into
that form by :func:`hermite_dense_output` when the tableau is built.
"""

from __future__ import annotations

import functools

from collections.abc import Sequence

import attrs
import torch

__all__ = ["ButcherTableau", "end_slope_hermite_dense_output", "hermite_dense_output", "linear_dense_output"]


@attrs.frozen
class ButcherTableau:
    """``c``, ``a`` (strictly lower triangular rows), ``b``; ``b_error = b − b̂`` for an embedded
    pair (None for fixed-step methods); ``order`` of ``b``; ``dense`` the P matrix above;
    ``fsal``: the last stage is F(t1, y1), reused as the next step's first stage."""

    name: str
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    order: int
    dense: tuple[tuple[float, ...], ...]
    b_error: tuple[float, ...] | None = None
    fsal: bool = False
    #: The dense output also uses F(t1, y1), appended to the stages as one more row: a free
    #: slope for fixed-step and non-FSAL methods, whose next step evaluates it as its first stage
    #: anyway (e.g. Hermite interpolation for a pair without a dense output of its own).
    dense_uses_f1: bool = False
    #: Order of the dense output as a continuous extension; None: ``order − 1``.
    dense_order: int | None = None

    def __attrs_post_init__(self) -> None:
        s = len(self.c)
        if len(self.a) != s or any(len(row) != i for i, row in enumerate(self.a)):
            raise ValueError(f"{self.name}: a must have {s} rows, row i holding i entries")
        rows = s + 1 if self.dense_uses_f1 else s
        if len(self.b) != s or len(self.dense) != rows:
            raise ValueError(f"{self.name}: b needs one entry per stage and dense {rows} rows")
        for i, row in enumerate(self.a):
            if abs(sum(row) - self.c[i]) > 1e-12:
                raise ValueError(f"{self.name}: row {i} of a does not sum to c[{i}]")
        if self.fsal and (tuple(self.a[-1]) + (0.0,) != tuple(self.b) or self.c[-1] != 1.0):
            raise ValueError(f"{self.name}: an FSAL tableau's last row of a must equal b")

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def adaptive(self) -> bool:
        return self.b_error is not None

    @property
    def real_stability_limit(self) -> float:
        """The length x of the negative real axis where the method is stable: |R(−s)| ≤ 1 for
        s ∈ [0, x], R(z) = 1 + z bᵀ(I − zA)⁻¹𝟙 its stability function (Hairer & Wanner,
        *Solving ODEs II*, sec. IV.2; Dopri5: 3.31). A step with h·ρ above it, ρ the field's
        stiffest rate, is stable only by luck: the stiffness test compares against it."""
        return _real_stability_limit(self)

    def tensors(self, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
        """The coefficients as tensors, built once per tableau, dtype and device (shared by
        every solve, which only reads them): ``a``, ``b``, ``c``, ``dense`` (and ``b_error``),
        ``dense_exponents`` 1, …, degree for evaluating the dense output's polynomials, and
        ``stage_gaps`` (2, s) for the stiffness estimate."""
        return _tensors(self, dtype, device)

    def _build_tensors(self, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
        s = self.stages
        a = torch.zeros(s, s, dtype=torch.float64)
        for i, row in enumerate(self.a):
            if row:
                a[i, : len(row)] = torch.tensor(row, dtype=torch.float64)
        out = {
            "a": a,
            "b": torch.tensor(self.b, dtype=torch.float64),
            "c": torch.tensor(self.c, dtype=torch.float64),
            "dense": torch.tensor(self.dense, dtype=torch.float64),
            "dense_exponents": torch.arange(1, len(self.dense[0]) + 1, dtype=torch.float64),
        }
        if self.b_error is not None:
            out["b_error"] = torch.tensor(self.b_error, dtype=torch.float64)
        if s >= 2:
            # The stiffness estimate's rows: a_s − a_(s−1), the gap between the last two stage
            # inputs (over h), and (0, …, −1, 1), the gap between their slopes.
            slopes = torch.zeros(s, dtype=torch.float64)
            slopes[-2:] = torch.tensor([-1.0, 1.0], dtype=torch.float64)
            out["stage_gaps"] = torch.stack([a[-1] - a[-2], slopes])
        return {k: v.to(dtype=dtype, device=device) for k, v in out.items()}


@functools.lru_cache(maxsize=64)
def _real_stability_limit(tableau: ButcherTableau) -> float:
    # R(z) on a fine grid of z = −s, by the stage recursion g_i = 1 + z Σ_j a_ij g_j (explicit).
    s = torch.arange(0, 40, 1e-3, dtype=torch.float64)
    z = -s
    g: list[torch.Tensor] = []
    for row in tableau.a:
        g.append(1 + z * sum((aij * gj for aij, gj in zip(row, g)), torch.zeros_like(z)))
    r = 1 + z * sum(bi * gi for bi, gi in zip(tableau.b, g))
    unstable = (r.abs() > 1 + 1e-12).nonzero()
    return float(s[unstable[0, 0] - 1]) if unstable.numel() else float(s[-1])


@functools.lru_cache(maxsize=256)
def _tensors(tableau: ButcherTableau, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    return tableau._build_tensors(dtype, device)


def hermite_dense_output(
    b: Sequence[float], midpoint: Sequence[float] | None, last_stage_is_f1: bool
) -> tuple[tuple[float, ...], ...]:
    """P for the polynomial through y0, y1 (= y0 + hΣb_i k_i), y(½) (= y0 + hΣm_i k_i, if given)
    with slopes f0 = k_1 and f1 = k_s: quartic with a midpoint, cubic without.

    The interpolant is linear in the stages, so it is exactly a dense output in P form; we solve
    for the Hermite basis numerically in float64.
    """
    if not last_stage_is_f1:
        raise ValueError("a Hermite dense output needs f(t1, y1) as the last stage (FSAL)")
    s = len(b)
    degree = 4 if midpoint is not None else 3
    # Conditions on q(θ) = Σ_j q_j θ^(j+1) (q(0) = 0 built in): q(1), q'(0), q'(1) [, q(½)].
    rows = [
        [1.0] * degree,
        [1.0] + [0.0] * (degree - 1),
        [float(j + 1) for j in range(degree)],
    ]
    if midpoint is not None:
        rows.append([0.5 ** (j + 1) for j in range(degree)])
    system = torch.tensor(rows, dtype=torch.float64)
    # Right-hand sides, one column per stage: the contribution of k_i to each condition.
    rhs = torch.zeros(degree, s, dtype=torch.float64)
    rhs[0] = torch.tensor(b, dtype=torch.float64)
    rhs[1, 0] = 1.0
    rhs[2, s - 1] = 1.0
    if midpoint is not None:
        rhs[3] = torch.tensor(midpoint, dtype=torch.float64)
    coefficients = torch.linalg.solve(system, rhs)  # (degree, s)
    return tuple(tuple(float(v) for v in coefficients[:, i]) for i in range(s))


def linear_dense_output(b: Sequence[float]) -> tuple[tuple[float, ...], ...]:
    """P for linear interpolation between y0 and y1: b_i(θ) = θ b_i."""
    return tuple((float(bi),) for bi in b)


def end_slope_hermite_dense_output(b: Sequence[float]) -> tuple[tuple[float, ...], ...]:
    """P for the cubic Hermite through (y0, k_1) and (y1, F(t1, y1)), with F(t1, y1) appended as
    an extra row after the stages (``dense_uses_f1=True``). Fourth-order accurate in value:
    enough for any method up to order 3, and for RK4 an O(h⁴) interpolant instead of O(h²)."""
    return hermite_dense_output(tuple(b) + (0.0,), None, last_stage_is_f1=True)
