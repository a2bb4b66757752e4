"""odeplug's built-in solvers: one explicit Runge–Kutta engine, each method a tableau.

Adaptive: :class:`Dopri5` (default), :class:`Tsit5`, :class:`Bosh3`, :class:`Dopri8`,
:class:`Fehlberg2`, :class:`AdaptiveHeun`. Fixed step: :class:`Euler`, :class:`Midpoint`,
:class:`RK4`, :class:`RK4ThreeEighths` (torchdiffeq's ``rk4``), :class:`Heun2`, :class:`Heun3`.
Add a method by writing a :class:`ButcherTableau` and a configuration class subclassing
:class:`AdaptiveRungeKutta` or :class:`FixedStepRungeKutta`.

Every fixed-step solver (:class:`FixedStep`) steps every ``dt``, or on the output times
(``dt=None``, torchdiffeq's fixed grid without ``step_size``), or on a given ``grid``; reads
outputs between steps from a cubic Hermite or a line (``interpolation``); and with ``perturb``
evaluates f just inside each step, for fields discontinuous at the grid's times.

Multistep, fixed step (``_adams.py``, their own stepper): :class:`ExplicitAdams` and
:class:`ImplicitAdams`, torchdiffeq's Adams methods.
"""

from . import _adams, _solvers
from ._adams import Adams, AdamsStepper, ExplicitAdams, ImplicitAdams, adams_coefficients
from ._solvers import (
    AdaptiveHeun,
    AdaptiveRungeKutta,
    Bosh3,
    Dopri5,
    Dopri8,
    Euler,
    Fehlberg2,
    FixedStep,
    FixedStepRungeKutta,
    Heun2,
    Heun3,
    Midpoint,
    RK4,
    RK4ThreeEighths,
    RungeKutta,
    Tsit5,
)
from ._stepper import RungeKuttaStepper
from ._tableau import (
    ButcherTableau,
    end_slope_hermite_dense_output,
    hermite_dense_output,
    linear_dense_output,
)

__all__ = [
    "Adams", "AdamsStepper", "AdaptiveHeun", "AdaptiveRungeKutta", "Bosh3", "ButcherTableau",
    "Dopri5", "Dopri8", "Euler", "ExplicitAdams", "Fehlberg2", "FixedStep", "FixedStepRungeKutta", "Heun2", "Heun3",
    "ImplicitAdams", "Midpoint", "RK4", "RK4ThreeEighths", "RungeKutta", "RungeKuttaStepper", "Tsit5",
    "adams_coefficients", "hermite_dense_output", "linear_dense_output",
    "end_slope_hermite_dense_output", "register",
    "odeplug_examples",
]


def register() -> None:
    """The plugin's hook: the Runge–Kutta family's methods and the Adams methods'."""
    _solvers.register()
    _adams.register()


def odeplug_examples():
    """Instances for ``odeplug check``: the fixed-step methods with a step size (their default,
    dt=None, steps on the output times: one step per output, too coarse to measure), one of them
    with linear interpolation and perturb, and the second-order pairs at tolerances they reach
    in hundreds of steps, not 10⁴."""
    return [Euler(dt=0.05), Midpoint(dt=0.05), RK4(dt=0.05), RK4ThreeEighths(dt=0.05),
            Heun2(dt=0.05), Heun3(dt=0.05), Heun3(dt=0.05, interpolation="linear", perturb=True),
            ExplicitAdams(dt=0.05), ImplicitAdams(dt=0.05),
            AdaptiveHeun(rtol=1e-5, atol=1e-7), Fehlberg2(rtol=1e-5, atol=1e-7)]
