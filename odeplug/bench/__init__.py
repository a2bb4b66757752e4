"""``odeplug bench``: measured side by side, in one process, never hard-coded.

A task is a function ``task(options) -> list[dict]`` registered with :func:`task`; each dict is
one printed row. Tasks measure every registered gradient rule they apply to, so a rule appears
in the bench the moment its plugin registers. Plugins may register tasks of their own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

__all__ = ["BenchOptions", "task", "tasks", "gradient_rules"]


@attrs.define
class BenchOptions:
    """Options shared by the tasks (each uses those that apply)."""

    widths: tuple[int, ...] | None = None
    epochs: int | None = None
    rules: tuple[str, ...] | None = None
    tol: float | None = None
    seed: int = 0
    repeats: int | None = None
    progress: bool = True
    device: str = "cpu"


_TASKS: dict[str, tuple[Callable[[BenchOptions], list[dict[str, Any]]], str]] = {}


def task(name: str, summary: str) -> Callable[[Callable[[BenchOptions], list[dict[str, Any]]]], Any]:
    """Register a bench task under ``name`` (the first line of ``odeplug bench --list``)."""

    def decorate(fn: Callable[[BenchOptions], list[dict[str, Any]]]) -> Any:
        if name in _TASKS:
            raise ValueError(f"bench task {name!r} is already registered")
        _TASKS[name] = (fn, summary)
        return fn

    return decorate


def tasks() -> dict[str, tuple[Callable[[BenchOptions], list[dict[str, Any]]], str]]:
    from . import _jumps, _overhead, _sines  # noqa: F401  (built-in tasks register on import)
    from .._plugins import ensure_loaded

    ensure_loaded()
    return dict(_TASKS)


def gradient_rules(selected: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Every registered, instantiable gradient rule (defaults, or the configurations its class
    lists in ``bench_variants``), or those named in ``selected``.

    Names may carry options, e.g. ``Adjoint(norm=Seminorm())``, evaluated against odeplug's names.
    """
    import odeplug

    from .._plugins import exported

    names = exported()
    if selected:
        rules = {}
        for spec in selected:
            try:
                rules[spec] = eval(spec if "(" in spec else spec + "()", {}, names)  # noqa: S307
            except Exception as exc:
                raise odeplug.InvalidArgumentError(
                    f"--rules: cannot build {spec!r} ({exc}); known rules: "
                    f"{', '.join(n for n, v in names.items() if _is_rule(v))}."
                ) from exc
        return rules
    rules: dict[str, Any] = {}
    for name, value in sorted(names.items()):
        if not _is_rule(value):
            continue
        # A rule class may list the configurations worth benchmarking (label, factory).
        for label, factory in getattr(value, "bench_variants", ((name, value),)):
            rules[label] = factory()
    return rules


def _is_rule(value: Any) -> bool:
    import odeplug

    return (
        isinstance(value, type)
        and issubclass(value, odeplug.GradientRule)
        and value.__dict__.get("_odeplug_final", False)
    )
