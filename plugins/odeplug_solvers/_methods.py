"""The built-in Runge–Kutta methods, as tableaus (published coefficients; references inline)."""

from __future__ import annotations

from ._tableau import ButcherTableau, end_slope_hermite_dense_output, hermite_dense_output

__all__ = ["DOPRI5", "BOSH3", "TSIT5", "EULER", "MIDPOINT", "RK4"]

# Dormand & Prince, "A family of embedded Runge–Kutta formulae", J. Comput. Appl. Math. 6 (1980).
_DOPRI5_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
# The embedded fourth-order weights of Shampine (1986) for this pair (also torchdiffeq's, which
# keeps odeplug's step sequence identical to it).
_DOPRI5_B_HAT = (1951 / 21600, 0.0, 22642 / 50085, 451 / 720, -12231 / 42400, 649 / 6300, 1 / 60)
# Shampine, "Some practical Runge–Kutta formulas", Math. Comp. 46 (1986): a 4th-order accurate
# value at the step's midpoint, y(½) = y0 + h Σ m_i k_i; with y0, y1, f0, f1 it fixes a quartic.
_DOPRI5_MIDPOINT = (
    6025192743 / 30085553152 / 2,
    0.0,
    51252292925 / 65400821598 / 2,
    -2691868925 / 45128329728 / 2,
    187940372067 / 1594534317056 / 2,
    -1776094331 / 19743644256 / 2,
    11237099 / 235043384 / 2,
)

DOPRI5 = ButcherTableau(
    name="Dopri5",
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=(
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
    ),
    b=_DOPRI5_B,
    b_error=tuple(b - bh for b, bh in zip(_DOPRI5_B, _DOPRI5_B_HAT)),
    order=5,
    dense=hermite_dense_output(_DOPRI5_B, _DOPRI5_MIDPOINT, last_stage_is_f1=True),
    fsal=True,
)

# Bogacki & Shampine, "A 3(2) pair of Runge–Kutta formulas", Appl. Math. Lett. 2 (1989).
_BOSH3_B = (2 / 9, 1 / 3, 4 / 9, 0.0)
_BOSH3_B_HAT = (7 / 24, 1 / 4, 1 / 3, 1 / 8)
BOSH3 = ButcherTableau(
    name="Bosh3",
    c=(0.0, 1 / 2, 3 / 4, 1.0),
    a=((), (1 / 2,), (0.0, 3 / 4), (2 / 9, 1 / 3, 4 / 9)),
    b=_BOSH3_B,
    b_error=tuple(b - bh for b, bh in zip(_BOSH3_B, _BOSH3_B_HAT)),
    order=3,
    # Cubic Hermite through (y0, f0), (y1, f1): third order, as accurate as the method.
    dense=hermite_dense_output(_BOSH3_B, None, last_stage_is_f1=True),
    fsal=True,
)


def _tsit5() -> ButcherTableau:
    from . import _tsit5 as t

    return ButcherTableau(
        name="Tsit5",
        c=t.C,
        a=t.A,
        b=t.B,
        b_error=t.B_ERROR,
        order=5,
        dense=t.DENSE,
        fsal=True,
    )


TSIT5 = _tsit5()

# Fixed-step methods interpolate with the cubic Hermite through both ends' slopes.
EULER = ButcherTableau(
    name="Euler", c=(0.0,), a=((),), b=(1.0,), order=1,
    dense=end_slope_hermite_dense_output((1.0,)), dense_uses_f1=True,
)

# The explicit midpoint method (Runge 1895).
MIDPOINT = ButcherTableau(
    name="Midpoint",
    c=(0.0, 1 / 2),
    a=((), (1 / 2,)),
    b=(0.0, 1.0),
    order=2,
    dense=end_slope_hermite_dense_output((0.0, 1.0)),
    dense_uses_f1=True,
)

# The classical fourth-order method (Kutta 1901).
RK4 = ButcherTableau(
    name="RK4",
    c=(0.0, 1 / 2, 1 / 2, 1.0),
    a=((), (1 / 2,), (0.0, 1 / 2), (0.0, 0.0, 1.0)),
    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
    order=4,
    dense=end_slope_hermite_dense_output((1 / 6, 1 / 3, 1 / 3, 1 / 6)),
    dense_uses_f1=True,
)
