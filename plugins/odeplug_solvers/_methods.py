"""The built-in Runge–Kutta methods, as tableaus (published coefficients; references inline)."""

from __future__ import annotations

from ._tableau import ButcherTableau, end_slope_hermite_dense_output, hermite_dense_output

__all__ = [
    "DOPRI5", "BOSH3", "TSIT5", "EULER", "MIDPOINT", "RK4", "DOPRI8", "FEHLBERG2", "ADAPTIVE_HEUN",
    "HEUN3", "RK4_THREE_EIGHTHS", "HEUN2",
]

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


# Prince & Dormand, "High order embedded Runge–Kutta formulae", J. Comput. Appl. Math. 7 (1981):
# RK8(7)13M, 13 stages, the 8th-order weights propagated; the values as torchdiffeq's dopri8 has
# them. A 14th stage F(t1, y1) is appended (first same as last), as torchdiffeq does.
_DOPRI8_C = (
    0.0, 1 / 18, 1 / 12, 1 / 8, 5 / 16, 3 / 8, 59 / 400, 93 / 200, 5490023248 / 9719169821,
    13 / 20, 1201146811 / 1299019798, 1.0, 1.0,
)
_DOPRI8_A = (
    (),
    (1 / 18,),
    (1 / 48, 1 / 16),
    (1 / 32, 0.0, 3 / 32),
    (5 / 16, 0.0, -75 / 64, 75 / 64),
    (3 / 80, 0.0, 0.0, 3 / 16, 3 / 20),
    (29443841 / 614563906, 0.0, 0.0, 77736538 / 692538347, -28693883 / 1125000000,
     23124283 / 1800000000),
    (16016141 / 946692911, 0.0, 0.0, 61564180 / 158732637, 22789713 / 633445777,
     545815736 / 2771057229, -180193667 / 1043307555),
    (39632708 / 573591083, 0.0, 0.0, -433636366 / 683701615, -421739975 / 2616292301,
     100302831 / 723423059, 790204164 / 839813087, 800635310 / 3783071287),
    (246121993 / 1340847787, 0.0, 0.0, -37695042795 / 15268766246, -309121744 / 1061227803,
     -12992083 / 490766935, 6005943493 / 2108947869, 393006217 / 1396673457,
     123872331 / 1001029789),
    (-1028468189 / 846180014, 0.0, 0.0, 8478235783 / 508512852, 1311729495 / 1432422823,
     -10304129995 / 1701304382, -48777925059 / 3047939560, 15336726248 / 1032824649,
     -45442868181 / 3398467696, 3065993473 / 597172653),
    (185892177 / 718116043, 0.0, 0.0, -3185094517 / 667107341, -477755414 / 1098053517,
     -703635378 / 230739211, 5731566787 / 1027545527, 5232866602 / 850066563,
     -4093664535 / 808688257, 3962137247 / 1805957418, 65686358 / 487910083),
    (403863854 / 491063109, 0.0, 0.0, -5068492393 / 434740067, -411421997 / 543043805,
     652783627 / 914296604, 11173962825 / 925320556, -13158990841 / 6184727034,
     3936647629 / 1978049680, -160528059 / 685178525, 248638103 / 1413531060, 0.0),
)
_DOPRI8_B = (
    14005451 / 335480064, 0.0, 0.0, 0.0, 0.0, -59238493 / 1068277825, 181606767 / 758867731,
    561292985 / 797845732, -1041891430 / 1371343529, 760417239 / 1151165299,
    118820643 / 751138087, -528747749 / 2220607170, 1 / 4, 0.0,
)
_DOPRI8_B_HAT = (
    13451932 / 455176623, 0.0, 0.0, 0.0, 0.0, -808719846 / 976000145, 1757004468 / 5645159321,
    656045339 / 265891186, -3867574721 / 1518517206, 465885868 / 322736535,
    53011238 / 667516719, 2 / 45, 0.0, 0.0,
)
# The continuous extension of RK8(7)13M whose values torchdiffeq's dopri8 takes at θ = ½ (for its
# quartic through the midpoint): b_i(θ) = Σ_j P[i, j] θ^(j+1), degree 6, using the 14th stage and
# no extra ones. Used whole here, it is 5th-order accurate (the quartic, 4th).
_DOPRI8_DENSE = (
    (1.0, -6.6910181737837595697, 19.9990069333683970610, -30.0610568289666450593,
     22.1396504998094068976, -6.3448349392860401388),
    *((0.0,) * 6,) * 4,
    (0.0, -7.6142658045872677172, 52.2273532792945524050, -121.4999627731334642623,
     116.4422149550342161651, -39.6107919852202505218),
    (0.0, 10.7281392630428866124, -46.8919164181093621583, 83.1721004639847717481,
     -67.1451318825957197185, 20.3761213808791436958),
    (0.0, 0.5526637063753648783, -0.1890893225010595467, 9.5724507555993664382,
     -16.5672243527496524646, 7.3347098826795362023),
    (0.0, 4.2186562625665153803, -35.7075975946222072821, 87.8406057677205645007,
     -89.9916014847245016028, 32.8801774352459155182),
    (0.0, -0.6627209125361597559, 6.2736448083240352160, -17.4152107770762969005,
     22.6237489648532849093, -10.1588990526426760954),
    (0.0, -1.2636789001135462218, 10.3160881272450748458, -28.5903289514790976966,
     32.2362340167355370113, -12.5401268098782561200),
    (0.0, 5.4106037898590422230, -34.7650769866611817349, 81.6630950584341412934,
     -82.1020315488359848644, 29.5553001484516038033),
    (0.0, -7.0321379067945741781, 47.7457971078225540396, -114.9375291377009418170,
     116.2662185791119533462, -41.7923486424390588923),
    (0.0, 2.3537586759714983486, -19.0082099341608028453, 50.2558364226176017553,
     -53.9020777466385396792, 20.3006925822100825485),
)

DOPRI8 = ButcherTableau(
    name="Dopri8",
    c=(*_DOPRI8_C, 1.0),
    a=(*_DOPRI8_A, _DOPRI8_B[:-1]),
    b=_DOPRI8_B,
    b_error=tuple(b - bh for b, bh in zip(_DOPRI8_B, _DOPRI8_B_HAT)),
    order=8,
    dense=_DOPRI8_DENSE,
    dense_order=5,
    fsal=True,
)

# Fehlberg, "Low-order classical Runge–Kutta formulas with stepsize control", NASA TR R-315
# (1969): RKF 1(2). As torchdiffeq's fehlberg2, the second-order weights are propagated (local
# extrapolation); the third stage is F at the first-order solution, so F(t1, y1) is evaluated
# after an accepted step and the dense output is the cubic Hermite through both ends.
_FEHLBERG2_B = (1 / 512, 255 / 256, 1 / 512)
_FEHLBERG2_B_HAT = (1 / 256, 255 / 256, 0.0)
FEHLBERG2 = ButcherTableau(
    name="Fehlberg2",
    c=(0.0, 1 / 2, 1.0),
    a=((), (1 / 2,), (1 / 256, 255 / 256)),
    b=_FEHLBERG2_B,
    b_error=tuple(b - bh for b, bh in zip(_FEHLBERG2_B, _FEHLBERG2_B_HAT)),
    order=2,
    dense=end_slope_hermite_dense_output(_FEHLBERG2_B),
    dense_uses_f1=True,
)

# Heun's method (the explicit trapezoidal rule, Heun 1900) with forward Euler embedded: the
# Heun–Euler 2(1) pair of torchdiffeq's adaptive_heun, the second-order solution propagated.
_ADAPTIVE_HEUN_B = (1 / 2, 1 / 2)
_ADAPTIVE_HEUN_B_HAT = (1.0, 0.0)
ADAPTIVE_HEUN = ButcherTableau(
    name="AdaptiveHeun",
    c=(0.0, 1.0),
    a=((), (1.0,)),
    b=_ADAPTIVE_HEUN_B,
    b_error=tuple(b - bh for b, bh in zip(_ADAPTIVE_HEUN_B, _ADAPTIVE_HEUN_B_HAT)),
    order=2,
    dense=end_slope_hermite_dense_output(_ADAPTIVE_HEUN_B),
    dense_uses_f1=True,
)

# Heun's second-order method, the explicit trapezoidal rule (Heun 1900): torchdiffeq's heun2.
HEUN2 = ButcherTableau(
    name="Heun2",
    c=(0.0, 1.0),
    a=((), (1.0,)),
    b=(1 / 2, 1 / 2),
    order=2,
    dense=end_slope_hermite_dense_output((1 / 2, 1 / 2)),
    dense_uses_f1=True,
)

# Heun's third-order method (Heun, "Neue Methoden zur approximativen Integration der
# Differentialgleichungen einer unabhängigen Veränderlichen", Z. Math. Phys. 45, 1900).
HEUN3 = ButcherTableau(
    name="Heun3",
    c=(0.0, 1 / 3, 2 / 3),
    a=((), (1 / 3,), (0.0, 2 / 3)),
    b=(1 / 4, 0.0, 3 / 4),
    order=3,
    dense=end_slope_hermite_dense_output((1 / 4, 0.0, 3 / 4)),
    dense_uses_f1=True,
)

# Kutta's 3/8 rule (Kutta 1901): torchdiffeq's rk4, and the fourth-order method its Adams
# solvers start with.
RK4_THREE_EIGHTHS = ButcherTableau(
    name="RK4ThreeEighths",
    c=(0.0, 1 / 3, 2 / 3, 1.0),
    a=((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)),
    b=(1 / 8, 3 / 8, 3 / 8, 1 / 8),
    order=4,
    dense=end_slope_hermite_dense_output((1 / 8, 3 / 8, 3 / 8, 1 / 8)),
    dense_uses_f1=True,
)
