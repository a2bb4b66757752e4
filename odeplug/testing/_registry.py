"""Which checks apply to a noun, and which nouns a plugin provides: what ``odeplug check`` and
``pytest --odeplug-check`` run.

A plugin is named by its entry point in the ``odeplug.plugins`` group (``norms``) or by an
importable module (``odeplug_norms``). Its nouns are the *final* classes it exports (an entry
point) or defines (a module) that subclass one of the checkable abstract nouns — ``Solver``,
``Norm``, ``Quadrature``, ``WienerApproximation``, ``GradientRule`` — each built with its
defaults.

A plugin offers instances of its own with a module-level function ``odeplug_examples()`` in the
module its entry point names (or in the module named): it returns noun instances, which are
checked instead of the default instance of their class. That is how a class whose options have
no defaults (a fixed-step solver needing ``dt``) gets checked, and how a plugin asks for a
configuration worth checking besides the default::

    def odeplug_examples():
        return [MyRule(), MyRule(every=1), MyFixedStep(dt=0.05)]

A class that has neither defaults for every option nor an example is reported, never skipped
silently: :attr:`PluginNouns.unchecked` holds it with the reason.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.metadata
import inspect
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs

from .. import _dispatch, _plugins
from .._errors import InvalidArgumentError, PluginError
from .._nouns import GradientRule, Norm, Noun, Quadrature, Solver, WienerApproximation
from .._plugins import GROUP, ensure_loaded, exported
from ._properties import Property

__all__ = [
    "CHECKED_NOUNS", "PluginNouns", "UnknownPluginError", "noun_label", "plugin_names",
    "plugin_nouns", "properties_for", "skipped_properties", "temporary_plugin",
]

#: Each checkable abstract noun, and the module and function of ``odeplug.testing`` that builds
#: its properties (imported when first needed: a solver check need not import the others).
CHECKED_NOUNS: tuple[tuple[type[Noun], str, str], ...] = (
    (Solver, "._solver_check", "solver_properties"),
    (Norm, "._norm_check", "norm_properties"),
    (Quadrature, "._quadrature_check", "quadrature_properties"),
    (WienerApproximation, "._wiener_check", "wiener_properties"),
    (GradientRule, "._gradient_truth", "gradient_rule_properties"),
)

#: Checks that leave properties out for some nouns, and the function saying which and why.
SKIPPED_PROPERTIES: dict[type[Noun], tuple[str, str]] = {
    Solver: ("._solver_check", "skipped_solver_properties"),
}

EXAMPLES_FUNCTION = "odeplug_examples"


class UnknownPluginError(InvalidArgumentError):
    """A name is neither an entry point of ``odeplug.plugins`` nor an importable module."""


def properties_for(noun: Noun, *, settings: Any = None) -> list[Property]:
    """The properties of ``noun``, by the abstract noun it is an instance of: ``solver_properties``
    for a :class:`Solver`, ``norm_properties`` for a :class:`Norm`, and so on. ``settings``
    (Hypothesis settings, e.g. from :func:`check_settings`) is passed on; None keeps each
    check's own bounded default."""
    for kind, module, function in CHECKED_NOUNS:
        if isinstance(noun, kind):
            build = getattr(importlib.import_module(module, __package__), function)
            return build(noun, settings=settings)
    raise InvalidArgumentError(
        f"odeplug.testing has no check for {noun!r}: it is not an instance of "
        f"{', '.join(kind.__name__ for kind, _, _ in CHECKED_NOUNS)}. Check one of those nouns, "
        "or write properties of your own with odeplug.testing.Property."
    )


def noun_label(noun: Noun) -> str:
    """``Class(option=value, ...)`` naming only the options that differ from their defaults:
    ``Adjoint()``, ``CheckpointedAdjoint(every=3)`` (attrs' repr lists every option)."""
    if not attrs.has(type(noun)):
        return repr(noun)
    changed = []
    for field in attrs.fields(type(noun)):
        value, default = getattr(noun, field.name), field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory(noun) if default.takes_self else default.factory()
        if default is attrs.NOTHING or not _equal(value, default):
            changed.append(f"{field.name}={value!r}")
    return f"{type(noun).__name__}({', '.join(changed)})"


def _equal(value: Any, default: Any) -> bool:
    try:
        return bool(value == default)
    except Exception:  # noqa: BLE001 - incomparable (tensors): shown, as differing
        return False


def skipped_properties(noun: Noun) -> dict[str, str]:
    """The properties :func:`properties_for` leaves out for ``noun``, each with the reason (a
    solver that cannot be stepped has no measurable order, say)."""
    for kind, (module, function) in SKIPPED_PROPERTIES.items():
        if isinstance(noun, kind):
            return dict(getattr(importlib.import_module(module, __package__), function)(noun))
    return {}


@attrs.frozen
class PluginNouns:
    """What a plugin provides to check.

    Attributes:
        name: the name asked for (entry point or module).
        nouns: the instances to check: the plugin's examples, then the default instance of
            each of its noun classes that no example stands for.
        unchecked: ``(class name, reason)`` for each noun class that could not be built; the
            reason starts ``needs arguments — `` and ends with the error its defaults raised.
    """

    name: str
    nouns: tuple[Noun, ...]
    unchecked: tuple[tuple[str, str], ...]


def plugin_names() -> list[str]:
    """The entry-point names of every installed odeplug plugin, sorted."""
    return sorted({ep.name for ep in importlib.metadata.entry_points(group=GROUP)})


def plugin_nouns(name: str) -> PluginNouns:
    """The nouns the plugin ``name`` (an entry point of ``odeplug.plugins`` or a module) provides.

    Every installed plugin is loaded first, so the methods the nouns need are registered. A
    module that no entry point names, but which defines ``register()``, is registered here (as
    its entry point would be), so a plugin under development is checked before it is installed.

    Raises :class:`UnknownPluginError` for a name that is neither, listing the installed
    plugins with the nearest one; :class:`odeplug.PluginError` if the plugin failed to load.
    """
    infos = {info.name: info for info in ensure_loaded()}
    if name in infos:
        info = infos[name]
        if info.status != "loaded":
            raise PluginError(f"odeplug plugin {name!r} ({info.value}) failed to load: {info.error}")
        module = importlib.import_module(info.value.split(":")[0])
        available = exported()
        classes = [available[n] for n in info.names if n in available]
    else:
        module = _import_module(name, infos)
        if not any(info.value.split(":")[0] == name for info in infos.values()):
            _register_unlisted(module)
        classes = [value for value in vars(module).values()
                   if isinstance(value, type) and _defined_under(value, module.__name__)]
    return _instances(name, module, classes)


def _import_module(name: str, infos: dict[str, Any]) -> types.ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (name == exc.name or name.startswith(exc.name + ".")):
            raise  # the module exists but imports something missing: its own error, as is
    except (ValueError, TypeError):  # not a module name at all ("", "a..b", ...)
        pass
    modules = {info.value.split(":")[0].split(".")[0] for info in infos.values()}
    close = difflib.get_close_matches(name, sorted(set(infos) | modules), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    listing = ", ".join(f"{info.name} ({info.value.split(':')[0]})" for info in infos.values())
    raise UnknownPluginError(
        f"no odeplug plugin or module named {name!r}{hint}; installed plugins (entry point "
        f"(module)): {listing or 'none'}."
    )


_registered_unlisted: set[str] = set()  # once per process, as an entry point's hook runs


def _register_unlisted(module: types.ModuleType) -> None:
    register = getattr(module, "register", None)
    if (callable(register) and not inspect.signature(register).parameters
            and module.__name__ not in _registered_unlisted):
        register()  # as user code: this module is no installed plugin, nothing to attribute to
        _registered_unlisted.add(module.__name__)


def _defined_under(cls: type, module_name: str) -> bool:
    return cls.__module__ == module_name or cls.__module__.startswith(module_name + ".")


def _checkable(cls: type) -> bool:
    return (cls.__dict__.get("_odeplug_final", False)
            and any(issubclass(cls, kind) for kind, _, _ in CHECKED_NOUNS))


@contextlib.contextmanager
def temporary_plugin(register: Callable[[], None]) -> Iterator[None]:
    """Run a plugin's ``register()`` hook for the duration of a ``with`` block, then undo it:
    every method it registered is unregistered and every name it exported forgotten, so what
    follows sees odeplug as it was (for tests, and for trying a plugin before installing it).

    The installed plugins load first, so a hook that clashes with one of them fails at once,
    naming it; what a hook registered before failing is undone too."""
    ensure_loaded()
    methods_before, names_before = len(_dispatch.methods()), set(exported())
    try:
        register()
        yield
    finally:
        for record in reversed(_dispatch.methods()[methods_before:]):
            _dispatch.unregister_for_tests(record.verb, record.signature)
        for name in sorted(set(exported()) - names_before):
            _plugins.unexport_for_tests(name)


def _instances(name: str, module: types.ModuleType, classes: Sequence[Any]) -> PluginNouns:
    offered = getattr(module, EXAMPLES_FUNCTION, None)
    examples = list(offered()) if offered is not None else []
    for example in examples:
        if not any(isinstance(example, kind) for kind, _, _ in CHECKED_NOUNS):
            raise PluginError(
                f"{module.__name__}.{EXAMPLES_FUNCTION}() returned {example!r}, which is not an "
                f"instance of {', '.join(kind.__name__ for kind, _, _ in CHECKED_NOUNS)}; return "
                "instances of your noun classes only."
            )
    covered = {type(example) for example in examples}
    nouns, unchecked = list(examples), []
    for cls in dict.fromkeys(classes):  # in order, once each
        if not _checkable(cls) or cls in covered:
            continue
        try:
            nouns.append(cls())
        except Exception as exc:  # noqa: BLE001 - reported as the reason it is not checked
            unchecked.append((cls.__name__, (
                f"needs arguments — {type(exc).__name__}: {exc} (offer an instance from "
                f"{EXAMPLES_FUNCTION}() in {module.__name__})"
            )))
    return PluginNouns(name, tuple(nouns), tuple(unchecked))
