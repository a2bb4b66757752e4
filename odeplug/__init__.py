"""odeplug: faster training of neural ODEs and SDEs in PyTorch, through pluggable gradient rules.

The core holds the nouns (abstract types), the verbs (generic functions) and plugin loading.
Every numerical method is a plugin found through the entry-point group ``odeplug.plugins``;
plugin-provided names (``Dopri5``, ``RMSNorm``, ``Direct``, …) are looked up lazily here.

    import odeplug as op
    sol = op.solve(op.ODEProblem(f, y0, ts), op.Dopri5(rtol=1e-6, atol=1e-8), op.Direct())
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._dispatch import register, resolve
from ._errors import (
    InvalidArgumentError,
    InvalidOptionError,
    NonFiniteStateError,
    OdeplugError,
    PluginError,
    PluginNameNotLoadedError,
    PrecisionWarning,
    SolveError,
    StepBudgetExhaustedError,
    StepSizeUnderflowError,
    StiffProblemError,
    UnsupportedCombinationError,
)
from ._layout import Block, Layout
from ._nouns import (
    GradientRule,
    Norm,
    Noun,
    Quadrature,
    Solver,
    WienerApproximation,
    configuration,
    final,
)
from ._plugins import PluginInfo, PluginLoadWarning, export, plugins
from ._problem import ODEProblem, Problem
from ._solution import Solution, Stats
from ._solve import reject_options, solve
from ._stepping import Counts, Step, Stepper, StepState, VectorField, advance, exact_gap
from ._integrate import integrate, solve_forward, solver_times
from ._verbs import (
    augment, bind_norm, controlled, exact_degree, first_order, interpolate, make_stepper, norm,
    order, quadrature, sample, solve_until_event, terms, wong_zakai,
)
from ._events import solve_forward_until_event
from ._quadrature import scaled_quadrature
from ._norm import resolve_norm

if TYPE_CHECKING:
    # What the built-in plugins export, for IDEs and type checkers only: at run time these names
    # are found lazily through the plugins (the core never imports a plugin). A test keeps this
    # list equal to what the built-in plugins export.
    from odeplug_aca import ACA
    from odeplug_adjoint import Adjoint
    from odeplug_auto import Auto
    from odeplug_direct import Direct
    from odeplug_gq import AdaptiveNodes, GaussAdjoint, GQAdjoint, NodePolicy, PaperNodes
    from odeplug_implicit import ESDIRK, ImplicitRungeKutta, Kvaerno3, Kvaerno4, Kvaerno5, RadauIIA5
    from odeplug_norms import MaxNorm, MixedNorm, RMSNorm, Seminorm
    from odeplug_quadrature import GaussLegendre
    from odeplug_sde import KarhunenLoeve, KarhunenLoevePath, SDEProblem, SDESolver, WienerPath
    from odeplug_solvers import (
        RK4, Adams, AdaptiveHeun, AdaptiveRungeKutta, Bosh3, Dopri5, Dopri8, Euler, ExplicitAdams,
        Fehlberg2, FixedStep, FixedStepRungeKutta, Heun2, Heun3, ImplicitAdams, Midpoint, RK4ThreeEighths,
        RungeKutta, Tsit5,
    )
    from odeplug_torchdiffeq import TorchDiffEq
    from odeplug_transforms import (
        Augmentation, CDEProblem, ControlPath, Interpolation, LinearInterpolation,
        NaturalCubicSpline, PiecewisePolynomialPath, SecondOrderProblem, ZeroAugmentation,
    )

__version__ = "0.1.0"

__all__ = [
    # front door
    "solve", "ODEProblem", "Problem", "Solution", "Stats",
    # abstract nouns
    "Noun", "Solver", "Norm", "GradientRule", "Quadrature", "WienerApproximation",
    # verbs and extension
    "register", "resolve", "resolve_norm", "export", "plugins", "PluginInfo", "PluginLoadWarning",
    "make_stepper", "norm", "bind_norm", "quadrature", "scaled_quadrature", "terms", "sample", "wong_zakai",
    "order", "exact_degree", "interpolate", "controlled", "first_order", "augment",
    "solve_until_event", "configuration", "final", "reject_options",
    # the stepping contract
    "Layout", "Block", "VectorField", "Stepper", "StepState", "Step", "Counts", "advance", "exact_gap",
    "integrate", "solve_forward", "solve_forward_until_event", "solver_times",
    # errors
    "OdeplugError", "InvalidArgumentError", "InvalidOptionError", "UnsupportedCombinationError",
    "PluginError", "PluginNameNotLoadedError", "SolveError", "NonFiniteStateError",
    "StepSizeUnderflowError", "StepBudgetExhaustedError", "StiffProblemError", "PrecisionWarning",
]


def __getattr__(name: str) -> Any:
    # Plugin-provided names are found lazily so that `import odeplug` stays cheap and a broken
    # plugin cannot break the import.
    if name.startswith("__"):
        raise AttributeError(name)
    from ._plugins import lookup

    return lookup(name)


def __dir__() -> list[str]:
    from ._plugins import exported

    return sorted(set(__all__) | set(exported()))
