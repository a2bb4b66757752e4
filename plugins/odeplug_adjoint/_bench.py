"""Bench task ``adjoint``: backward NFE and time of Adjoint and Adjoint(Seminorm) against
``torchdiffeq.odeint_adjoint`` (default norm and its seminorm) on the sines task, side by side.

Two settings (issue 3): 50 output times at rtol = atol = 1e-3 for each width, and the seminorm's
own setting, two output times (loss on the final state) at 1e-6, W = 200, where output times do
not cut steps short.
"""

from __future__ import annotations

from typing import Any

import odeplug
from odeplug.bench import BenchOptions, task
from odeplug.bench._progress import progress
from odeplug.bench._sines import sines_backward


@task("adjoint", "Adjoint / Adjoint(Seminorm) vs torchdiffeq odeint_adjoint: backward NFE and time")
def adjoint_bench(options: BenchOptions) -> list[dict[str, Any]]:
    widths = options.widths or (200, 1000)
    repeats = options.repeats or 1
    settings = [(w, 50, options.tol or 1e-3) for w in widths] + [(200, 2, 1e-6)]
    pairs = [
        ("Adjoint", lambda: odeplug.Adjoint(), "torchdiffeq"),
        ("Adjoint(Seminorm)", lambda: odeplug.Adjoint(norm=odeplug.Seminorm()), "torchdiffeq-seminorm"),
    ]
    rows = []
    with progress(total=len(settings) * len(pairs), enabled=options.progress, desc="adjoint") as bar:
        for width, times, tol in settings:
            plain = None
            for label, make, reference in pairs:
                ours = sines_backward(make(), width, times, tol, options.seed, repeats, options.device)
                theirs = sines_backward(reference, width, times, tol, options.seed, repeats, options.device)
                if plain is None:
                    plain = ours
                rows.append({
                    "rule": label, "width": width, "outputs": times, "tol": tol,
                    "nfe_fwd": ours["nfe_forward"],
                    "nfe_bwd": ours["nfe_backward"], "nfe_bwd_tde": theirs["nfe_backward"],
                    "nfe_ratio": ours["nfe_backward"] / theirs["nfe_backward"],
                    "bwd_s": ours["backward_s"], "bwd_s_tde": theirs["backward_s"],
                    "time_ratio": ours["backward_s"] / theirs["backward_s"],
                    "vs_Adjoint_nfe": ours["nfe_backward"] / plain["nfe_backward"],
                })
                bar.update(1)
    return rows
