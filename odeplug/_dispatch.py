"""odeplug's generic functions ("verbs") and how plugins add methods to them.

One private :class:`plum.Dispatcher` holds every verb. Methods are added with :func:`register`,
which records which plugin added them (for ``odeplug plugins --methods``) and enforces, for every
registration, at the call that breaks them (so the traceback points at the offending line):

- *no piracy* (Julia's rule): a method a plugin registers must mention at least one type that
  plugin owns (defined in its own top-level package), so two plugins never fight over a signature;
- *no duplicates*: a signature is registered once;
- *no ambiguity*: when two methods would both apply to some call and neither is more specific
  (``norm(A, Tensor, Layout)`` and ``norm(Norm, Tensor, B)`` with ``A`` a ``Norm``, ``B`` a
  ``Layout``), the method for their intersection (``norm(A, Tensor, B)``) must be registered
  first, which says what that case means. Only classes related by inheritance are compared: two
  unrelated classes meet only in a class that inherits both, which nothing registers here.

*Attribution.* A registration belongs to a plugin when it happens while that plugin's module is
imported or its hook runs (see :class:`PluginScope`), or, at any later time, when the registered
function is defined in the top-level package of a plugin that odeplug has loaded: registering
from a plugin's package after its hook returned obeys the same rules. A plugin that failed to
load cannot register at all. Anything else is user code, which may register any signature.

*Staging.* While a plugin loads, its registrations (and the names it exports) are checked at once
but held in its :class:`PluginScope`, and handed to plum only when its hook succeeded: plum has no
unregister, and a plugin reported as failed must leave nothing behind.

Dispatch is resolved once per solve, never per step: the loop calls the plain function that
:func:`resolve` returns. Dispatched signatures carry no return annotations and use only types that
plum can cache on (odeplug's classes, ``torch.Tensor``, ``tuple``, ``int``), so resolution is
"faithful" and cached.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
import typing
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import plum

from ._errors import InvalidArgumentError, PluginError, UnsupportedCombinationError

__all__ = [
    "dispatch", "register", "resolve", "generic", "verbs", "MethodRecord", "PluginScope",
    "plugin_scope", "claim_package",
]

dispatch = plum.Dispatcher()

_VERBS: dict[str, plum.Function] = {}


@attrs.frozen
class MethodRecord:
    verb: str
    signature: tuple[type, ...]
    implementation: str
    plugin: str | None


@attrs.define(eq=False)
class PluginScope:
    """One plugin as odeplug loads it, and what its import and hook registered and exported.

    ``status`` is ``"loading"`` while its module is imported and its hook runs (registrations
    are staged here), ``"loaded"`` once they were committed, ``"failed"`` once they were dropped.
    """

    entry_point: str
    target: str  # the entry point's value, "package.module:register"
    distribution: str
    version: str
    status: str = "loading"
    staged_methods: list[tuple[MethodRecord, Callable[..., Any]]] = attrs.Factory(list)
    staged_exports: dict[str, Any] = attrs.Factory(dict)

    @property
    def module_root(self) -> str:
        """The top-level package the plugin owns: its types are the ones defined under it."""
        return _top_level_package(self.target.split(":")[0])

    def __str__(self) -> str:
        return (
            f"plugin {self.entry_point!r} ({self.target}, distribution {self.distribution} "
            f"{self.version})"
        )


_METHODS: list[MethodRecord] = []
_SIGNATURES: dict[tuple[str, tuple[type, ...]], MethodRecord] = {}
# Plugins whose import or hook is running in this thread, innermost last (a plugin's hook runs
# after the plugins it requires, which load while it is on the stack). Thread-local so that
# another thread's registrations are never taken for the loading plugin's.
_this_thread = threading.local()
# Top-level package -> the plugin that owns it, for registrations made after its hook returned.
_PLUGIN_BY_PACKAGE: dict[str, PluginScope] = {}


def _loading_stack() -> list[PluginScope]:
    if not hasattr(_this_thread, "stack"):
        _this_thread.stack = []
    return _this_thread.stack


def _top_level_package(module: str) -> str:
    return module.split(".")[0]


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
    """Every committed method (a loading plugin's staged ones are not callable yet)."""
    return list(_METHODS)


def loading_plugins() -> list[PluginScope]:
    """The plugins whose import or hook is running in this thread, innermost last."""
    return list(_loading_stack())


def loading_plugin() -> PluginScope | None:
    """The plugin whose import or hook is running in this thread, if any."""
    stack = _loading_stack()
    return stack[-1] if stack else None


def claim_package(scope: PluginScope) -> None:
    """Make ``scope`` answer for registrations from its top-level package at any later time."""
    owner = _PLUGIN_BY_PACKAGE.get(scope.module_root)
    # Two entry points in one package: the one that loaded keeps it (a failed one must not
    # take its later registrations away).
    if owner is None or owner.status != "loaded":
        _PLUGIN_BY_PACKAGE[scope.module_root] = scope


@contextlib.contextmanager
def plugin_scope(scope: PluginScope) -> Iterator[PluginScope]:
    """Attribute what runs inside (importing the plugin, running its hook) to ``scope``."""
    stack = _loading_stack()
    stack.append(scope)
    try:
        yield scope
    finally:
        stack.pop()


def owning_plugin(module: str) -> PluginScope | None:
    """The plugin a registration or export from ``module`` belongs to (see the module
    docstring): the one loading in this thread, else the one owning the package of ``module``."""
    return loading_plugin() or _PLUGIN_BY_PACKAGE.get(_top_level_package(module))


def commit(scope: PluginScope) -> list[MethodRecord]:
    """Hand a plugin's staged methods to plum (its hook succeeded); return their records.
    Its staged exports are published by the caller, :mod:`odeplug._plugins`."""
    records = [record for record, _ in scope.staged_methods]
    for record, function in scope.staged_methods:
        _add(record, function)
    scope.staged_methods.clear()
    scope.status = "loaded"
    return records


def drop(scope: PluginScope) -> None:
    """Forget a plugin's staged methods (its import or hook failed)."""
    scope.staged_methods.clear()
    scope.staged_exports.clear()
    scope.status = "failed"


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


def _call(verb: str, signature: tuple[type, ...]) -> str:
    return f"{verb}({', '.join(t.__name__ for t in signature)})"


def _registrant(record: MethodRecord) -> str:
    return f"plugin {record.plugin!r}" if record.plugin else "user code"


def _visible_methods(verb: str) -> list[MethodRecord]:
    """Committed methods of ``verb`` and those staged by plugins loading in this thread."""
    staged = [record for scope in _loading_stack() for record, _ in scope.staged_methods]
    return [record for record in (*_METHODS, *staged) if record.verb == verb]


def _intersection(a: tuple[type, ...], b: tuple[type, ...]) -> tuple[type, ...] | None:
    """The signature of the calls both ``a`` and ``b`` apply to, or None if no call can match
    both (other arity, or classes unrelated by inheritance at some position)."""
    if len(a) != len(b):
        return None
    meet = []
    for x, y in zip(a, b):
        if issubclass(x, y):
            meet.append(x)
        elif issubclass(y, x):
            meet.append(y)
        else:
            return None
    return tuple(meet)


def _check_not_ambiguous(record: MethodRecord, visible: list[MethodRecord]) -> None:
    registered = {other.signature for other in visible}
    for other in visible:
        meet = _intersection(record.signature, other.signature)
        if meet is None or meet in (record.signature, other.signature) or meet in registered:
            continue  # disjoint, ordered (one is more specific), or the meet is decided
        name = record.verb
        raise PluginError(
            f"{_call(name, record.signature)} ({record.implementation}) is ambiguous with "
            f"{_call(name, other.signature)} ({other.implementation}, registered by "
            f"{_registrant(other)}): both apply to a call {_call(name, meet)} and neither is "
            "more specific, so dispatch could not choose. Register a method for the "
            f"intersection, {_call(name, meet)}, before this one (it says what that case "
            "means), or narrow one of the two signatures."
        )


def register(function: Callable[..., Any]) -> Callable[..., Any]:
    """Add a method to the verb named like ``function``, dispatching on its annotations.

    Example, a norm plugin::

        @odeplug.register
        def norm(n: WeightedRMS, x: torch.Tensor, layout: odeplug.Layout):
            ...

    Raises :class:`PluginError` for an unknown verb, a return annotation or a non-class
    annotation, a signature already registered, a method ambiguous with one already registered,
    a method from a plugin that mentions no type the plugin owns (piracy), or a method from a
    plugin that failed to load. While a plugin loads, the method is checked now and handed to
    plum when its hook has succeeded (see the module docstring).
    """
    name = function.__name__
    if name not in _VERBS:
        raise PluginError(
            f"@odeplug.register: no generic function named {name!r}. Name your function after "
            f"one of the verbs: {', '.join(sorted(_VERBS))}."
        )
    signature = _signature_types(function)
    implementation = f"{function.__module__}.{function.__qualname__}"
    plugin = owning_plugin(function.__module__ or "")
    if plugin is not None and plugin.status == "failed":
        raise PluginError(
            f"{_call(name, signature)} ({implementation}) comes from the package of {plugin}, "
            "which failed to load, so it cannot register methods. Fix the failure reported when "
            "it loaded (`odeplug plugins` shows it)."
        )
    if plugin is not None and not any(_owns(plugin.module_root, t) for t in signature):
        raise PluginError(
            f"{plugin} registers {_call(name, signature)} ({implementation}) but owns none of "
            f"those types (piracy): a plugin's methods, whenever they are registered, must "
            f"involve at least one type defined in its own package {plugin.module_root!r}."
        )
    visible = _visible_methods(name)
    for previous in visible:
        if previous.signature == signature:
            raise PluginError(
                f"{_call(name, signature)} is already registered by {_registrant(previous)} "
                f"({previous.implementation}); a signature may be registered once. Dispatch on "
                "a type you own instead."
            )
    record = MethodRecord(
        verb=name,
        signature=signature,
        implementation=implementation,
        plugin=plugin.entry_point if plugin else None,
    )
    _check_not_ambiguous(record, visible)
    if plugin is not None and plugin.status == "loading":
        plugin.staged_methods.append((record, function))
    else:
        _add(record, function)
    return function


def _add(record: MethodRecord, function: Callable[..., Any]) -> None:
    _SIGNATURES[(record.verb, record.signature)] = record
    _METHODS.append(record)
    _VERBS[record.verb].register(function, plum.Signature(*record.signature))


def resolve(verb: plum.Function, *args: Any) -> Callable[..., Any]:
    """The plain function implementing ``verb`` for ``args``; call it in loops."""
    method, _ = verb.resolve_method(args)
    return method


def unregister_for_tests(name: str, signature: tuple[type, ...]) -> None:
    """Forget a registration (tests register throw-away methods)."""
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


def forget_plugin_for_tests(entry_point: str) -> None:
    """Forget a throw-away test plugin's methods and its claim on its package."""
    for record in [r for r in _METHODS if r.plugin == entry_point]:
        unregister_for_tests(record.verb, record.signature)
    for package, scope in list(_PLUGIN_BY_PACKAGE.items()):
        if scope.entry_point == entry_point:
            del _PLUGIN_BY_PACKAGE[package]
