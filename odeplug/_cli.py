"""The ``odeplug`` command: ``odeplug plugins`` and ``odeplug bench``."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]


def _csv_ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


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
         "names": ", ".join(p.names)}
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
    if args.command == "plugins":
        return _plugins(args)
    return _bench(args)


if __name__ == "__main__":
    sys.exit(main())
