"""odeplug's implicit (stiff) solvers: Kværnø's ESDIRK methods and Radau IIA.

:class:`Kvaerno3`, :class:`Kvaerno4`, :class:`Kvaerno5` (ESDIRK 3(2), 4(3), 5(4); one algorithm,
each method a tableau) and :class:`RadauIIA5` (3-stage Radau IIA, order 5). Newton on the
stages with a Jacobian of f and its LU factorisations reused across stages and steps, or
matrix-free GMRES (``linear_solver="krylov"``); counts of Jacobians (``njev``), factorisations
(``nlu``) and Newton iterations in ``Solution.stats``. See docs/methods/implicit.md.
"""

from . import _solvers
from ._solvers import ESDIRK, ImplicitRungeKutta, Kvaerno3, Kvaerno4, Kvaerno5, RadauIIA5
from ._stepper import ESDIRKStepper, ImplicitStepper, RadauIIAStepper
from ._tableau import KVAERNO3, KVAERNO4, KVAERNO5, ESDIRKTableau

__all__ = [
    "ESDIRK", "ESDIRKStepper", "ESDIRKTableau", "ImplicitRungeKutta", "ImplicitStepper", "KVAERNO3",
    "KVAERNO4", "KVAERNO5", "Kvaerno3", "Kvaerno4", "Kvaerno5", "RadauIIA5", "RadauIIAStepper",
    "odeplug_examples", "register",
]


def register() -> None:
    """The plugin's hook."""
    _solvers.register()


def odeplug_examples():
    """Instances for ``odeplug check`` and the conformance tests, at tolerances they reach in
    tens of steps (the matrix-free linear solver is exercised in tests/test_implicit.py)."""
    return [Kvaerno3(rtol=1e-5, atol=1e-7), Kvaerno4(rtol=1e-6, atol=1e-8), Kvaerno5(rtol=1e-6, atol=1e-8),
            RadauIIA5(rtol=1e-6, atol=1e-8)]
