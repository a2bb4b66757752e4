"""The front door: :func:`solve` fills in defaults, loads plugins and dispatches once."""

from __future__ import annotations

from typing import Any

from . import _verbs
from ._dispatch import register
from ._errors import InvalidArgumentError
from ._events import locate_then_solve
from ._nouns import GradientRule, Solver
from ._plugins import ensure_loaded, exported
from ._problem import ODEProblem, Problem
from ._solution import Solution

__all__ = ["solve"]


def solve(
    problem: Problem,
    solver: Solver | None = None,
    rule: GradientRule | None = None,
    **options: Any,
) -> Solution:
    """Solve ``problem``; ``loss.backward()`` then differentiates by ``rule``.

    Args:
        problem: an :class:`ODEProblem` (or a problem type a plugin adds).
        solver: a :class:`Solver`; default ``Dopri5()``.
        rule: a :class:`GradientRule`; default ``Direct()`` (backpropagation through the solver).
        **options: passed to the method chosen for (problem, solver, rule); methods reject
            options they do not know.

    Returns:
        a :class:`Solution` with ``ys`` at ``problem.ts`` and ``stats``.

    Example::

        sol = odeplug.solve(odeplug.ODEProblem(f, y0, ts), odeplug.Dopri5(rtol=1e-6), odeplug.Adjoint())
    """
    ensure_loaded()
    if solver is None:
        solver = exported()["Dopri5"]()
    if rule is None:
        rule = exported()["Direct"]()
    if not isinstance(problem, Problem):
        raise InvalidArgumentError(
            f"solve: problem must be an odeplug problem (e.g. odeplug.ODEProblem(f, y0, ts)), got "
            f"{type(problem).__name__}."
        )
    if not isinstance(solver, Solver):
        raise InvalidArgumentError(
            f"solve: solver must be an odeplug.Solver instance such as odeplug.Dopri5(), got "
            f"{solver!r}."
        )
    if not isinstance(rule, GradientRule):
        raise InvalidArgumentError(
            f"solve: rule must be an odeplug.GradientRule instance such as odeplug.Direct(), got "
            f"{rule!r}."
        )
    if getattr(problem, "event", None) is not None:
        return _verbs.solve_until_event(problem, solver, rule, **options)
    return _verbs.solve(problem, solver, rule, **options)


@register
def solve_until_event(problem: ODEProblem, solver: Solver, rule: GradientRule, *,
                      through_event_time=True, **options):
    return locate_then_solve(problem, solver, rule, options, through_event_time=through_event_time)


def reject_options(where: str, options: dict[str, Any]) -> None:
    """Raise for keyword options a solve method does not take (never drop them silently)."""
    if options:
        raise InvalidArgumentError(
            f"{where} got unknown option(s) {', '.join(map(repr, options))}; it takes none. "
            "Solver options go on the solver (e.g. Dopri5(rtol=...)), rule options on the rule."
        )
