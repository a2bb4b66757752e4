"""Checks for plugin authors, the same ones odeplug's own tests run on the built-in plugins.

- :func:`check_gradient_rule` / :func:`check_gradient_case` over :func:`gradient_cases`: the
  gradient-truth matrix (closures, tensors computed from parameters, duplicated params, f
  independent of y, contracting dynamics, tuple states, decreasing times, randomness, second
  derivatives, in-place parameter changes) against the Direct rule.
"""

from ._gradient_truth import GradientCase, check_gradient_case, check_gradient_rule, gradient_cases

__all__ = ["GradientCase", "gradient_cases", "check_gradient_case", "check_gradient_rule"]
