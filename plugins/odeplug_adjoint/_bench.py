"""Bench task ``adjoint``: backward NFE and time of Adjoint and Adjoint(Seminorm) against
``torchdiffeq.odeint_adjoint`` (default norm and its seminorm) on the sines task, side by side.

Two settings (issue 3): 50 output times at rtol = atol = 1e-3 for each width, and the seminorm's
own setting, two output times (loss on the final state) at 1e-6, at the first width (W = 200 by
default), where output times do not cut steps short.

In each setting the four backward passes (ours and torchdiffeq's, plain and seminorm) are built
on identical models, warmed up once each, then timed in ``--repeats`` rounds (default 3), each
round every one of them once, the order rotated from round to round; ``bwd_s`` and
``bwd_s_tde`` are medians with min and max over the rounds, ``time_ratio`` the median (min, max)
of the same-round ratios ours / torchdiffeq's.
"""

from __future__ import annotations

from typing import Any

import odeplug
from odeplug.bench import BenchOptions, interleaved, spread, task
from odeplug.bench._progress import progress
from odeplug.bench._sines import SinesBackward


@task("adjoint", "Adjoint / Adjoint(Seminorm) vs torchdiffeq odeint_adjoint: backward NFE and time",
      columns={
          "nfe_bwd_tde": "torchdiffeq's backward evaluations (its plain or seminorm adjoint)",
          "nfe_ratio": "nfe_bwd ÷ nfe_bwd_tde",
          "bwd_s_tde": "seconds of torchdiffeq's backward pass",
          "time_ratio": "bwd_s ÷ bwd_s_tde, same round",
          "vs_Adjoint_nfe": "nfe_bwd ÷ the plain Adjoint's in the same setting",
      })
def adjoint_bench(options: BenchOptions) -> list[dict[str, Any]]:
    widths = options.widths or (200, 1000)
    repeats = options.repeats or 3
    settings = [(w, 50, options.tol or 1e-3) for w in widths] + [(widths[0], 2, 1e-6)]
    pairs = [
        ("Adjoint", lambda: odeplug.Adjoint(), "torchdiffeq"),
        ("Adjoint(Seminorm)", lambda: odeplug.Adjoint(norm=odeplug.Seminorm()), "torchdiffeq-seminorm"),
    ]
    rows = []
    with progress(total=len(settings) * 2 * len(pairs) * (repeats + 1), enabled=options.progress,
                  desc="adjoint") as bar:
        for width, times, tol in settings:
            runs = {}
            for label, make, reference in pairs:
                runs[label] = SinesBackward(make(), width, times, tol, options.seed, options.device)
                runs[reference] = SinesBackward(reference, width, times, tol, options.seed, options.device)
            results: dict[str, list[tuple[float, int, int]]] = {name: [] for name in runs}
            for name, run in runs.items():  # warm-up: first-call costs of autograd and allocators
                run()
                bar.update(1)
            for _, name in interleaved(list(runs), repeats):
                results[name].append(runs[name]())
                bar.update(1)
            plain = results["Adjoint"][-1]
            for label, _, reference in pairs:
                ours, theirs = results[label], results[reference]
                rows.append({
                    "rule": label, "width": width, "outputs": times, "tol": tol,
                    "nfe_fwd": ours[-1][1],
                    "nfe_bwd": ours[-1][2], "nfe_bwd_tde": theirs[-1][2],
                    "nfe_ratio": ours[-1][2] / theirs[-1][2],
                    **spread("bwd_s", (r[0] for r in ours)),
                    **spread("bwd_s_tde", (r[0] for r in theirs)),
                    **spread("time_ratio", (a[0] / b[0] for a, b in zip(ours, theirs))),
                    "vs_Adjoint_nfe": ours[-1][2] / plain[2],
                })
    return rows
