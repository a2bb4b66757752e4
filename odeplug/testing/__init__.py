"""Checks for plugin authors, the same ones odeplug's own tests run on the built-in plugins.

- :func:`check_gradient_rule` / :func:`check_gradient_case` over :func:`gradient_cases`: the
  gradient-truth matrix (closures, tensors computed from parameters, duplicated params, f
  independent of y, contracting dynamics, tuple states, decreasing times, randomness, second
  derivatives, in-place parameter changes) against the Direct rule.
- Every check is a list of named properties (:class:`Property`); a failure is a
  :class:`CheckFailed` naming the property and the counterexample.
"""

from ._gradient_truth import GradientCase, check_gradient_case, check_gradient_rule, gradient_cases
from ._properties import CheckFailed, Outcome, Property, run_properties

__all__ = [
    "GradientCase", "gradient_cases", "check_gradient_case", "check_gradient_rule",
    "CheckFailed", "Outcome", "Property", "run_properties",
]
