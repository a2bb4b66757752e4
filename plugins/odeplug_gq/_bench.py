"""Bench tasks of the quadrature adjoints (issue 4), measured side by side in one process.

``gq``: one backward pass on the sines task per rule (GQAdjoint with its error-controlled
default and with the paper's C = 0.1, GaussAdjoint, Adjoint, Adjoint(Seminorm), Direct) and
``torchdiffeq.odeint_adjoint``, with the time ratios the issues target (GQ / torchdiffeq,
GQ / Adjoint). Every rule and torchdiffeq is warmed up once, then all run in ``--repeats``
rounds (default 3), each once per round in an order rotated from round to round, so that a
change in the machine's speed hits all of them alike; ``bwd_s`` is the median with min and max
over the rounds, the ratios are medians (min, max) of same-round ratios.

``gq-accuracy``: the gradient error of GQAdjoint (error-controlled, and with the paper's
C = 0.1), GaussAdjoint and Adjoint, same tolerances, on torchdiffeq's demo problem dy/dt = y³A
(examples/ode_demo.py; against Direct at tolerance 1e-12, float64) with 2 and 26 output times,
and on dz/dt = Az with a full 2×2 A over [0, 60] (closed-form gradients).

``spheres``: training-step time and final loss on nested spheres (Norcliffe & Deisenroth, sec.
5.2): 2-D points, class 0 inside r < 0.4, class 1 in 0.7 < r < 0.9; an augmented neural ODE
(3 zero dimensions), time-dependent MLP, t ∈ [0, 1], linear read-out, cross entropy, batch 200.
The rules train identically initialised models step by step in turns (order rotated each round);
the first round is an untimed warm-up; ``step_s`` is the median with min and max.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

import odeplug
from odeplug.bench import BenchOptions, gradient_rules, interleaved, spread, task
from odeplug.bench._progress import progress
from odeplug.bench._processes import SolveModule, data_parallel_task, distributed, run_data_parallel, shard
from odeplug.bench._models import softplus_mlp
from odeplug.bench._sines import SinesBackward


def _rules_for(options: BenchOptions) -> dict[str, Any]:
    if options.rules:
        return gradient_rules(options.rules)
    return {
        "GQAdjoint": odeplug.GQAdjoint(),
        "GQAdjoint(C=0.1)": odeplug.GQAdjoint(C=0.1),
        "GaussAdjoint": odeplug.GaussAdjoint(),
        "Adjoint": odeplug.Adjoint(),
        "Adjoint(Seminorm)": odeplug.Adjoint(norm=odeplug.Seminorm()),
        "Direct": odeplug.Direct(),
    }


@task("gq", "GQAdjoint vs Adjoint, Seminorm, GaussAdjoint, Direct, torchdiffeq: one sines backward",
      columns={"vs_torchdiffeq": "bwd_s ÷ torchdiffeq odeint_adjoint's, same round",
               "vs_Adjoint": "bwd_s ÷ the Adjoint rule's, same round"})
def gq_bench(options: BenchOptions) -> list[dict[str, Any]]:
    widths = options.widths or (200,)
    tol = options.tol or 1e-3
    repeats = options.repeats or 3
    rules = _rules_for(options)
    reference_name = "torchdiffeq odeint_adjoint"
    rows = []
    with progress(total=len(widths) * (len(rules) + 1) * (repeats + 1), enabled=options.progress,
                  desc="gq") as bar:
        for width in widths:
            runs = {name: SinesBackward(rule, width, 50, tol, options.seed, options.device)
                    for name, rule in rules.items()}
            runs[reference_name] = SinesBackward("torchdiffeq", width, 50, tol, options.seed, options.device)
            results: dict[str, list[tuple[float, int, int]]] = {name: [] for name in runs}
            for run in runs.values():  # warm-up: first-call costs of autograd and allocators
                run()
                bar.update(1)
            for _, name in interleaved(list(runs), repeats):  # every run once per round, rotated
                results[name].append(runs[name]())
                bar.update(1)
            reference = [r[0] for r in results[reference_name]]
            adjoint = [r[0] for r in results["Adjoint"]] if "Adjoint" in results else None
            for name, got in results.items():
                own = [r[0] for r in got]
                rows.append({
                    "rule": name, "width": width, "nfe_fwd": got[-1][1], "nfe_bwd": got[-1][2],
                    **spread("bwd_s", own),
                    **spread("vs_torchdiffeq", (a / b for a, b in zip(own, reference))),
                    **(spread("vs_Adjoint", (a / b for a, b in zip(own, adjoint)))
                       if adjoint is not None and name != reference_name else {"vs_Adjoint": None}),
                })
    return rows


class CubicDemo(torch.nn.Module):
    """torchdiffeq's examples/ode_demo.py: dy/dt = y³A, y0 = [[2, 0]], t ∈ [0, 25]."""

    def __init__(self, device: str = "cpu") -> None:
        super().__init__()
        self.A = torch.nn.Parameter(torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=torch.float64,
                                                 device=device))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (y**3) @ self.A


def _demo(rule: Any, outputs: int, tol: float, device: str = "cpu") -> tuple[list[torch.Tensor], dict]:
    """dL/dA and dL/dy0 for L = Σ_k w_k |y(t_k)|² (w from 1 to 2), outputs uniform on [0, 25]."""
    f64 = dict(dtype=torch.float64, device=device)
    field = CubicDemo(device)
    y0 = torch.tensor([[2.0, 0.0]], **f64, requires_grad=True)
    ts = torch.linspace(0.0, 25.0, outputs, **f64)
    sol = odeplug.solve(odeplug.ODEProblem(field, y0, ts), odeplug.Dopri5(rtol=tol, atol=tol), rule)
    loss = (torch.linspace(1, 2, outputs, **f64).view(-1, 1, 1) * sol.ys).pow(2).sum()
    g_y0, g_A = torch.autograd.grad(loss, [y0, field.A])
    return [g_A, g_y0], sol.stats


def _linear_matrix(rule: Any, tol: float, T: float = 60.0,
                   device: str = "cpu") -> tuple[list[torch.Tensor], list[torch.Tensor], dict]:
    """dz/dt = Az, A = [[−0.01, −2], [2, −0.01]] (a full 2×2 parameter), z0 = (1, 0), L = z_1(T)²:
    (dL/dA, dL/dz0, dL/dT) and their closed forms (dL/dA from the block matrix exponential)."""
    f64 = dict(dtype=torch.float64, device=device)
    A = torch.nn.Parameter(torch.tensor([[-0.01, -2.0], [2.0, -0.01]], **f64))
    z0 = torch.tensor([1.0, 0.0], **f64, requires_grad=True)
    ts = torch.tensor([0.0, T], **f64, requires_grad=True)
    problem = odeplug.ODEProblem(lambda t, z: A @ z, z0, ts, params=[A])
    sol = odeplug.solve(problem, odeplug.Dopri5(rtol=tol, atol=tol), rule)
    g_A, g_z0, g_ts = torch.autograd.grad(sol.ys[-1, 0] ** 2, [A, z0, ts])
    a, x0 = A.detach(), z0.detach()
    zT = torch.linalg.matrix_exp(a * T) @ x0
    g = torch.stack([2 * zT[0], torch.zeros((), **f64)])
    block = torch.zeros(4, 4, **f64)
    block[:2, :2] = block[2:, 2:] = a.T
    block[:2, 2:] = torch.outer(g, x0)
    exact = [torch.linalg.matrix_exp(block * T)[:2, 2:], torch.linalg.matrix_exp(a.T * T) @ g, g @ a @ zT]
    return [g_A, g_z0, g_ts[1]], exact, sol.stats


def _relative(got: list[torch.Tensor], exact: list[torch.Tensor]) -> list[float]:
    return [float((g - e.to(g.device)).norm() / e.norm()) for g, e in zip(got, exact)]


@task("gq-accuracy",
      "gradient error of GQAdjoint (adaptive, C=0.1), GaussAdjoint, Adjoint: demo y³A, dz/dt=Az",
      columns={
          "err_dL/dθ": "relative error of dL/dθ against the reference (float64)",
          "err_dL/dy0": "relative error of dL/dy0 against the reference (float64)",
          "vs_Adjoint": "err_dL/dθ ÷ the Adjoint rule's",
          "vjp": "vector-Jacobian products in the backward pass",
      })
def gq_accuracy(options: BenchOptions) -> list[dict[str, Any]]:
    tols = (options.tol,) if options.tol else (1e-6, 1e-8)
    rules = gradient_rules(options.rules) if options.rules else {
        "GQAdjoint": odeplug.GQAdjoint(), "GQAdjoint(C=0.1)": odeplug.GQAdjoint(C=0.1),
        "GaussAdjoint": odeplug.GaussAdjoint(), "Adjoint": odeplug.Adjoint(),
    }
    rows = []

    def row(problem: str, outputs: int, tol: float, name: str, errors: list[float], stats: dict,
            adjoint: list[float] | None) -> dict[str, Any]:
        return {"problem": problem, "outputs": outputs, "tol": tol, "rule": name, "err_dL/dθ": errors[0],
                "err_dL/dy0": errors[1], "vs_Adjoint": None if adjoint is None else errors[0] / adjoint[0],
                "vjp": stats.get("vjp_backward"), "nfe_bwd": stats.get("nfe_backward")}

    total = 2 * len(tols) * len(rules) + len(tols) * len(rules)
    with progress(total=total, enabled=options.progress, desc="gq-accuracy") as bar:
        for outputs in (2, 26):
            reference, _ = _demo(odeplug.Direct(), outputs, 1e-12, options.device)
            for tol in tols:
                results = {}
                for name, rule in rules.items():
                    got, stats = _demo(rule, outputs, tol, options.device)
                    results[name] = (_relative(got, reference), stats)
                    bar.update(1)
                adjoint = results.get("Adjoint", (None,))[0]
                rows += [row("y'=y³A", outputs, tol, n, e, s, adjoint) for n, (e, s) in results.items()]
        for tol in tols:
            results = {}
            for name, rule in rules.items():
                got, exact, stats = _linear_matrix(rule, tol, device=options.device)
                results[name] = (_relative(got, exact), stats)
                bar.update(1)
            adjoint = results.get("Adjoint", (None,))[0]
            rows += [row("z'=Az", 2, tol, n, e, s, adjoint) for n, (e, s) in results.items()]
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
    if options.processes > 1:  # data-parallel over the 200 points (DDP): spheres_step below
        return run_data_parallel("spheres", options, rules, widths, epochs)
    x, labels = nested_spheres(200, options.seed)
    z0 = torch.cat([x, torch.zeros(200, 3)], dim=1).to(options.device)
    labels = labels.to(options.device)
    ts = torch.tensor([0.0, 1.0], device=options.device)
    rows = []
    with progress(total=len(widths) * len(rules) * epochs, enabled=options.progress, desc="spheres") as bar:
        for width in widths:
            trainers = {name: _SpheresTrainer(rule, width, tol, options.seed, options.device)
                        for name, rule in rules.items()}
            # Every rule one training step per round, the order rotated from round to round;
            # round 0 (a step like the others) is a warm-up, untimed, when there are two or more.
            for epoch, name in interleaved(list(trainers), epochs):
                trainers[name].step(z0, ts, labels, timed=epochs == 1 or epoch > 0)
                bar.update(1)
            for name, trainer in trainers.items():
                rows.append({"rule": name, "width": width, **spread("step_s", trainer.times),
                             "nfe_bwd": trainer.nfe_backward, "final_loss": trainer.loss})
    return rows


class _SpheresTrainer:
    """One rule training its own field and read-out (seeded: identical for every rule)."""

    def __init__(self, rule: Any, width: int, tol: float, seed: int, device: str) -> None:
        torch.manual_seed(seed)
        self.rule, self.device = rule, device
        self.field = SpheresField(5, width).to(device)
        self.readout = torch.nn.Linear(5, 2).to(device)
        self.optimiser = torch.optim.Adam([*self.field.parameters(), *self.readout.parameters()], lr=1e-3)
        self.solver = odeplug.Dopri5(rtol=tol, atol=tol)
        self.times: list[float] = []
        self.nfe_backward: int | None = None
        self.loss = float("nan")

    def step(self, z0: torch.Tensor, ts: torch.Tensor, labels: torch.Tensor, timed: bool) -> None:
        _sync(self.device)
        start = time.perf_counter()
        self.optimiser.zero_grad()
        sol = odeplug.solve(odeplug.ODEProblem(self.field, z0, ts), self.solver, self.rule)
        loss = torch.nn.functional.cross_entropy(self.readout(sol.ys[-1]), labels)
        loss.backward()
        self.optimiser.step()
        _sync(self.device)
        if timed:
            self.times.append(time.perf_counter() - start)
        self.nfe_backward = sol.stats.get("nfe_backward")
        self.loss = float(loss.detach())


@data_parallel_task("spheres")
def spheres_step(rule: Any, width: int, options: BenchOptions, rank: int, world: int) -> Any:
    """One Adam step of the spheres task on this process's points (of the 200), the model
    initialised as :class:`_SpheresTrainer`'s (``odeplug bench spheres --processes N``)."""
    torch.manual_seed(options.seed)
    field, readout = SpheresField(5, width), torch.nn.Linear(5, 2)
    tol = options.tol or 1e-3
    net = distributed(SolveModule(field, rule, odeplug.Dopri5(rtol=tol, atol=tol), torch.tensor([0.0, 1.0]),
                                  readout=readout), world)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, labels = nested_spheres(200, options.seed)
    rows, weight = shard(len(x), rank, world)
    z0 = torch.cat([x, torch.zeros(len(x), 3)], dim=1)[rows]
    labels = labels[rows]

    def step() -> float:
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(z0), labels) * weight
        loss.backward()
        optimiser.step()
        return float(loss.detach())

    return step


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
