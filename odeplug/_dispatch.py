"""odeplug's generic functions ("verbs") and how plugins add methods to them.

One private :class:`plum.Dispatcher` holds every verb. Methods are added with :func:`register`,
which also records which plugin added them (for ``odeplug plugins --methods``) and enforces two
rules across plugins:

- *no piracy* (Julia's rule): a method registered by a plugin must mention at least one type that
  plugin owns (defined in its own package), so two plugins never fight over a signature;
- *no duplicates*: a signature is registered once.

Dispatch is resolved once per solve, never per step: the loop calls the plain function that
:func:`resolve` returns. Dispatched signatures carry no return annotations and use only types that
plum can cache on (odeplug's classes, ``torch.Tensor``, ``tuple``, ``int``), so resolution is
"faithful" and cached.
"""

from __future__ import annotations

import contextlib
import inspect
import typing
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import plum

from ._errors import InvalidArgumentError, PluginError, UnsupportedCombinationError

__all__ = ["dispatch", "register", "resolve", "generic", "verbs", "MethodRecord"]

dispatch = plum.Dispatcher()

_VERBS: dict[str, plum.Function] = {}


@attrs.frozen
class MethodRecord:
    verb: str
    signature: tuple[type, ...]
    implementation: str
    plugin: str | None


_METHODS: list[MethodRecord] = []
_SIGNATURES: dict[tuple[str, tuple[type, ...]], MethodRecord] = {}
_current_plugin: list[tuple[str, str]] = []  # stack of (entry point name, owned module root)


def generic(stub: Callable[..., Any]) -> plum.Function:
    """Declare a verb. The stub's docstring documents it; its body is never called."""
    name = stub.__name__

    dispatched = _dispatched_names(stub)

    # No annotations: plum would check a return type on every call.
    def not_found(*args, **kwargs):  # noqa: ANN002, ANN003
        from ._plugins import ensure_loaded, loaded

        # A verb called before anything loaded the plugins (op.norm(...) first thing): load
        # them and dispatch again, once, instead of reporting that no method exists.
        if not loaded():
            ensure_loaded()
            if loaded():
                return function(*args, **kwargs)
        # Dispatch reads positional arguments only: a dispatched one given by keyword is unseen.
        by_keyword = [k for k in kwargs if k in dispatched]
        if by_keyword:
            raise InvalidArgumentError(
                f"{name}: pass {', '.join(by_keyword)} positionally, not by keyword: methods are "
                f"chosen from the types of the positional arguments, "
                f"{name}({', '.join(dispatched)}, ...)."
            )
        raise UnsupportedCombinationError(_no_method_message(name, args))

    function = dispatch.abstract(stub)
    function.__doc__ = stub.__doc__
    _VERBS[name] = function
    # A catch-all at lowest precedence, for any number of arguments, turns plum's lookup error
    # into our explanation.
    function.register(not_found, plum.Signature(varargs=object), precedence=-1)
    return function


def _dispatched_names(stub: Callable[..., Any]) -> tuple[str, ...]:
    """The stub's positional parameters: the ones methods dispatch on."""
    params = inspect.signature(stub).parameters.values()
    return tuple(p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD)


def _no_method_message(name: str, args: tuple[Any, ...]) -> str:
    types = ", ".join(type(a).__name__ for a in args)
    known = [r for r in _METHODS if r.verb == name]
    listing = "\n".join(
        f"  {name}({', '.join(t.__name__ for t in r.signature)})  [{r.plugin or 'user'}]"
        for r in known
    )
    return (
        f"odeplug has no method {name}({types}). This combination is not supported by any loaded "
        f"plugin. Methods of {name!r} that exist:\n{listing or '  (none)'}\n"
        "Pick a supported combination, or register a method with @odeplug.register."
    )


def verbs() -> dict[str, plum.Function]:
    return dict(_VERBS)


def methods() -> list[MethodRecord]:
    return list(_METHODS)


@contextlib.contextmanager
def plugin_context(entry_point: str, module_root: str) -> Iterator[None]:
    """Attribute registrations made inside to the plugin ``entry_point`` owning ``module_root``."""
    _current_plugin.append((entry_point, module_root))
    try:
        yield
    finally:
        _current_plugin.pop()


def _signature_types(function: Callable[..., Any]) -> tuple[type, ...]:
    hints = typing.get_type_hints(function)
    if "return" in hints:
        raise PluginError(
            f"{function.__qualname__} has a return annotation; dispatched methods must not "
            "(plum then checks every return value, ~10x slower). Remove '-> ...'."
        )
    params = [
        p
        for p in inspect.signature(function).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    types = tuple(hints.get(p.name, object) for p in params)
    for p, t in zip(params, types):
        if not isinstance(t, type):  # tuple[int, ...], Union[...], a string: not cacheable
            raise PluginError(
                f"{function.__qualname__}: the annotation of {p.name!r} is {t!r}, not a plain "
                "class. Dispatched signatures use classes only (parametric and union types make "
                "plum's resolver uncacheable, and every call slow): annotate with the class, "
                f"e.g. {p.name}: {getattr(typing.get_origin(t), '__name__', 'object')}."
            )
    return types


def _owns(module_root: str, cls: Any) -> bool:
    module = getattr(cls, "__module__", "") or ""
    return module == module_root or module.startswith(module_root + ".")


def register(function: Callable[..., Any]) -> Callable[..., Any]:
    """Add a method to the verb named like ``function``, dispatching on its annotations.

    Example, a norm plugin::

        @odeplug.register
        def norm(n: WeightedRMS, x: torch.Tensor, layout: odeplug.Layout):
            ...

    Raises :class:`PluginError` for an unknown verb, a return annotation, a signature already
    registered, or (inside a plugin's ``register()`` hook) a method that mentions no type the
    plugin owns.
    """
    name = function.__name__
    if name not in _VERBS:
        raise PluginError(
            f"@odeplug.register: no generic function named {name!r}. Name your function after "
            f"one of the verbs: {', '.join(sorted(_VERBS))}."
        )
    signature = _signature_types(function)
    plugin = _current_plugin[-1] if _current_plugin else None
    if plugin is not None and not any(_owns(plugin[1], t) for t in signature):
        raise PluginError(
            f"plugin {plugin[0]!r} registers {name}({', '.join(t.__name__ for t in signature)}) "
            f"but owns none of those types (piracy): a plugin's methods must involve at least one "
            f"type defined in its own package {plugin[1]!r}."
        )
    key = (name, signature)
    if key in _SIGNATURES:
        previous = _SIGNATURES[key]
        raise PluginError(
            f"{name}({', '.join(t.__name__ for t in signature)}) is already registered by "
            f"{previous.plugin or 'user code'} ({previous.implementation}); a signature may be "
            "registered once. Dispatch on a type you own instead."
        )
    record = MethodRecord(
        verb=name,
        signature=signature,
        implementation=f"{function.__module__}.{function.__qualname__}",
        plugin=plugin[0] if plugin else None,
    )
    _SIGNATURES[key] = record
    _METHODS.append(record)
    _VERBS[name].register(function, plum.Signature(*signature))
    return function


def resolve(verb: plum.Function, *args: Any) -> Callable[..., Any]:
    """The plain function implementing ``verb`` for ``args``; call it in loops."""
    method, _ = verb.resolve_method(args)
    return method


def unregister_for_tests(name: str, signature: tuple[type, ...]) -> None:
    """Forget a user registration (tests register throw-away methods)."""
    record = _SIGNATURES.pop((name, signature))
    _METHODS.remove(record)
    function = _VERBS[name]
    function._resolve_pending_registrations()  # noqa: SLF001
    # plum re-registers from `_resolved` when its cache is cleared: drop the method there.
    function._resolved = [  # noqa: SLF001
        entry for entry in function._resolved  # noqa: SLF001
        if entry[1] is None or tuple(entry[1].types) != signature
    ]
    function.clear_cache()
