"""Solver overhead: odeplug's Dopri5 against torchdiffeq's dopri5 on the same forward solve.

MLP vector field (width 64, two hidden layers, tanh), batch 16, rtol 1e-6, float32. Runs are
interleaved so both see the same machine state; the row reports the median time ratio and both
NFE counts (which must be equal: the step sequences are the same).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from . import BenchOptions, task
from ._progress import progress


@task("overhead", "forward-solve time of Dopri5 vs torchdiffeq.odeint(dopri5), same problem")
def overhead(options: BenchOptions) -> list[dict[str, Any]]:
    import torchdiffeq

    import odeplug

    torch.manual_seed(options.seed)
    width = (options.widths or (64,))[0]
    tol = options.tol or 1e-6
    repeats = options.repeats or 30
    dim = 4
    net = torch.nn.Sequential(
        torch.nn.Linear(dim, width), torch.nn.Tanh(), torch.nn.Linear(width, width),
        torch.nn.Tanh(), torch.nn.Linear(width, dim),
    ).to(options.device)
    field = lambda t, y: net(y)  # noqa: E731
    y0 = torch.randn(16, dim, device=options.device)
    ts = torch.linspace(0, 10, 20, device=options.device)
    solver = odeplug.Dopri5(rtol=tol, atol=tol)
    counter = {"nfe": 0}

    def counted(t, y):
        counter["nfe"] += 1
        return net(y)

    def ours() -> Any:
        with torch.no_grad():
            return odeplug.solve(odeplug.ODEProblem(field, y0, ts), solver)

    def theirs() -> Any:
        with torch.no_grad():
            return torchdiffeq.odeint(counted, y0, ts, rtol=tol, atol=tol, method="dopri5")

    def timed(fn: Any) -> float:
        if options.device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if options.device != "cpu":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for _ in range(3):  # warm-up
        ours(), theirs()
    ours_t, theirs_t = [], []
    with progress(total=repeats, enabled=options.progress, desc="overhead") as bar:
        for _ in range(repeats):
            ours_t.append(timed(ours))
            theirs_t.append(timed(theirs))
            bar.update(1)
    counter["nfe"] = 0
    theirs()
    nfe_ours = ours().stats["nfe"]
    ratios = [a / b for a, b in zip(ours_t, theirs_t)]
    return [{
        "width": width,
        "odeplug_s": statistics.median(ours_t),
        "torchdiffeq_s": statistics.median(theirs_t),
        "time_ratio": statistics.median(ratios),
        "nfe_odeplug": nfe_ours,
        "nfe_torchdiffeq": counter["nfe"],
    }]
