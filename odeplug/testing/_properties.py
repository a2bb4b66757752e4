"""What every check of ``odeplug.testing`` is made of: named properties, run one by one, each
failing with the property's name and the (Hypothesis-shrunk) counterexample.

A check for a noun is a list of :class:`Property`; ``check_<noun>`` runs them all and raises
:class:`CheckFailed` for the first that fails, ``odeplug check`` runs them all and tabulates
each :class:`Outcome`. A property drawn from Hypothesis strategies is built with
:func:`hypothesis_property`, so its failure carries the minimal example Hypothesis found.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
from hypothesis import HealthCheck, given, settings as Settings
from hypothesis import strategies as st

__all__ = [
    "CheckFailed", "Property", "Outcome", "hypothesis_property", "run_properties", "enforce",
    "check_settings",
]


class CheckFailed(AssertionError):
    """A plugin broke a property its noun promises.

    ``subject`` names the plugin object, ``property`` the promise, ``counterexample`` the input
    on which it fails (Hypothesis' shrunk example where the property is drawn).
    """

    def __init__(self, subject: str, property: str, counterexample: str, detail: str = "") -> None:
        self.subject = subject
        self.property = property
        self.counterexample = counterexample
        self.detail = detail
        message = f"{subject}: {property!r} does not hold\n  counterexample: {counterexample}"
        super().__init__(message + (f"\n  {detail}" if detail else ""))


@attrs.frozen
class Property:
    """One promise of a noun: ``run()`` returns if it holds and raises :class:`CheckFailed`."""

    subject: str
    name: str
    run: Callable[[], None]


@attrs.frozen
class Outcome:
    """What became of one property: passed, or failed with its counterexample and message."""

    subject: str
    property: str
    passed: bool
    counterexample: str | None = None
    message: str | None = None


def check_settings(settings: Settings | None = None, max_examples: int = 25) -> Settings:
    """The Hypothesis settings a check runs under: ``settings`` if given, else the loaded profile
    (so ``CI=true``'s bounded, derandomised profile applies) with at most ``max_examples``
    examples and no deadline (a solve's first call compiles and allocates)."""
    if settings is not None:
        return settings
    current = Settings.default
    return Settings(
        current,
        deadline=None,
        # One shrunk counterexample per property, not an ExceptionGroup of distinct bugs.
        report_multiple_bugs=False,
        max_examples=min(current.max_examples, max_examples),
        suppress_health_check=[*current.suppress_health_check, HealthCheck.too_slow,
                               HealthCheck.data_too_large, HealthCheck.filter_too_much,
                               HealthCheck.function_scoped_fixture],
    )


def hypothesis_property(
    subject: str,
    name: str,
    strategy: st.SearchStrategy[Any],
    holds: Callable[[Any], None],
    settings: Settings | None = None,
    max_examples: int = 25,
) -> Property:
    """A :class:`Property` that draws examples from ``strategy`` and calls ``holds(example)``,
    which raises ``AssertionError`` (with a reason) when the property fails on it. The failure
    is re-raised as :class:`CheckFailed` carrying ``repr`` of the shrunk example."""

    def run() -> None:
        @check_settings(settings, max_examples)
        @given(strategy)
        def inner(example: Any) -> None:
            try:
                holds(example)
            except CheckFailed:
                raise
            except AssertionError as exc:
                raise CheckFailed(subject, name, repr(example), str(exc)) from exc

        inner()

    return Property(subject, name, run)


def run_properties(properties: Sequence[Property]) -> list[Outcome]:
    """Run every property; a property that raises anything but :class:`CheckFailed` fails with
    that error as its message (a crash is a failure too, never a skip)."""
    outcomes = []
    for prop in properties:
        try:
            prop.run()
        except CheckFailed as exc:
            outcomes.append(Outcome(prop.subject, prop.name, False, exc.counterexample, str(exc)))
        except Exception as exc:  # noqa: BLE001 - reported, with its type, as the failure
            outcomes.append(Outcome(prop.subject, prop.name, False, None,
                                    f"{type(exc).__name__}: {exc}"))
        else:
            outcomes.append(Outcome(prop.subject, prop.name, True))
    return outcomes


def enforce(properties: Sequence[Property]) -> None:
    """Run ``properties`` in order and raise the first failure (what ``check_<noun>`` does)."""
    for prop in properties:
        prop.run()
