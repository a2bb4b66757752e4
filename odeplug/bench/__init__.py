"""``odeplug bench``: measured side by side, in one process, never hard-coded.

A task is a function ``task(options) -> list[dict]`` registered with :func:`task`; each dict is
one printed row. Tasks measure every registered gradient rule they apply to, so a rule appears
in the bench the moment its plugin registers. Plugins may register tasks of their own, in a
module of their own that an ``odeplug.bench`` entry point names: only ``odeplug bench`` imports
it (:mod:`odeplug.bench._discovery`), so loading a plugin costs nothing for its bench.

Timings people can trust (docs/benchmarks.md, "Measuring fairly"): a task that times several
rules runs them in rounds (:func:`interleaved`: each round every rule once, the order rotated
from round to round), so that a change in the machine's speed hits every rule alike, and reports
each timed quantity as its median with its min and max over the rounds (:func:`spread`: keys
``X``, ``X_min``, ``X_max``; the table prints ``median (min–max)``). The command sets torch's
thread count once before the task runs (:func:`torch_threads`) and attaches the run's facts
(:func:`run_facts`: threads, versions, device, CPU model) to every JSON row.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import attrs

__all__ = ["BenchOptions", "task", "tasks", "task_threads", "task_columns", "gradient_rules",
           "interleaved", "spread", "run_facts", "torch_threads", "cpu_model", "RUN_FACTS"]

_K = TypeVar("_K")


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
    threads: int | None = None  # torch's intra-op threads, set by the command before the task
    processes: int = 1  # data-parallel processes (--processes; odeplug.bench._processes)


_TASKS: dict[str, tuple[Callable[[BenchOptions], list[dict[str, Any]]], str]] = {}
_CPU_THREADS: dict[str, int] = {}
_COLUMNS: dict[str, dict[str, str]] = {}


def task(name: str, summary: str, *, cpu_threads: int | None = None,
         columns: dict[str, str] | None = None
         ) -> Callable[[Callable[[BenchOptions], list[dict[str, Any]]]], Any]:
    """Register a bench task under ``name`` (the first line of ``odeplug bench --list``).

    ``cpu_threads``: the thread count the task runs with on CPU when ``--threads`` is not given
    and ``OMP_NUM_THREADS`` is not set (default: torch's current setting).
    ``columns``: what the task's own columns mean, with units, for the legend under its table
    (names that several tasks share, ``step_s``, ``nfe_backward``, ``peak_MB``, ..., are
    described once in ``odeplug.bench._legend.COLUMNS``)."""

    def decorate(fn: Callable[[BenchOptions], list[dict[str, Any]]]) -> Any:
        if name in _TASKS:
            raise ValueError(f"bench task {name!r} is already registered")
        _TASKS[name] = (fn, summary)
        if cpu_threads is not None:
            _CPU_THREADS[name] = cpu_threads
        if columns:
            _COLUMNS[name] = dict(columns)
        return fn

    return decorate


def task_columns(name: str) -> dict[str, str]:
    """The descriptions of task ``name``'s own columns (``task(..., columns=...)``)."""
    return dict(_COLUMNS.get(name, {}))


def _forget_task(name: str) -> None:
    for registry in (_TASKS, _CPU_THREADS, _COLUMNS):
        registry.pop(name, None)


def task_threads(name: str, threads: int | None, device: str) -> tuple[int | None, str]:
    """The thread count to run task ``name`` with (None: leave torch's setting) and why."""
    if threads is not None:
        return threads, "--threads"
    if name in _CPU_THREADS and device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        return _CPU_THREADS[name], f"the {name} task's default on CPU"
    if "OMP_NUM_THREADS" in os.environ:
        return None, "OMP_NUM_THREADS"
    return None, "torch's default"


def tasks() -> dict[str, tuple[Callable[[BenchOptions], list[dict[str, Any]]], str]]:
    """Every task: odeplug's own, then those of the ``odeplug.bench`` entry points, whose
    modules are imported here, on first call, after the plugins loaded (never by a solve)."""
    from . import _compiled, _guide, _jumps, _overhead, _sines  # noqa: F401  (built-in tasks register on import)
    from .._plugins import ensure_loaded
    from ._discovery import load_task_modules

    ensure_loaded()
    load_task_modules(registered=lambda: set(_TASKS), forget=_forget_task)
    return dict(_TASKS)


def gradient_rules(selected: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Every registered, instantiable gradient rule (defaults, or the configurations its class
    lists in ``bench_variants``), or those named in ``selected``.

    Names may carry options, e.g. ``Adjoint(norm=Seminorm())``, evaluated against odeplug's names.
    A name that is no rule, or options that do not build, raise ``InvalidArgumentError`` with a
    one-line message for ``--rules`` (with the closest known name, for a typo).
    """
    import odeplug

    from .._plugins import exported
    from ._suggest import did_you_mean

    names = exported()
    if selected:
        known = sorted(n for n, v in names.items() if _is_rule(v))
        rules = {}
        for spec in selected:
            rule_name = spec.split("(", 1)[0].strip()
            if rule_name not in known:
                raise odeplug.InvalidArgumentError(
                    f"unknown rule {rule_name!r} for --rules"
                    f"{did_you_mean(rule_name, known) or '.'} Known: {', '.join(known)}."
                )
            try:
                rules[spec] = eval(spec if "(" in spec else spec + "()", {}, names)  # noqa: S307
            except Exception as exc:
                misspelt = getattr(exc, "name", None) if isinstance(exc, NameError) else None
                hint = did_you_mean(misspelt, names) if misspelt else ""
                raise odeplug.InvalidArgumentError(
                    f"--rules: cannot build {spec!r}: {type(exc).__name__}: "
                    f"{' '.join(str(exc).split())}{hint}"
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


# -- fair timing: rounds, spread, threads and the facts of the run ------------------------------


def interleaved(names: Sequence[_K], repeats: int) -> Iterator[tuple[int, _K]]:
    """``(round, name)`` for ``repeats`` rounds: each round every name once, the order rotated by
    one from round to round, so that drift in the machine's speed (another process, heat) hits
    every name alike and no name always runs first or last."""
    names = list(names)
    for r in range(repeats):
        for i in range(len(names)):
            yield r, names[(i + r) % len(names)]


def spread(key: str, samples: Iterable[float]) -> dict[str, float]:
    """``{key: median, key_min: min, key_max: max}`` of ``samples`` (the table prints
    ``median (min–max)`` in one column)."""
    values = list(samples)
    if not values:
        raise ValueError(f"spread({key!r}): no samples")
    return {key: statistics.median(values), f"{key}_min": min(values), f"{key}_max": max(values)}


def cpu_model() -> str:
    """The CPU's model name: /proc/cpuinfo's "model name" on Linux, else platform.processor()."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


#: The keys :func:`run_facts` gives, attached to every JSON row (and printed once above the table).
RUN_FACTS = ("threads", "interop_threads", "torch", "odeplug", "python", "device", "gpu", "cpu")


def run_facts(device: str) -> dict[str, Any]:
    """The facts of this run every timing depends on: torch's intra-op and inter-op thread
    counts (as they are now), the torch, odeplug and Python versions, the device (and the GPU's
    name on CUDA), and the CPU model."""
    import torch

    import odeplug

    gpu = None
    if device.startswith("cuda") and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(torch.device(device))
    return {
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__,
        "odeplug": odeplug.__version__,
        "python": platform.python_version(),
        "device": device,
        "gpu": gpu,
        "cpu": cpu_model(),
    }


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with torch's intra-op thread count set to ``threads`` (None: as it is),
    restored afterwards. The inter-op count is set too where torch still allows it (once per
    process, before any inter-op work); otherwise it is left as it is (run_facts records it)."""
    import torch

    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already set, or inter-op work already started
        torch.set_num_interop_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
