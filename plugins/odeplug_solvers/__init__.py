"""odeplug's built-in solvers: one explicit Runge–Kutta engine, each method a tableau.

Adaptive: :class:`Dopri5` (default), :class:`Tsit5`, :class:`Bosh3`. Fixed step: :class:`Euler`,
:class:`Midpoint`, :class:`RK4`. Add a method by writing a :class:`ButcherTableau` and a
configuration class subclassing :class:`AdaptiveRungeKutta` or :class:`FixedStepRungeKutta`.
"""

from ._solvers import (
    AdaptiveRungeKutta,
    Bosh3,
    Dopri5,
    Euler,
    FixedStepRungeKutta,
    Midpoint,
    RK4,
    RungeKutta,
    Tsit5,
    register,
)
from ._stepper import RungeKuttaStepper
from ._tableau import (
    ButcherTableau,
    end_slope_hermite_dense_output,
    hermite_dense_output,
    linear_dense_output,
)

__all__ = [
    "AdaptiveRungeKutta", "Bosh3", "ButcherTableau", "Dopri5", "Euler", "FixedStepRungeKutta",
    "Midpoint", "RK4", "RungeKutta", "RungeKuttaStepper", "Tsit5", "hermite_dense_output",
    "linear_dense_output", "end_slope_hermite_dense_output", "register", "odeplug_examples",
]


def odeplug_examples():
    """Instances for ``odeplug check`` where the defaults cannot be built: the fixed-step
    methods need a step size."""
    return [Euler(dt=0.05), Midpoint(dt=0.05), RK4(dt=0.05)]
