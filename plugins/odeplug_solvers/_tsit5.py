"""Coefficients of Tsitouras' 5(4) explicit Runge--Kutta pair (Tsit5).

Reference:
    Ch. Tsitouras, "Runge--Kutta pairs of order 5(4) satisfying only the first
    column simplifying assumption", Computers & Mathematics with Applications
    62(2), 2011, pp. 770--775. doi:10.1016/j.camwa.2011.06.002

The method has seven stages and is FSAL (first same as last): the last row of
``A`` equals ``B`` and ``C[6] == 1``, so the final stage evaluation of one step
is the first stage of the next one.

Conventions (stage indices are 0-based here, 1-based in the paper):

``C``
    Nodes ``c_i``; ``sum(A[i]) == C[i]``.
``A``
    Strictly lower-triangular Runge--Kutta matrix; ``A[i]`` holds ``a_{i,0}``
    .. ``a_{i,i-1}`` (``A[0]`` is empty).
``B``
    Weights of the propagated 5th-order solution,
    ``y1 = y0 + h * sum(B[i] * k[i])``.  ``B[6] == 0``.
``B_ERROR``
    ``B`` minus the weights of the embedded 4th-order solution, so that
    ``h * sum(B_ERROR[i] * k[i]) == y1_order5 - y1_order4``.  This is the sign
    used by diffrax (``b_error``); OrdinaryDiffEq.jl's ``btilde`` holds the
    opposite sign.  Only the magnitude matters for step-size control.
``DENSE``
    Tsitouras' free 4th-order continuous extension.  ``DENSE[i] = (p1, p2,
    p3, p4)`` gives ``b_i(theta) = p1*theta + p2*theta**2 + p3*theta**3 +
    p4*theta**4`` and ``y(t0 + theta*h) ~= y0 + h * sum(b_i(theta) * k[i])``
    for ``0 <= theta <= 1``; ``b_i(1) == B[i]``.

Values are the correctly rounded doubles of the high-precision coefficients.
The interpolant rows were recomputed in extended precision from the tableau
together with ``b_7(theta) = theta**2 * (3/2 - 4 theta + 5/2 theta**2)``, which
fixes the two free parameters of the 4th-order continuous extension (it
reproduces ``b_2(theta) = theta**2 * (0.1317 - 0.2234 theta + 0.1017
theta**2)`` exactly).
"""

from __future__ import annotations

__all__ = ["C", "A", "B", "B_ERROR", "DENSE"]

C: tuple[float, ...] = (
    0.0,
    0.161,
    0.327,
    0.9,
    0.9800255409045096857298103,
    1.0,
    1.0,
)

B: tuple[float, ...] = (
    0.09646076681806522951816731,
    0.01,
    0.4798896504144995747752495,
    1.379008574103741893192275,
    -3.290069515436080679901048,
    2.324710524099773982415356,
    0.0,
)

A: tuple[tuple[float, ...], ...] = (
    (),
    (0.161,),
    (
        -0.008480655492356988544426874,
        0.3354806554923569885444269,
    ),
    (
        2.897153057105493432130433,
        -6.35944848997507484314816,
        4.362295432869581411017727,
    ),
    (
        5.325864828439256604428878,
        -11.74888356406282787774717,
        7.495539342889836208304605,
        -0.09249506636175524925650208,
    ),
    (
        5.861455442946420028659251,
        -12.92096931784710929170612,
        8.159367898576158643180401,
        -0.07158497328140099722453054,
        -0.02826905039406838290900306,
    ),
    B[:6],  # FSAL: the last stage is evaluated at the new solution
)

# B minus the embedded 4th-order weights (error estimate = y5 - y4).
B_ERROR: tuple[float, ...] = (
    0.001780011052225771443378551,
    0.0008164344596567469032236361,
    -0.007880878010261996010314728,
    0.1447110071732629075371651,
    -0.5823571654525552250199376,
    0.4580821059291869466616365,
    -0.01515151515151515151515152,  # -1/66
)

# Row i: (p1, p2, p3, p4) with b_i(theta) = sum_k p_k theta**k.
DENSE: tuple[tuple[float, ...], ...] = (
    (
        1.0,
        -2.763706197274825868672988,
        2.913255461821912655418646,
        -1.05308849772902155722749,
    ),
    (0.0, 0.1317, -0.2234, 0.1017),
    (
        0.0,
        3.930296236894751517409294,
        -5.941033872131504735717589,
        2.490627285651252793083545,
    ),
    (
        0.0,
        -12.41107716693367703873047,
        30.33818863028232165023005,
        -16.5481028892449027183073,
    ),
    (
        0.0,
        37.50931341651103917897844,
        -88.17890489476640107756107,
        47.37952196281928121868158,
    ),
    (
        0.0,
        -27.89652628919728778898427,
        65.09189467479367150762997,
        -34.87065786149660973623034,
    ),
    (0.0, 1.5, -4.0, 2.5),
)
