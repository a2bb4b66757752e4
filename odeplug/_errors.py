"""The exceptions odeplug raises.

Every message names the argument at fault and says what to do about it. The classes also
derive from the builtin exception a Python user would expect (``ValueError`` for a bad value,
``TypeError`` for a bad type or combination, ``RuntimeError`` for a solve that could not finish),
so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class OdeplugError(Exception):
    """Base class of every error raised by odeplug itself."""


class InvalidArgumentError(OdeplugError, ValueError):
    """An argument has a value odeplug cannot use (non-monotone times, a non-floating y0, …)."""


class InvalidOptionError(OdeplugError, TypeError):
    """A configuration object was given an option it does not have, or a value of the wrong kind."""


class UnsupportedCombinationError(OdeplugError, TypeError):
    """No method exists for this combination of problem, solver and gradient rule."""


class PluginError(OdeplugError, RuntimeError):
    """A plugin failed to load, or broke a registration rule (piracy, duplicate signature)."""


class SolveError(OdeplugError, RuntimeError):
    """A solve started but could not finish."""


class NonFiniteStateError(SolveError):
    """The state or the error estimate became NaN or infinite."""


class StepSizeUnderflowError(SolveError):
    """The adaptive step size shrank until ``t + h == t``."""


class StepBudgetExhaustedError(SolveError):
    """``max_steps`` steps were attempted before the solve reached its end time."""


class StiffProblemError(SolveError):
    """An explicit solver's step size stayed pinned at its stability limit: the problem is stiff
    there, and an implicit solver would take far fewer steps."""


class PrecisionWarning(UserWarning):
    """A tolerance the state's dtype cannot resolve (below about 100 × its machine epsilon)."""


class PluginNameNotLoadedError(PluginError, AttributeError):
    """A plugin being loaded looked up a name on ``odeplug`` that no plugin loaded so far exports
    (it must declare the plugin providing it in its hook's ``requires``)."""
