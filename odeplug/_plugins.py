"""Finding and loading plugins through the entry-point group ``odeplug.plugins``.

Each entry point names a zero-argument ``register()`` hook. Loading is lazy (first ``solve``, or
first lookup of a plugin-provided name on ``odeplug``) and isolated: a plugin whose import or hook
fails gives one :class:`PluginLoadWarning` naming the entry point, its distribution and version,
and everything else still works. ``ODEPLUG_STRICT_PLUGINS=1`` turns that warning into an error.

*Load order.* The built-in plugins (the entry points of the ``odeplug`` distribution itself) load
first, then every other plugin, each group by entry-point name. A plugin that needs another
plugin loaded before its hook runs (to use ``odeplug.WienerPath`` in ``register()``, say) says so
on its hook::

    def register():
        ...
    register.requires = ("sde",)        # entry-point names, from any distribution

Its module is imported, then the plugins it requires are loaded (recursively), then its hook
runs. A required plugin that is not installed, that failed, or a cycle of requirements fails the
requiring plugin with a message that says which. ``requires`` orders hooks, not imports: while a
plugin's module is imported only the built-ins' names (and those of plugins already loaded) are
on ``odeplug``, so a module body imports other plugins' classes from their packages. Looking up
a name no plugin loaded so far exports, while a plugin loads, raises
:class:`PluginNameNotLoadedError` (an ``AttributeError``) naming the loading plugin and how to
declare the dependency (:func:`lookup`).

*Staging.* What a plugin registers and exports while its module is imported and its hook runs
is checked at the call (so a rule broken shows the plugin author's own line) and committed only
when the hook returned: a plugin reported as failed leaves no method and no name behind.

*Names.* A name exported on ``odeplug`` belongs to the first plugin that exported it; another
plugin exporting the same name fails, with both plugins' entry points, distributions and
versions in the message. After its hook returned, a plugin's package still answers for what it
registers and exports (see :mod:`odeplug._dispatch`).
"""

from __future__ import annotations

import importlib.metadata
import os
import threading
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import attrs

from . import _dispatch
from ._dispatch import PluginScope, plugin_scope
from ._errors import PluginError, PluginNameNotLoadedError

__all__ = [
    "PluginInfo", "PluginLoadWarning", "plugins", "ensure_loaded", "export", "exported", "lookup",
]

GROUP = "odeplug.plugins"
# The distribution whose entry points are the built-in plugins, loaded before any other.
BUILTIN_DISTRIBUTION = "odeplug"


class PluginLoadWarning(UserWarning):
    """A plugin failed to load; the others were loaded."""


@attrs.frozen
class PluginInfo:
    """One entry point of the ``odeplug.plugins`` group and what became of it.

    ``methods`` and ``names`` are what its import and hook registered and exported; ``requires``
    the entry points its hook declared it needs loaded first.
    """

    name: str
    value: str
    distribution: str
    version: str
    status: str  # "loaded" | "failed"
    error: str | None
    methods: tuple[str, ...]
    names: tuple[str, ...]
    requires: tuple[str, ...] = ()


_lock = threading.RLock()
_loaded: list[PluginInfo] | None = None
_exports: dict[str, Any] = {}
_export_owner: dict[str, PluginScope | None] = {}  # None: user code
_done: dict[tuple[str, str], PluginInfo] = {}  # hooks run once per process, even across reloads
# The thread loading plugins may look names up on odeplug from a plugin's import (re-entry); it
# alone answers from what is loaded so far. Other threads wait on the lock for the whole set.
_this_thread = threading.local()


def _loading() -> bool:
    return getattr(_this_thread, "loading", False)


def _owner_name(owner: PluginScope | None) -> str:
    return str(owner) if owner is not None else "user code"


def export(*objects: Any) -> None:
    """Make ``objects`` reachable as ``odeplug.<name>`` (call from a plugin's register hook).

    Raises :class:`PluginError` if another plugin (or user code) already exports the name.
    """
    for obj in objects:
        name = obj.__name__
        owner = _dispatch.owning_plugin(getattr(obj, "__module__", None) or "")
        if owner is not None and owner.status == "failed":
            raise PluginError(
                f"odeplug.{name} comes from the package of {owner}, which failed to load, so it "
                "cannot export names. Fix the failure reported when it loaded (`odeplug plugins` "
                "shows it)."
            )
        staged = {n: (scope, o) for scope in _dispatch.loading_plugins()
                  for n, o in scope.staged_exports.items()}
        previous = staged.get(name) or (
            (_export_owner[name], _exports[name]) if name in _exports else None
        )
        if previous is not None and previous != (owner, obj):
            raise PluginError(
                f"{_owner_name(owner)} exports {name!r}, but {_owner_name(previous[0])} "
                f"already exports odeplug.{name}: a name on odeplug belongs to one plugin. "
                f"Rename it in {_owner_name(owner)} (it stays importable from its package)."
            )
        if owner is not None and owner.status == "loading":
            owner.staged_exports[name] = obj
        else:
            _exports[name] = obj
            _export_owner[name] = owner


def exported() -> dict[str, Any]:
    if not _loading():
        ensure_loaded()
    return dict(_exports)


def lookup(name: str) -> Any:
    """``odeplug.<name>`` for a plugin-provided name (what ``odeplug.__getattr__`` answers).

    Raises :class:`PluginNameNotLoadedError` when a plugin being loaded asks for a name that no
    plugin loaded so far exports, and ``AttributeError`` for a name no plugin exports.
    """
    names = exported()
    if name in names:
        return names[name]
    loading = _dispatch.loading_plugin()
    if loading is not None:
        raise PluginNameNotLoadedError(
            f"odeplug.{name} was looked up while {loading} is loading, and no plugin loaded so "
            "far exports it (the built-ins load first, then each plugin after the plugins it "
            f"requires). If {name} comes from another plugin, declare that plugin's entry point "
            "on your hook, `register.requires = (\"<entry point>\",)` (`odeplug plugins` lists "
            f"entry points and their names), and look {name} up inside register(), not when "
            "your module is imported; or import it from that plugin's package."
        )
    raise AttributeError(
        f"module 'odeplug' has no attribute {name!r}. Names from plugins: "
        f"{', '.join(sorted(names)) or '(none loaded)'}; see `odeplug plugins`."
    )


def _distribution(ep: importlib.metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "?", "?"
    return dist.metadata["Name"], dist.version


def ensure_loaded() -> list[PluginInfo]:
    """Load every plugin once (thread-safe); return what happened to each, in load order."""
    if _loaded is not None:
        return _loaded
    with _lock:
        if _loaded is not None:
            return _loaded
        if _loading():  # re-entered from a plugin being loaded: answer with what is loaded so far
            return list(_done.values())
        _this_thread.loading = True
        try:
            return _load_all()
        finally:
            _this_thread.loading = False


def _load_all() -> list[PluginInfo]:
    global _loaded
    entry_points: dict[str, importlib.metadata.EntryPoint] = {}
    homonyms: list[importlib.metadata.EntryPoint] = []
    for ep in importlib.metadata.entry_points(group=GROUP):
        first = entry_points.setdefault(ep.name, ep)
        # The same distribution found twice on sys.path counts once; another distribution
        # using the name is refused below.
        if first.value != ep.value:
            homonyms.append(ep)
    strict = os.environ.get("ODEPLUG_STRICT_PLUGINS", "") not in ("", "0")
    loader = _Loader(entry_points, strict=strict)
    for ep in sorted(entry_points.values(),
                     key=lambda e: (_distribution(e)[0] != BUILTIN_DISTRIBUTION, e.name)):
        loader.load(ep, requiring=())
    for ep in homonyms:
        first = entry_points[ep.name]
        loader.fail(
            PluginScope(ep.name, ep.value, *_distribution(ep)),
            PluginError(
                f"its entry-point name is taken by {first.value} from distribution "
                f"{' '.join(_distribution(first))}; entry-point names identify plugins (in "
                "`requires`, in `odeplug plugins`): rename one of them."
            ),
        )
    _loaded = list(loader.infos.values())
    return _loaded


def _requirements(ep: importlib.metadata.EntryPoint, hook: Callable[[], None]) -> tuple[str, ...]:
    requires = getattr(hook, "requires", ())
    if not isinstance(requires, (tuple, list)) or not all(isinstance(n, str) for n in requires):
        raise PluginError(
            f"{ep.value}.requires must be a tuple of entry-point names, e.g. "
            f"register.requires = (\"solvers\",); got {requires!r}."
        )
    return tuple(requires)


@attrs.define
class _Loader:
    """One pass over the entry points: loads each plugin after the plugins it requires."""

    entry_points: dict[str, importlib.metadata.EntryPoint]
    strict: bool
    infos: dict[tuple[str, str], PluginInfo] = attrs.Factory(dict)  # in load order

    def load(self, ep: importlib.metadata.EntryPoint, requiring: tuple[str, ...]) -> PluginInfo:
        """Load ``ep`` (``requiring``: the chain of plugins waiting for it, outermost first)."""
        key = (ep.name, ep.value)
        if key in self.infos:
            return self.infos[key]
        if key in _done:
            self.infos[key] = _done[key]
            return _done[key]
        scope = PluginScope(ep.name, ep.value, *_distribution(ep))
        _dispatch.claim_package(scope)
        try:
            with plugin_scope(scope):
                hook = ep.load()
            requires = _requirements(ep, hook)
        except Exception as exc:  # isolation: a broken plugin must not break the rest
            return self.fail(scope, exc)
        for name in requires:
            problem = self._requirement_problem(ep, name, requiring)
            if problem is not None:
                return self.fail(scope, PluginError(problem), requires)
        try:
            with plugin_scope(scope):
                hook()
        except Exception as exc:
            return self.fail(scope, exc, requires)
        records = _dispatch.commit(scope)
        exports, scope.staged_exports = scope.staged_exports, {}
        for name, obj in exports.items():
            _exports[name] = obj
            _export_owner[name] = scope
        info = PluginInfo(
            name=ep.name,
            value=ep.value,
            distribution=scope.distribution,
            version=scope.version,
            status="loaded",
            error=None,
            methods=tuple(
                f"{r.verb}({', '.join(t.__name__ for t in r.signature)})" for r in records
            ),
            names=tuple(sorted(exports)),
            requires=requires,
        )
        _done[key] = self.infos[key] = info
        return info

    def _requirement_problem(
        self, ep: importlib.metadata.EntryPoint, name: str, requiring: tuple[str, ...]
    ) -> str | None:
        """Load the required plugin ``name``; say why it cannot be used, or None if it loaded."""
        chain = (*requiring, ep.name)
        if name in chain:
            cycle = " -> ".join((*chain[chain.index(name):], name))
            return (
                f"its hook requires {name!r}, but the requirements form a cycle ({cycle}); "
                "remove one of them from its hook's `requires`."
            )
        if name not in self.entry_points:
            return (
                f"its hook requires {name!r}, but no installed distribution has an "
                f"{GROUP!r} entry point of that name (installed: "
                f"{', '.join(sorted(self.entry_points))}); install the distribution that "
                "provides it, or fix the name in `requires`."
            )
        required = self.load(self.entry_points[name], chain)
        if required.status != "loaded":
            return f"its hook requires {name!r}, which failed to load: {required.error}"
        return None

    def fail(
        self, scope: PluginScope, exc: Exception, requires: tuple[str, ...] = ()
    ) -> PluginInfo:
        """Record (or, in strict mode, raise) that ``scope`` failed; drop what it staged."""
        _dispatch.drop(scope)
        message = (
            f"odeplug plugin {scope.entry_point!r} ({scope.target}) from distribution "
            f"{scope.distribution} {scope.version} failed to load and was skipped: "
            f"{type(exc).__name__}: {exc}"
        )
        if self.strict:
            raise PluginError(message + " (ODEPLUG_STRICT_PLUGINS is set)") from exc
        warnings.warn(message, PluginLoadWarning, stacklevel=2)
        info = PluginInfo(
            scope.entry_point, scope.target, scope.distribution, scope.version, "failed",
            "".join(traceback.format_exception_only(type(exc), exc)).strip(), (), (), requires,
        )
        self.infos[(scope.entry_point, scope.target)] = info
        return info


def plugins() -> list[PluginInfo]:
    """Every plugin found, in load order: entry point, distribution and version, status,
    methods and names, and the plugins it requires."""
    return list(ensure_loaded())


def loaded() -> bool:
    """Whether every plugin has been loaded (or tried)."""
    return _loaded is not None


def reset_for_tests() -> None:
    """Forget load results so the next access reloads (tests inject entry points)."""
    global _loaded
    with _lock:
        _loaded = None


def unexport_for_tests(name: str) -> None:
    """Forget a name a test exported (tests register throw-away plugins)."""
    _exports.pop(name)
    _export_owner.pop(name)


def forget_plugin_for_tests(entry_point: str) -> None:
    """Undo a throw-away test plugin: its methods, its names, its load result."""
    _dispatch.forget_plugin_for_tests(entry_point)
    for name in [n for n, owner in _export_owner.items()
                 if owner is not None and owner.entry_point == entry_point]:
        unexport_for_tests(name)
    for key in [k for k in _done if k[0] == entry_point]:
        del _done[key]
