"""Bench tasks of the quadrature adjoints (issue 4), measured side by side in one process.

``gq``: one backward pass on the sines task per rule (GQAdjoint, GaussAdjoint, Adjoint,
Adjoint(Seminorm), Direct) and ``torchdiffeq.odeint_adjoint``, with the time ratios the issue
targets (GQ / torchdiffeq, GQ / Adjoint).

``spheres``: training-step time and final loss on nested spheres (Norcliffe & Deisenroth, sec.
5.2): 2-D points, class 0 inside r < 0.4, class 1 in 0.7 < r < 0.9; an augmented neural ODE
(3 zero dimensions), time-dependent MLP, t ∈ [0, 1], linear read-out, cross entropy, batch 200.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import torch

import odeplug
from odeplug.bench import BenchOptions, gradient_rules, task
from odeplug.bench._progress import progress
from odeplug.bench._models import softplus_mlp
from odeplug.bench._sines import sines_backward


def _rules_for(options: BenchOptions) -> dict[str, Any]:
    if options.rules:
        return gradient_rules(options.rules)
    return {
        "GQAdjoint": odeplug.GQAdjoint(),
        "GaussAdjoint": odeplug.GaussAdjoint(),
        "Adjoint": odeplug.Adjoint(),
        "Adjoint(Seminorm)": odeplug.Adjoint(norm=odeplug.Seminorm()),
        "Direct": odeplug.Direct(),
    }


@task("gq", "GQAdjoint vs Adjoint, Seminorm, GaussAdjoint, Direct, torchdiffeq: one sines backward")
def gq_bench(options: BenchOptions) -> list[dict[str, Any]]:
    widths = options.widths or (200,)
    tol = options.tol or 1e-3
    repeats = options.repeats or 1
    rules = _rules_for(options)
    rows = []
    with progress(total=len(widths) * (len(rules) + 1), enabled=options.progress, desc="gq") as bar:
        for width in widths:
            reference = sines_backward("torchdiffeq", width, 50, tol, options.seed, repeats, options.device)
            bar.update(1)
            results = {}
            for name, rule in rules.items():
                results[name] = sines_backward(rule, width, 50, tol, options.seed, repeats, options.device)
                bar.update(1)
            results["torchdiffeq odeint_adjoint"] = reference
            adjoint = results.get("Adjoint")
            for name, r in results.items():
                rows.append({
                    "rule": name, "width": width, "nfe_fwd": r["nfe_forward"], "nfe_bwd": r["nfe_backward"],
                    "bwd_s": r["backward_s"], "vs_torchdiffeq": r["backward_s"] / reference["backward_s"],
                    "vs_Adjoint": None if adjoint is None else r["backward_s"] / adjoint["backward_s"],
                })
    return rows


class SpheresField(torch.nn.Module):
    """Time-dependent MLP on the augmented state: f(t, z) = MLP([z, t]), two hidden layers."""

    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        self.net = softplus_mlp(dim + 1, width, dim)

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z, t.expand(z.shape[0], 1)], dim=-1))


def nested_spheres(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (count,), generator=g)
    radius = torch.where(labels == 0, 0.4 * torch.rand(count, generator=g).sqrt(),
                         0.7 + 0.2 * torch.rand(count, generator=g))
    angle = 2 * math.pi * torch.rand(count, generator=g)
    return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], 1), labels


@task("spheres", "nested spheres (augmented neural ODE): training-step time and loss per rule")
def spheres_bench(options: BenchOptions) -> list[dict[str, Any]]:
    widths = options.widths or (20,)
    epochs = options.epochs or 5
    tol = options.tol or 1e-3
    rules = _rules_for(options)
    x, labels = nested_spheres(200, options.seed)
    z0 = torch.cat([x, torch.zeros(200, 3)], dim=1).to(options.device)
    labels = labels.to(options.device)
    ts = torch.tensor([0.0, 1.0], device=options.device)
    rows = []
    with progress(total=len(widths) * len(rules) * epochs, enabled=options.progress, desc="spheres") as bar:
        for width in widths:
            for name, rule in rules.items():
                torch.manual_seed(options.seed)
                field = SpheresField(5, width).to(options.device)
                readout = torch.nn.Linear(5, 2).to(options.device)
                optimiser = torch.optim.Adam([*field.parameters(), *readout.parameters()], lr=1e-3)
                times, nfe_b, loss_value = [], [], float("nan")
                for _ in range(epochs):
                    start = time.perf_counter()
                    optimiser.zero_grad()
                    sol = odeplug.solve(odeplug.ODEProblem(field, z0, ts), odeplug.Dopri5(rtol=tol, atol=tol), rule)
                    loss = torch.nn.functional.cross_entropy(readout(sol.ys[-1]), labels)
                    loss.backward()
                    optimiser.step()
                    if options.device != "cpu":
                        torch.cuda.synchronize()
                    times.append(time.perf_counter() - start)
                    nfe_b.append(sol.stats.get("nfe_backward"))
                    loss_value = float(loss.detach())
                    bar.update(1)
                rows.append({"rule": name, "width": width, "step_s": statistics.median(times),
                             "nfe_bwd": nfe_b[-1], "final_loss": loss_value})
    return rows
