"""Finding the bench tasks plugins provide, through the entry-point group ``odeplug.bench``.

A plugin's bench code is not its method's code: loading a plugin (on the first ``solve``) must
not import the benchmark harness, its models and its data. So the tasks are declared apart from
the plugin's ``register()`` hook, as an entry point naming the *module* that registers them with
:func:`odeplug.bench.task` when it is imported::

    [project.entry-points."odeplug.bench"]
    myplugin = "my_plugin.benchmarks"

Only :func:`odeplug.bench.tasks` (that is, ``odeplug bench``) imports these modules, once per
process, after every plugin has loaded (a task's module may use any plugin's names). A module
that fails to import gives one :class:`~odeplug.PluginLoadWarning` naming the entry point, its
distribution and version, and leaves no task behind; the other tasks still run.
``ODEPLUG_STRICT_PLUGINS=1`` turns the warning into an error, as it does for plugins.
"""

from __future__ import annotations

import importlib.metadata
import os
import threading
import warnings
from collections.abc import Callable

from .._errors import PluginError
from .._plugins import BUILTIN_DISTRIBUTION, PluginLoadWarning, _distribution

__all__ = ["GROUP", "load_task_modules"]

GROUP = "odeplug.bench"

_lock = threading.Lock()
_loaded = False


def load_task_modules(registered: Callable[[], set[str]], forget: Callable[[str], None]) -> None:
    """Import every module of the ``odeplug.bench`` group once (the built-in distribution's
    first, then the others, each by entry-point name).

    ``registered`` gives the names of the tasks registered so far and ``forget`` drops one: a
    module that fails part-way through its import leaves none of the tasks it registered."""
    global _loaded
    with _lock:
        if _loaded:
            return
        strict = os.environ.get("ODEPLUG_STRICT_PLUGINS", "") not in ("", "0")
        entry_points = sorted(
            importlib.metadata.entry_points(group=GROUP),
            key=lambda e: (_distribution(e)[0] != BUILTIN_DISTRIBUTION, e.name),
        )
        for ep in entry_points:
            before = registered()
            try:
                ep.load()
            except Exception as exc:  # isolation: a broken bench module must not hide the rest
                for name in registered() - before:
                    forget(name)
                distribution, version = _distribution(ep)
                message = (
                    f"odeplug bench tasks {ep.name!r} ({ep.value}) from distribution "
                    f"{distribution} {version} failed to load and were skipped: "
                    f"{type(exc).__name__}: {exc}"
                )
                if strict:
                    raise PluginError(message + " (ODEPLUG_STRICT_PLUGINS is set)") from exc
                warnings.warn(message, PluginLoadWarning, stacklevel=3)
        _loaded = True
