"""The abstract nouns of odeplug, and the abstract/final rule they follow.

Every class is either *abstract* (it may be subclassed, it is never instantiated) or *final* (it
is instantiated, it is never subclassed). Only abstract methods are overridden. This keeps the
meaning of a method in one place and makes dispatch on a type unambiguous: a method written for
``Dopri5`` can never silently apply to a subclass that changed what ``Dopri5`` means.

Configuration nouns are frozen, keyword-only attrs classes holding Python scalars, declared with
:func:`configuration`, which also turns an unknown keyword into an error that lists the valid
options and suggests the nearest one. A noun class that forgot it (``class MyNorm(Norm): pass``)
is caught when it is given options (``MyNorm(scale=2)``), with an error saying which decorator to
use. Nothing stricter is checked when a class is instantiated or a method is registered for it:
an abstract family with no abstract method (``BacksolveRule``) is indistinguishable there from a
concrete class without a decorator, and stateless nouns without one are instantiated as they are.
"""

from __future__ import annotations

import abc
import difflib
import functools
from typing import Any, TypeVar

import attrs

from ._errors import InvalidOptionError

__all__ = [
    "Noun",
    "Solver",
    "Norm",
    "GradientRule",
    "Quadrature",
    "WienerApproximation",
    "configuration",
    "final",
]

_T = TypeVar("_T", bound=type)


class Noun(abc.ABC):
    """Root of odeplug's abstract types; enforces that a final class is never subclassed, and
    that options go to a :func:`configuration` class."""

    __slots__ = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in cls.__mro__[1:]:
            if base.__dict__.get("_odeplug_final", False):
                raise TypeError(
                    f"{base.__module__}.{base.__qualname__} is final and cannot be subclassed "
                    f"(by {cls.__qualname__}). Subclass its abstract parent "
                    f"{_abstract_parent(base).__qualname__} instead, and register methods for "
                    "your new class."
                )

    # Reached only by classes that define no __init__ of their own: the usual one is a noun
    # declared without @configuration, whose options object.__init__ would refuse with a bare
    # "takes no arguments". A class mixed in after Noun still gets its arguments.
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        cls = type(self)
        if (args or kwargs) and super(Noun, cls).__init__ is object.__init__:
            raise InvalidOptionError(_no_options_message(cls, args, kwargs))
        super().__init__(*args, **kwargs)


def _no_options_message(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    given = ", ".join([*map(repr, args), *(f"{k}=..." for k in kwargs)])
    if cls.__dict__.get("_odeplug_final", False):
        fix = (
            "it is @odeplug.final with no __init__, so it takes no options. Declare them as "
            "annotated fields and decorate it with @odeplug.configuration instead"
        )
    else:
        fix = (
            "it is not a configuration class. Decorate it with @odeplug.configuration, which "
            "turns annotated fields (e.g. `scale: float = 1.0`) into keyword options, or give "
            "it an __init__ and decorate it with @odeplug.final. Either makes it final: every "
            "odeplug noun is abstract (subclassed, never instantiated) or final (instantiated, "
            "never subclassed), so that a method registered for it always means the same thing"
        )
    return f"{cls.__qualname__}({given}): {fix}."


def _abstract_parent(cls: type) -> type:
    for base in cls.__mro__[1:]:
        if not base.__dict__.get("_odeplug_final", False):
            return base
    return object


def final(cls: _T) -> _T:
    """Mark a class final: instantiable, never subclassed (see the module docstring)."""
    cls._odeplug_final = True  # type: ignore[attr-defined]
    return cls


def configuration(cls: _T) -> _T:
    """Make ``cls`` a final, frozen, keyword-only attrs class with helpful option errors.

    Unknown keywords raise :class:`InvalidOptionError` naming the option and listing the valid
    ones; attrs validators run as usual. Options are keyword-only, except those a class names in
    a ``positional_options`` tuple (e.g. ``KarhunenLoeve(10)`` for its ``terms``).
    """
    positional = tuple(cls.__dict__.get("positional_options", ()))
    cls = attrs.frozen(kw_only=True)(cls)
    generated_init = cls.__init__
    valid = tuple(field.name for field in attrs.fields(cls) if field.init)

    @functools.wraps(generated_init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if args and len(args) <= len(positional):
            for name, value in zip(positional, args):
                if name in kwargs:
                    raise InvalidOptionError(f"{cls.__name__} got {name!r} twice (positionally and by keyword).")
                kwargs[name] = value
            args = ()
        if args:
            allowed = (
                f"at most {len(positional)} positional option(s) ({', '.join(positional)})"
                if positional else "keyword options only"
            )
            raise InvalidOptionError(
                f"{cls.__name__} takes {allowed}, got {len(args)} positional argument(s); "
                f"write e.g. {cls.__name__}({', '.join(f'{v}=...' for v in valid[:2])})."
            )
        unknown = [key for key in kwargs if key not in valid]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, valid, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise InvalidOptionError(
                f"{cls.__name__} got unknown option(s) {', '.join(hints)}; "
                f"valid options are: {', '.join(valid) or '(none)'}."
            )
        generated_init(self, **kwargs)

    cls.__init__ = __init__  # type: ignore[misc]
    return final(cls)


class Solver(Noun):
    """How one step is taken, and how step sizes are controlled.

    A plugin author adds a solver like this:

    1. Subclass ``Solver`` (or an abstract subclass a plugin provides, e.g. an explicit
       Runge–Kutta family) with a :func:`configuration` class holding its options.
    2. Register a method of :func:`odeplug.make_stepper` for ``(YourSolver, VectorField, Layout)``
       returning an :class:`odeplug.Stepper`; every stepping gradient rule (Direct, Adjoint,
       quadrature adjoints, ACA) then works with it unchanged.
    3. Or, for a solver that runs its own loop (a bridge to another library), register
       :func:`odeplug.solve` methods for the rules it supports; for the others, register nothing
       and the user gets an error naming the combination.
    4. Count what you evaluate: a stepper evaluates the field only through the ``VectorField`` it
       is given, which counts evaluations for ``Solution.stats``.
    """

    __slots__ = ()


class Norm(Noun):
    """The size of a scaled error estimate, used to accept or reject a step.

    1. Subclass ``Norm`` with a :func:`configuration` class.
    2. Register :func:`odeplug.norm` for ``(YourNorm, torch.Tensor, Layout)``: it receives the flat
       error already divided by ``atol + rtol·|y|`` and the :class:`odeplug.Layout` naming the
       blocks of the flat state, and returns a 0-d tensor (never a Python float: no GPU sync).
    3. It must be a norm (or a seminorm): non-negative, absolutely homogeneous, subadditive.
    """

    __slots__ = ()


class GradientRule(Noun):
    """How ``backward()`` obtains dL/dy0, dL/dθ and dL/dt.

    1. Subclass ``GradientRule`` with a :func:`configuration` class whose options all have
       defaults (``odeplug bench`` instantiates every registered rule with no arguments).
    2. Register :func:`odeplug.solve` for ``(ODEProblem, Solver, YourRule)``. The rule owns the
       loop: it obtains a stepper with ``make_stepper`` once, then drives it.
    3. Report counts in ``Solution.stats`` (forward ones at once, backward ones when backward runs).
    """

    __slots__ = ()


class Quadrature(Noun):
    """Nodes and weights of an integration rule on [-1, 1].

    1. Subclass ``Quadrature``; 2. register :func:`odeplug.quadrature` for ``(YourRule, int)``
    returning ``(nodes, weights)`` as float64 tensors of length n.
    """

    __slots__ = ()


class WienerApproximation(Noun):
    """A smooth stand-in for Brownian motion, for training SDEs as ODEs (Wong–Zakai).

    1. Subclass ``WienerApproximation``; 2. register :func:`odeplug.sample` returning a path with
    ``value(t)`` and ``derivative(t)``.
    """

    __slots__ = ()
