"""The ``odeplug`` command: ``odeplug plugins``, ``odeplug check`` and ``odeplug bench``."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import sys
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["main"]


def _csv_ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _rules(text: str) -> tuple[str, ...]:
    # Split on commas outside parentheses, so "Adjoint(norm=Seminorm()),Direct" works.
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current.strip())
    return tuple(parts)


def _version() -> str:
    """The installed distribution's version (a source tree run without installing has none)."""
    try:
        return importlib.metadata.version("odeplug")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="odeplug", description=__doc__)
    parser.add_argument("--version", action="version", version=f"odeplug {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    plugins = sub.add_parser("plugins", help="list plugins (entry point, distribution, status)")
    plugins.add_argument("--methods", action="store_true",
                         help="also list each generic function's methods and their plugin")

    check = sub.add_parser(
        "check", help="run odeplug.testing's checks on every noun of the named plugin(s)",
        description="Run every check of odeplug.testing on every noun (solver, norm, quadrature, "
                    "Wiener approximation, gradient rule) the named plugins provide; exit 1 if "
                    "any property fails.")
    check.add_argument("plugins", nargs="*", metavar="ENTRY_POINT_OR_MODULE",
                       help="an entry point of odeplug.plugins (e.g. norms) or a module "
                            "(e.g. odeplug_norms); default: every installed plugin")
    check.add_argument("--max-examples", type=_positive_int, metavar="N",
                       help="Hypothesis examples per property (default: each check's own bound)")
    check.add_argument("--derandomize", action="store_true",
                       help="draw the same examples on every run (for CI)")

    bench = sub.add_parser("bench", help="run a benchmark task (default: sines)")
    bench.add_argument("task", nargs="?", default="sines", help="task name (see --list)")
    bench.add_argument("--list", action="store_true", help="list the tasks and exit")
    bench.add_argument("--widths", type=_csv_ints, help="hidden widths, e.g. 200,1000")
    bench.add_argument("--epochs", help="training steps per rule")
    bench.add_argument("--rules", type=_rules,
                       help="rules to run, e.g. 'Direct,Adjoint(norm=Seminorm())' (default: all)")
    bench.add_argument("--tol", help="rtol = atol of the solver, a number in (0, 1)")
    bench.add_argument("--repeats", help="timing rounds (tasks that time one solve)")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:N")
    bench.add_argument("--threads", metavar="N",
                       help="torch intra-op threads for the task, set once before it runs "
                            "(default: torch's current setting, shown above the table); "
                            "1 on a shared machine")
    bench.add_argument("--processes", metavar="N",
                       help="train data-parallel over N gloo processes on this machine (DDP, the "
                            "batch split between them; --threads each, default 1) and report the "
                            "time per step and scaling efficiency against one process (sines, "
                            "spheres)")
    bench.add_argument("--json", metavar="FILE", help="also write the rows as JSON to FILE")
    bench.add_argument("--plot", metavar="FILE.png",
                       help="also draw the rows into FILE (time per step against width, backward "
                            "NFE and peak memory per rule; needs pip install 'odeplug[plot]')")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _format(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.{digits}g}"
        return f"{value:.{digits - 2}e}"
    return str(value)


def _spread_columns(rows: list[dict[str, Any]]) -> set[str]:
    """Columns ``X`` with ``X_min`` and ``X_max`` beside them in some row (odeplug.bench.spread)."""
    return {c for row in rows for c in row if f"{c}_min" in row and f"{c}_max" in row}


def _cell_value(row: dict[str, Any], column: str, spreads: set[str]) -> str:
    if column in spreads and f"{column}_min" in row and row.get(column) is not None:
        low, high = row[f"{column}_min"], row[f"{column}_max"]
        if low == high == row[column]:
            return _format(row[column])
        return f"{_format(row[column])} ({_format(low, 3)}–{_format(high, 3)})"
    return _format(row.get(column))


def _table_columns(rows: list[dict[str, Any]]) -> tuple[list[str], set[str]]:
    """The printed columns, in order of first appearance, and those printed as a spread."""
    spreads = _spread_columns(rows)
    hidden = {f"{c}_{end}" for c in spreads for end in ("min", "max")}
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns and c not in hidden]
    return columns, spreads


def print_table(rows: list[dict[str, Any]], out: Any = None) -> None:
    """Rows as a table; a column ``X`` with ``X_min`` and ``X_max`` beside it is printed as one
    column, ``median (min–max)``."""
    out = sys.stdout if out is None else out  # the stream now, not the one at import time
    if not rows:
        print("(no rows)", file=out)
        return
    columns, spreads = _table_columns(rows)
    cells = [[_cell_value(row, c, spreads) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip(), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip(), file=out)


def _plugins(args: argparse.Namespace) -> int:
    import odeplug
    from odeplug._dispatch import methods

    infos = odeplug.plugins()
    print_table([
        {"entry point": p.name, "target": p.value, "distribution": p.distribution,
         "version": p.version, "status": p.status + (f": {p.error}" if p.error else ""),
         "requires": ", ".join(p.requires) or "—", "names": ", ".join(p.names)}
        for p in infos
    ])
    if args.methods:
        print()
        print_table([
            {"verb": r.verb, "signature": f"({', '.join(t.__name__ for t in r.signature)})",
             "plugin": r.plugin or "user", "implementation": r.implementation}
            for r in sorted(methods(), key=lambda r: (r.verb, r.plugin or ""))
        ])
    failed = [p.name for p in infos if p.status != "loaded"]
    if failed:
        print(f"\n{len(failed)} plugin(s) failed to load: {', '.join(failed)} (see status above).",
              file=sys.stderr)
        return 1
    return 0


@contextlib.contextmanager
def _check_profile(derandomize: bool) -> Iterator[None]:
    """Hypothesis' default settings while the checks run: quiet (the table shows each
    counterexample), one bug per property (a group of them would hide the counterexamples),
    derandomised if asked; the caller's default is restored afterwards (tests call ``main``)."""
    from hypothesis import Verbosity, settings

    previous = settings.default
    settings.register_profile("odeplug check: caller's", previous)
    settings.register_profile("odeplug check", previous, verbosity=Verbosity.quiet,
                              report_multiple_bugs=False, derandomize=derandomize)
    settings.load_profile("odeplug check")
    try:
        yield
    finally:
        settings.load_profile("odeplug check: caller's")


def _check(args: argparse.Namespace) -> int:
    from odeplug.testing._registry import UnknownPluginError, plugin_names, plugin_nouns

    names = args.plugins or plugin_names()
    provided = {}
    for name in names:  # every name is resolved before anything runs
        try:
            provided[name] = plugin_nouns(name)
        except UnknownPluginError as exc:
            print(f"odeplug check: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:  # noqa: BLE001 - a plugin that cannot load fails its row
            provided[name] = exc
    with _check_profile(args.derandomize):
        settings = None  # each property's own bound
        if args.max_examples is not None:
            from hypothesis import settings as hypothesis_settings

            from odeplug.testing._properties import check_settings

            settings = hypothesis_settings(check_settings(), max_examples=args.max_examples)
        rows, failures, unchecked = _check_rows(provided, settings)
    print_table(rows)
    for outcome in failures:
        print(f"\nFAIL {outcome.subject}: {outcome.property}\n  {outcome.message}")
    for line in unchecked:
        print(f"\nnot checked: {line}")
    checked = sum(row["result"] in ("pass", "FAIL") for row in rows)
    print(f"\n{checked - len(failures)} of {checked} properties hold"
          + (f"; {len(failures)} failed" if failures else "")
          + (f"; {len(unchecked)} not checked" if unchecked else "") + ".")
    return 1 if failures else 0


def _check_rows(provided: dict[str, Any], settings: Any) -> tuple[list, list, list]:
    """Run every property of every noun: the table's rows, the failed outcomes, and a line per
    noun or property not checked, with the reason."""
    import attrs

    from odeplug.testing._properties import Outcome, run_properties
    from odeplug.testing._registry import noun_label, properties_for, skipped_properties

    rows: list[dict[str, Any]] = []
    failures: list[Outcome] = []
    unchecked: list[str] = []
    progress = sys.stderr.isatty()  # a long run says what it is checking; a log stays clean
    for name, nouns in provided.items():
        if isinstance(nouns, Exception):
            failures.append(Outcome(f"plugin {name}", "loads", False, None,
                                    f"{type(nouns).__name__}: {nouns}"))
            rows.append({"plugin": name, "noun": "—", "property": "loads", "result": "FAIL",
                         "counterexample": _cell(f"{type(nouns).__name__}: {nouns}")})
            continue
        if not nouns.nouns and not nouns.unchecked:
            unchecked.append(f"{name}: provides no solver, norm, quadrature, Wiener "
                             "approximation or gradient rule")
        for noun in nouns.nouns:
            label = noun_label(noun)
            if progress:
                print(f"odeplug check: {label} ({name})", file=sys.stderr, flush=True)
            try:
                outcomes = run_properties(properties_for(noun, settings=settings))
                skipped = skipped_properties(noun)
            except Exception as exc:  # noqa: BLE001 - checks that cannot be built fail too
                outcomes = [Outcome(label, "its checks can be built", False, None,
                                    f"{type(exc).__name__}: {exc}")]
                skipped = {}
            for outcome in outcomes:
                rows.append({"plugin": name, "noun": label, "property": outcome.property,
                             "result": "pass" if outcome.passed else "FAIL",
                             "counterexample": _cell(outcome.counterexample)})
                if not outcome.passed:
                    failures.append(attrs.evolve(outcome, subject=label))
            reasons = set(skipped.values())
            if not outcomes and len(reasons) == 1:  # nothing applies, for one reason: one row
                skipped = {"—": reasons.pop()}
            for prop, reason in skipped.items():
                rows.append({"plugin": name, "noun": label, "property": prop,
                             "result": _cell(f"not checked: {reason}"), "counterexample": None})
                unchecked.append(f"{label} ({name})" + (f", {prop}" if prop != "—" else "")
                                 + f": {reason}")
        for cls_name, reason in nouns.unchecked:
            rows.append({"plugin": name, "noun": cls_name, "property": "—",
                         "result": _cell(f"not checked: {reason}"), "counterexample": None})
            unchecked.append(f"{cls_name} ({name}): {reason}")
    return rows, failures, unchecked


def _cell(text: str | None, width: int = 60) -> str | None:
    """One line of at most ``width`` characters (the full text is printed below the table)."""
    if text is None:
        return None
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def _bench_error(message: str) -> int:
    print(f"odeplug bench: {message}", file=sys.stderr)
    return 2


def _optional_positive(name: str, text: str | None) -> int | None:
    """``text`` as a positive integer (None stays None); ValueError with a one-line message."""
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {text!r}")
    return value


def _check_tol(text: str | None) -> float | None:
    """``text`` as a tolerance in (0, 1) (None stays None); ValueError with a one-line message."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise ValueError(f"--tol must be a number between 0 and 1 (rtol = atol), got {text!r}")
    return value


def _check_device(text: str) -> str:
    """``text`` if it names the CPU or an available CUDA device; ValueError with a one-line
    message otherwise (the tasks put models and data on it and synchronise CUDA around timings)."""
    import torch

    from odeplug.bench._suggest import did_you_mean

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        typed = text.split(":")[0]
        typed = "cuda" if typed.lower() == "gpu" else typed  # what "gpu" means to torch
        raise ValueError(f"--device {text!r} is not a torch device"
                         f"{did_you_mean(typed, ('cpu', 'cuda')) or ';'} use cpu or cuda[:N]"
                         ) from None
    if device.type == "cpu":
        return "cpu"
    if device.type != "cuda":
        raise ValueError(f"--device {text!r}: the bench tasks run on cpu or cuda[:N]")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {text!r}: CUDA is not available here (torch {torch.__version__}"
                         + (", a CPU-only build" if torch.version.cuda is None else "")
                         + "); use --device cpu")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {text!r}: there are {torch.cuda.device_count()} CUDA device(s)")
    return text


def _facts_line(facts: dict[str, Any], why: str) -> str:
    device = facts["device"] + (f" ({facts['gpu']})" if facts.get("gpu") else "")
    return (f"threads {facts['threads']} ({why}; inter-op {facts['interop_threads']}) · "
            f"torch {facts['torch']} · odeplug {facts['odeplug']} · Python {facts['python']} · "
            f"{device} · CPU {facts['cpu']}")


def _bench(args: argparse.Namespace) -> int:
    from odeplug import InvalidArgumentError
    from odeplug.bench import (RUN_FACTS, BenchOptions, gradient_rules, run_facts, task_columns,
                               task_threads, tasks, torch_threads)
    from odeplug.bench._legend import legend_lines
    from odeplug.bench._suggest import did_you_mean

    available = tasks()
    if args.list:
        for name, (_, summary) in sorted(available.items()):
            print(f"{name:12s} {summary}")
        return 0
    if args.task not in available:
        return _bench_error(f"unknown task {args.task!r}"
                            f"{did_you_mean(args.task, available) or '.'} "
                            f"Tasks: {', '.join(sorted(available))}.")
    try:  # every value is checked before anything runs: one line each, no traceback
        threads = _optional_positive("--threads", args.threads)
        repeats = _optional_positive("--repeats", args.repeats)
        epochs = _optional_positive("--epochs", args.epochs)
        tol = _check_tol(args.tol)
        device = _check_device(args.device)
        processes = _optional_positive("--processes", args.processes) or 1
        if processes > 1:
            from odeplug.bench._processes import check_processes

            check_processes(args.task, processes, device)
        if args.rules:
            gradient_rules(args.rules)  # each name known and its options buildable
        if args.plot:
            from odeplug.bench._plot import check_can_draw

            check_can_draw(args.plot)
    except (ValueError, ImportError) as exc:  # InvalidArgumentError is a ValueError
        return _bench_error(" ".join(str(exc).split()))
    threads, why = task_threads(args.task, threads, device)
    if processes > 1 and args.threads is None:  # N processes share the cores: one thread each
        threads, why = 1, "per process, --processes"
    options = BenchOptions(
        widths=args.widths, epochs=epochs, rules=args.rules, tol=tol, seed=args.seed,
        repeats=repeats, progress=not args.no_progress and sys.stderr.isatty(),
        device=device, threads=threads, processes=processes,
    )
    fn, summary = available[args.task]
    print(f"odeplug bench {args.task}: {summary}")
    with torch_threads(threads):
        facts = run_facts(device)  # as set for the task, before it runs
        options.threads = facts["threads"]
        print(_facts_line(facts, why), flush=True)
        try:
            rows = fn(options)
        except InvalidArgumentError as exc:  # e.g. --rules naming no rule: one line
            return _bench_error(" ".join(str(exc).split()))
    shown = [{k: v for k, v in row.items() if k not in RUN_FACTS} for row in rows]
    print_table(shown)
    columns, spreads = _table_columns(shown)
    for line in legend_lines(columns, task_columns(args.task), spreads):
        print(line)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"task": args.task, "run": facts,
                       "rows": [{**row, **facts} for row in rows]}, fh, indent=2)
        print(f"wrote {args.json}")
    if args.plot:
        return _plot(args.task, summary, shown, facts, args.plot)
    return 0


def _plot(task: str, summary: str, rows: list[dict[str, Any]], facts: dict[str, Any],
          path: str) -> int:
    """Draw ``rows`` into ``path`` (after the table, so a run that cannot be drawn still shows)."""
    from odeplug.bench._plot import draw, panels

    figure_panels = panels(rows)
    if not figure_panels:
        print(f"odeplug bench: --plot: the rows of {task} carry no rule with a time per step, "
              "backward NFE or peak memory; nothing drawn", file=sys.stderr)
        return 1
    device = facts["device"] + (f" ({facts['gpu']})" if facts.get("gpu") else "")
    draw(figure_panels, path, f"odeplug bench {task}: {summary}",
         f"threads {facts['threads']} · torch {facts['torch']} · odeplug {facts['odeplug']} · "
         f"{device} · CPU {facts['cpu']}")
    print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"plugins": _plugins, "check": _check, "bench": _bench}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
