"""Finding and loading plugins through the entry-point group ``odeplug.plugins``.

Each entry point names a zero-argument ``register()`` hook. Loading is lazy (first ``solve``, or
first lookup of a plugin-provided name on ``odeplug``) and isolated: a plugin whose import or hook
fails gives one :class:`PluginLoadWarning` naming the entry point, its distribution and version,
and everything else still works. ``ODEPLUG_STRICT_PLUGINS=1`` turns that warning into an error.
"""

from __future__ import annotations

import importlib.metadata
import os
import threading
import traceback
import warnings
from typing import Any

import attrs

from ._dispatch import methods, plugin_context
from ._errors import PluginError

__all__ = ["PluginInfo", "PluginLoadWarning", "plugins", "ensure_loaded", "export", "exported"]

GROUP = "odeplug.plugins"


class PluginLoadWarning(UserWarning):
    """A plugin failed to load; the others were loaded."""


@attrs.frozen
class PluginInfo:
    """One entry point of the ``odeplug.plugins`` group and what became of it."""

    name: str
    value: str
    distribution: str
    version: str
    status: str  # "loaded" | "failed"
    error: str | None
    methods: tuple[str, ...]
    names: tuple[str, ...]


_lock = threading.RLock()
_loaded: list[PluginInfo] | None = None
_exports: dict[str, Any] = {}
_export_owner: dict[str, str] = {}
_current: list[str] = []
_done: dict[tuple[str, str], PluginInfo] = {}  # hooks run once per process, even across reloads
# The thread loading plugins may look names up on odeplug from a plugin's import (re-entry); it
# alone answers from what is loaded so far. Other threads wait on the lock for the whole set.
_this_thread = threading.local()


def _loading() -> bool:
    return getattr(_this_thread, "loading", False)


def export(*objects: Any) -> None:
    """Make ``objects`` reachable as ``odeplug.<name>`` (call from a plugin's register hook)."""
    owner = _current[-1] if _current else "user"
    for obj in objects:
        name = obj.__name__
        if name in _exports and _exports[name] is not obj:
            raise PluginError(
                f"{owner!r} exports {name!r}, already exported by {_export_owner[name]!r}; "
                "choose another name."
            )
        _exports[name] = obj
        _export_owner[name] = owner


def exported() -> dict[str, Any]:
    if not _loading():
        ensure_loaded()
    return dict(_exports)


def _distribution(ep: importlib.metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "?", "?"
    return dist.metadata["Name"], dist.version


def ensure_loaded() -> list[PluginInfo]:
    """Load every plugin once (thread-safe); return what happened to each."""
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
    strict = os.environ.get("ODEPLUG_STRICT_PLUGINS", "") not in ("", "0")
    infos: list[PluginInfo] = []
    seen: set[tuple[str, str]] = set()
    for ep in sorted(importlib.metadata.entry_points(group=GROUP), key=lambda e: e.name):
        key = (ep.name, ep.value)
        if key in seen:  # the same distribution found twice on sys.path
            continue
        seen.add(key)
        if key not in _done:
            info = _load_one(ep, strict)
            if info.status == "loaded":
                _done[key] = info
        else:
            info = _done[key]
        infos.append(info)
    _loaded = infos
    return infos


def _load_one(ep: importlib.metadata.EntryPoint, strict: bool) -> PluginInfo:
    dist, version = _distribution(ep)
    module_root = ep.value.split(":")[0].split(".")[0]
    before_methods = len(methods())
    before_names = set(_exports)
    _current.append(ep.name)
    try:
        with plugin_context(ep.name, module_root):
            hook = ep.load()
            hook()
    except Exception as exc:  # isolation: a broken plugin must not break the rest
        message = (
            f"odeplug plugin {ep.name!r} ({ep.value}) from distribution {dist} {version} failed "
            f"to load and was skipped: {type(exc).__name__}: {exc}"
        )
        if strict:
            raise PluginError(message + " (ODEPLUG_STRICT_PLUGINS is set)") from exc
        warnings.warn(message, PluginLoadWarning, stacklevel=3)
        return PluginInfo(
            ep.name, ep.value, dist, version, "failed",
            "".join(traceback.format_exception_only(type(exc), exc)).strip(), (), (),
        )
    finally:
        _current.pop()
    added = methods()[before_methods:]
    return PluginInfo(
        name=ep.name,
        value=ep.value,
        distribution=dist,
        version=version,
        status="loaded",
        error=None,
        methods=tuple(
            f"{r.verb}({', '.join(t.__name__ for t in r.signature)})" for r in added
        ),
        names=tuple(sorted(set(_exports) - before_names)),
    )


def plugins() -> list[PluginInfo]:
    """Every plugin found: entry point, distribution and version, status, methods and names."""
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
