"""Checks for plugin authors: the same ones odeplug's own tests run on the built-in plugins.

One check per noun, each a list of named properties (:class:`Property`) drawn with Hypothesis;
a failure is a :class:`CheckFailed` naming the property and the shrunk counterexample:

- :func:`check_solver`: the measured order of convergence (steps and dense output) equals the
  declared :func:`odeplug.order`; decreasing times mirror increasing ones; every registered
  gradient rule works with it.
- :func:`check_norm`: non-negative, absolutely homogeneous, subadditive (seminorms allowed), any
  layout; a seminorm is blind to the integral blocks and at most its base.
- :func:`check_quadrature`: exact for polynomials up to :func:`odeplug.exact_degree`, not one
  more; weights sum to the interval's length.
- :func:`check_wiener`: ``derivative`` is the derivative of ``value``; covariance tends to
  min(s, t) − t0; reproducible from a generator; global random state untouched.
- :func:`check_gradient_rule`: the gradient-truth matrix (:func:`gradient_cases`) against the
  Direct rule.

:func:`properties_for` gives any noun's properties (what ``odeplug check`` and ``pytest
--odeplug-check`` run); :mod:`odeplug.testing.strategies` has the Hypothesis strategies.
See docs/testing.md.
"""

from . import strategies
from ._gradient_truth import (
    GradientCase,
    check_gradient_case,
    check_gradient_rule,
    gradient_cases,
    gradient_rule_properties,
)
from ._norm_check import check_norm, norm_properties
from ._properties import (
    CheckFailed,
    Outcome,
    Property,
    check_settings,
    hypothesis_property,
    run_properties,
)
from ._quadrature_check import check_quadrature, quadrature_properties
from ._registry import plugin_nouns, properties_for, skipped_properties, temporary_plugin
from ._solver_check import check_solver, solver_properties
from ._strategies import KnownSolution, known_solutions
from ._wiener_check import check_wiener, wiener_properties

__all__ = [
    # one check per noun
    "check_solver", "check_norm", "check_quadrature", "check_wiener", "check_gradient_rule",
    "check_gradient_case", "gradient_cases", "GradientCase",
    # their properties
    "solver_properties", "norm_properties", "quadrature_properties", "wiener_properties",
    "gradient_rule_properties", "properties_for", "skipped_properties", "plugin_nouns",
    "Property", "Outcome", "CheckFailed", "run_properties", "hypothesis_property",
    "check_settings", "temporary_plugin",
    # strategies
    "strategies", "KnownSolution", "known_solutions",
]
