"""The ``odeplug`` command: ``odeplug plugins``, ``odeplug check`` and ``odeplug bench``."""

from __future__ import annotations

import argparse
import contextlib
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="odeplug", description=__doc__)
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
    bench.add_argument("--epochs", type=int, help="training steps per rule")
    bench.add_argument("--rules", type=_rules,
                       help="rules to run, e.g. 'Direct,Adjoint(norm=Seminorm())' (default: all)")
    bench.add_argument("--tol", type=float, help="rtol = atol of the solver")
    bench.add_argument("--repeats", type=int, help="timing repeats (tasks that time one solve)")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    bench.add_argument("--json", metavar="FILE", help="also write the rows as JSON to FILE")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _format(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:.2e}"
    return str(value)


def print_table(rows: list[dict[str, Any]], out: Any = None) -> None:
    out = sys.stdout if out is None else out  # the stream now, not the one at import time
    if not rows:
        print("(no rows)", file=out)
        return
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    cells = [[_format(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)), file=out)


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


def _bench(args: argparse.Namespace) -> int:
    from odeplug.bench import BenchOptions, tasks

    available = tasks()
    if args.list:
        for name, (_, summary) in sorted(available.items()):
            print(f"{name:12s} {summary}")
        return 0
    if args.task not in available:
        print(f"odeplug bench: unknown task {args.task!r}; tasks: {', '.join(sorted(available))}",
              file=sys.stderr)
        return 2
    options = BenchOptions(
        widths=args.widths, epochs=args.epochs, rules=args.rules, tol=args.tol, seed=args.seed,
        repeats=args.repeats, progress=not args.no_progress and sys.stderr.isatty(),
        device=args.device,
    )
    fn, summary = available[args.task]
    print(f"odeplug bench {args.task}: {summary}")
    rows = fn(options)
    print_table(rows)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"task": args.task, "rows": rows}, fh, indent=2)
        print(f"wrote {args.json}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"plugins": _plugins, "check": _check, "bench": _bench}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
