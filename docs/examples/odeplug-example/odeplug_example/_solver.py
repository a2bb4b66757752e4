"""A solver from data: Fehlberg's 4(5) embedded pair on odeplug_solvers' tableau engine."""

import odeplug as op
from odeplug_solvers import AdaptiveRungeKutta, ButcherTableau, end_slope_hermite_dense_output

# E. Fehlberg, "Low-order classical Runge–Kutta formulas with stepsize control and their
# application to some heat transfer problems", NASA TR R-315 (1969), table III (RKF45).
C = (0.0, 1 / 4, 3 / 8, 12 / 13, 1.0, 1 / 2)
A = (
    (),
    (1 / 4,),
    (3 / 32, 9 / 32),
    (1932 / 2197, -7200 / 2197, 7296 / 2197),
    (439 / 216, -8.0, 3680 / 513, -845 / 4104),
    (-8 / 27, 2.0, -3544 / 2565, 1859 / 4104, -11 / 40),
)
B = (25 / 216, 0.0, 1408 / 2565, 2197 / 4104, -1 / 5, 0.0)  # fourth order: the step taken
B_HAT = (16 / 135, 0.0, 6656 / 12825, 28561 / 56430, -9 / 50, 2 / 55)  # fifth order


FEHLBERG45 = ButcherTableau(
    name="Fehlberg45", c=C, a=A, b=B, order=4,
    b_error=tuple(b - b_hat for b, b_hat in zip(B, B_HAT)),
    # A non-FSAL pair has no F(t1, y1) among its stages; the engine evaluates it after an
    # accepted step anyway (it is the next step's first stage), so the dense output may use it:
    # the cubic Hermite through (y0, f0) and (y1, f1), O(h⁴) like the steps.
    dense=end_slope_hermite_dense_output(B), dense_uses_f1=True,
)


@op.configuration
class Fehlberg45(AdaptiveRungeKutta):
    """Runge–Kutta–Fehlberg 4(5) (NASA TR R-315, 1969): fourth-order steps, error estimated
    against the embedded fifth-order weights, cubic Hermite dense output. Options of every
    adaptive Runge–Kutta method: ``rtol``, ``atol``, ``norm``, ``first_step``, ``max_steps``."""

    tableau = FEHLBERG45


def register():
    # Nothing to register: odeplug_solvers' methods for AdaptiveRungeKutta (make_stepper, and
    # order, which reads tableau.order) apply to every subclass.
    op.export(Fehlberg45)
