"""Implicit Runge–Kutta methods as data: ESDIRK tableaus (Kværnø) and the Radau IIA facts.

An ESDIRK method (explicit first stage, singly diagonally implicit) has a lower-triangular
Butcher matrix ``a`` with ``a[0][0] = 0`` and the same ``γ`` on every other diagonal entry, so a
step solves one n-dimensional nonlinear system per stage,

    Y_i = y0 + h Σ_{j<i} a_ij k_j + h γ F(t0 + c_i h, Y_i),    k_i = F(t0 + c_i h, Y_i),

all with the same Newton matrix I − hγJ. Kværnø's methods are *stiffly accurate* (``b`` is the
last row of ``a``, so y1 = Y_s) and embed a method of one order less whose solution is the
second-to-last stage (``b̂`` is the row s − 1 of ``a``): the error estimate h Σ (b_i − b̂_i) k_i
costs nothing. Reference: A. Kværnø, "Singly diagonally implicit Runge–Kutta methods with an
explicit first stage", BIT Numer. Math. 44 (2004) 489–502. The coefficients below are the
paper's, written in terms of γ where the paper gives formulas (Kvaerno3, Kvaerno4) and as the
published decimals where it gives numbers (Kvaerno5).

Radau IIA of order 5 (3 stages, collocation at the Radau points c = (4 − √6)/10, (4 + √6)/10,
1): Hairer & Wanner, *Solving ODEs II*, sec. IV.5 (Table 5.6) and IV.8 (the RADAU5 code, its
error estimate and its step control).
"""

from __future__ import annotations

import functools
import math

import attrs
import torch

from odeplug import final

__all__ = ["ESDIRKTableau", "KVAERNO3", "KVAERNO4", "KVAERNO5", "RadauIIA", "RADAU_IIA5"]


@final
@attrs.frozen
class ESDIRKTableau:
    """An ESDIRK method: ``a`` (row i holds a_i0 … a_ii, the diagonal entry γ from row 1 on),
    ``c``, the solution ``order`` and the embedded method's ``embedded_order``. ``b`` is the last
    row of ``a`` and ``b̂`` the row before it (stiffly accurate, embedded in the stages)."""

    name: str
    gamma: float
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    order: int
    embedded_order: int

    def __attrs_post_init__(self) -> None:
        s = len(self.c)
        if len(self.a) != s or any(len(row) != i + 1 for i, row in enumerate(self.a)):
            raise ValueError(f"{self.name}: a must have {s} rows, row i holding i + 1 entries")
        if self.a[0] != (0.0,) or self.c[0] != 0.0:
            raise ValueError(f"{self.name}: an ESDIRK method's first stage is explicit")
        for i, row in enumerate(self.a):
            if i and row[-1] != self.gamma:
                raise ValueError(f"{self.name}: diagonal entry {i} must be gamma")
            if abs(math.fsum(row) - self.c[i]) > 1e-9:
                raise ValueError(f"{self.name}: row {i} of a does not sum to c[{i}]")
        if self.c[-1] != 1.0:
            raise ValueError(f"{self.name}: a stiffly accurate method ends at c = 1")

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def b_error(self) -> tuple[float, ...]:
        """b − b̂: the last row of ``a`` minus the one before it (padded with its zero)."""
        return tuple(x - y for x, y in zip(self.a[-1], (*self.a[-2], 0.0)))

    def tensors(self, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
        """``a`` (s × s, lower triangular with the diagonal), ``c``, ``b_error``, cached."""
        return _esdirk_tensors(self, dtype, device)


@functools.lru_cache(maxsize=64)
def _esdirk_tensors(tableau: ESDIRKTableau, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    s = tableau.stages
    a = torch.zeros(s, s, dtype=torch.float64)
    for i, row in enumerate(tableau.a):
        a[i, : len(row)] = torch.tensor(row, dtype=torch.float64)
    out = {"a": a, "c": torch.tensor(tableau.c, dtype=torch.float64),
           "b_error": torch.tensor(tableau.b_error, dtype=torch.float64)}
    return {k: v.to(dtype=dtype, device=device) for k, v in out.items()}


def _kvaerno3() -> ESDIRKTableau:
    """Kværnø's 3(2) pair, 4 stages, γ the root of 6γ³ − 18γ² + 9γ − 1 = 0 near 0.4359
    (L-stability), c2 = 2γ."""
    g = 0.43586652150
    a31 = (-4 * g**2 + 6 * g - 1) / (4 * g)
    a32 = (1 - 2 * g) / (4 * g)
    a41 = (6 * g - 1) / (12 * g)
    a42 = -1 / ((24 * g - 12) * g)
    a43 = (-6 * g**2 + 6 * g - 1) / (6 * g - 3)
    return ESDIRKTableau(
        "Kvaerno3", g, (0.0, 2 * g, 1.0, 1.0),
        ((0.0,), (g, g), (a31, a32, g), (a41, a42, a43, g)), order=3, embedded_order=2,
    )


def _kvaerno4() -> ESDIRKTableau:
    """Kværnø's 4(3) pair, 5 stages, γ = 0.5728160625 (the 4/3 variant: the solution is the
    last, fourth-order stage)."""
    g = 0.5728160625

    def p(*coefficients: float) -> float:  # a polynomial in γ, highest power first
        value = 0.0
        for coefficient in coefficients:
            value = value * g + coefficient
        return value

    a31 = p(144, -180, 81, -15, 1) * g / p(12, -6, 1) ** 2
    a32 = p(-36, 39, -15, 2) * g / p(12, -6, 1) ** 2
    a41 = p(-144, 396, -330, 117, -18, 1) / (12 * g**2 * p(12, -9, 2))
    a42 = p(72, -126, 69, -15, 1) / (12 * g**2 * p(3, -1))
    a43 = p(-6, 6, -1) * p(12, -6, 1) ** 2 / (12 * g**2 * p(12, -9, 2) * p(3, -1))
    a51 = p(288, -312, 120, -18, 1) / (48 * g**2 * p(12, -9, 2))
    a52 = p(24, -12, 1) / (48 * g**2 * p(3, -1))
    a53 = -p(12, -6, 1) ** 3 / (48 * g**2 * p(3, -1) * p(12, -9, 2) * p(6, -6, 1))
    a54 = p(-24, 36, -12, 1) / p(24, -24, 4)
    c3 = g + a31 + a32
    # Rows 3 and 4 sum to 1 up to the rounding of the published γ; c is set from the rows.
    rows = ((0.0,), (g, g), (a31, a32, g), (a41, a42, a43, g), (a51, a52, a53, a54, g))
    c = (0.0, 2 * g, c3, _one(rows[3]), _one(rows[4]))
    return ESDIRKTableau("Kvaerno4", g, c, rows, order=4, embedded_order=3)


def _one(row: tuple[float, ...]) -> float:
    """1.0 for a row that sums to one up to rounding (the stage is at the step's end)."""
    total = math.fsum(row)
    if abs(total - 1.0) > 1e-9:
        raise ValueError(f"row sums to {total}, expected 1")
    return 1.0


def _kvaerno5() -> ESDIRKTableau:
    """Kværnø's 5(4) pair, 7 stages, γ = 0.26 (the paper's decimals)."""
    g = 0.26
    rows = (
        (0.0,),
        (g, g),
        (0.13, 0.84033320996790809, g),
        (0.22371961478320505, 0.47675532319799699, -0.06470895363112615, g),
        (0.16648564323248321, 0.10450018841591720, 0.03631482272098715, -0.13090704451073998, g),
        (0.13855640231268224, 0.0, -0.04245337201752043, 0.02446657898003141, 0.61943039072480676, g),
        (0.13659751177640291, 0.0, -0.05496908796538376, -0.04118626728321046, 0.62993304899016403,
         0.06962479448202728, g),
    )
    c = (0.0, 0.52, 1.230333209967908, 0.8957659843500759, 0.43639360985864756, 1.0, 1.0)
    return ESDIRKTableau("Kvaerno5", g, c, rows, order=5, embedded_order=4)


KVAERNO3 = _kvaerno3()
KVAERNO4 = _kvaerno4()
KVAERNO5 = _kvaerno5()


@final
@attrs.frozen
class RadauIIA:
    """The 3-stage Radau IIA collocation method (order 5) and what RADAU5 builds on it.

    ``a`` the Butcher matrix (b its last row: stiffly accurate), ``c`` the Radau points,
    ``error_weights`` e with the embedded error estimate (Hairer & Wanner IV.8, (8.19)-(8.20))

        err = (I − hγ₀J)⁻¹ [hγ₀ F(t0, y0) + γ₀ Σ_j e_j Z_j],   γ₀ = 1/μ,

    μ = 3 + 3^(2/3) − 3^(1/3) the real eigenvalue of a⁻¹, Z_j = Y_j − y0; the estimate is of
    order 3, so step sizes scale with err^(−1/4). ``dense``: the collocation polynomial
    u(t0 + θh) = y0 + Σ_j (Σ_p dense[j, p] θ^(p+1)) Z_j through (0, y0) and (c_j, Y_j)."""

    name: str = "RadauIIA5"
    order: int = 5

    @property
    def c(self) -> tuple[float, ...]:
        r6 = math.sqrt(6.0)
        return ((4 - r6) / 10, (4 + r6) / 10, 1.0)

    @property
    def a(self) -> tuple[tuple[float, ...], ...]:
        r6 = math.sqrt(6.0)
        return (
            ((88 - 7 * r6) / 360, (296 - 169 * r6) / 1800, (-2 + 3 * r6) / 225),
            ((296 + 169 * r6) / 1800, (88 + 7 * r6) / 360, (-2 - 3 * r6) / 225),
            ((16 - r6) / 36, (16 + r6) / 36, 1 / 9),
        )

    @property
    def mu(self) -> float:
        return 3 + 3 ** (2 / 3) - 3 ** (1 / 3)

    @property
    def error_weights(self) -> tuple[float, ...]:
        r6 = math.sqrt(6.0)
        return ((-13 - 7 * r6) / 3, (-13 + 7 * r6) / 3, -1 / 3)

    def tensors(self, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
        return _radau_tensors(self, dtype, device)


@functools.lru_cache(maxsize=16)
def _radau_tensors(method: RadauIIA, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    c = torch.tensor(method.c, dtype=torch.float64)
    # dense[j, p]: u(θ) − y0 = Σ_j ℓ_j(θ) Z_j with ℓ_j(θ) = Σ_p dense[j, p] θ^(p+1), ℓ_j(c_i) = δ_ij.
    powers = torch.stack([c ** (p + 1) for p in range(3)], dim=1)  # (node i, power p)
    dense = torch.linalg.solve(powers, torch.eye(3, dtype=torch.float64)).t()  # (j, p)
    out = {"a": torch.tensor(method.a, dtype=torch.float64), "c": c,
           "e": torch.tensor(method.error_weights, dtype=torch.float64), "dense": dense,
           "dense_exponents": torch.arange(1, 4, dtype=torch.float64)}
    return {k: v.to(dtype=dtype, device=device) for k, v in out.items()}


RADAU_IIA5 = RadauIIA()
