"""Bench task ``ou``: the Ornstein–Uhlenbeck experiment of Norcliffe & Deisenroth (TMLR 2023,
appendix F), training a neural SDE as an ODE (Wong–Zakai + an ODE gradient rule) against training
it as an SDE (torchsde, Direct and Adjoint), side by side in one process.

Data: dx = (μt − θx) dt + (σ + φt) ∘ dW, μ = 0.2, θ = 0.1, σ = 0.6, φ = 0.15, x0 ~ U[−3, 3],
observed at t = 0, 0.1, …, 10, ``samples`` paths per initial condition, solved by torchsde
(reversible Heun, dt = 0.01). Model: drift and diffusion are separate time-dependent MLPs
(input (x, t), two hidden layers of width W, softplus), diagonal noise.

Loss and test metric (the paper's "approximate KL divergence"): at each observation time t > 0
and initial condition, fit Gaussians to the data samples and to the model samples and take
KL(data ‖ model) = ½[log(v_m/v_d) + (v_d + (m_d − m_m)²)/v_m − 1], averaged over times and
initial conditions. The test KL always evaluates the trained drift and diffusion with the SDE
solver (reversible Heun, dt = 0.01, a fixed Brownian seed), as in the paper.

Routes: ``WZ+<rule>`` solves dz/dt = f + g · dB_m/dt with m = 10 Karhunen–Loève terms and
Dopri5 (rtol = atol = ``--tol``, default 1e-3), a fresh path per batch; ``SDE Direct`` and
``SDE Adjoint`` solve the SDE with ``SDESolver("reversible_heun", dt=0.01)``, a fresh Brownian
motion per batch. ODE rules: ``GQAdjoint`` by default (``--rules`` picks others, e.g.
``GQAdjoint,Adjoint,Direct``). Each route trains ``--repeats`` seeds (default 2) for ``--epochs``
epochs (default 2) of 20 training initial conditions in batches of 10 (× 45 samples = 450
paths per batch; the paper: 200 initial conditions, batches of 40, 100 epochs); the seed fixes
the model's initialisation, so the routes start from identical models (``test_kl_init``). The
paper's Table 5 learning rates (1e-3 … 1e-4) are for 100 epochs; this short run uses 1e-2, so
the default run measures speed; run more epochs (``--epochs 20``) to compare the learnt KL.

Within a seed the routes train epoch by epoch in turns (each round every route one epoch, the
order rotated from round to round), so that a change in the machine's speed hits them alike.

Columns: ``epoch_s`` wall time of an epoch, median with min and max over every epoch of every
seed; ``nfe_forward``/``nfe_backward`` median per batch (drift evaluations); ``test_kl`` mean
over seeds ± ``test_kl_sd``; ``speedup`` = SDE Adjoint's median epoch time / this route's;
``kl_in_sde_spread``: |test_kl − mean of the SDE routes' runs| ≤ 2 × their standard deviation
(over both SDE rules and all seeds). On CPU the task runs with one intra-op thread unless
``--threads`` or ``OMP_NUM_THREADS`` says otherwise: the MLPs are tiny.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import torch

import odeplug
from odeplug.bench import BenchOptions, gradient_rules, interleaved, spread, task
from odeplug.bench._models import softplus_mlp
from odeplug.bench._progress import progress

__all__ = ["OUData", "OUTrainer", "TimeMLP", "gaussian_kl", "train_ou"]

MU, THETA, SIGMA, PHI = 0.2, 0.1, 0.6, 0.15
TRAIN_ICS, TEST_ICS, SAMPLES, BATCH = 20, 10, 45, 10
KL_TERMS, DT, LEARNING_RATE = 10, 0.01, 1e-2


class TimeMLP(torch.nn.Module):
    """(x, t) → two hidden layers of width W with softplus → one output per state channel."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = softplus_mlp(2, width, 1)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        time = t.to(x.dtype).expand(x.shape)
        return self.net(torch.cat([x, time], dim=-1))


class OUData:
    """Initial conditions and sampled paths of the time-dependent OU process (torchsde)."""

    def __init__(self, ics: int, samples: int, seed: int, device: str = "cpu") -> None:
        g = torch.Generator().manual_seed(seed)
        self.x0 = (torch.rand(ics, generator=g) * 6 - 3).to(device)
        self.ts = torch.linspace(0.0, 10.0, 101, device=device)
        y0 = self.x0.repeat_interleave(samples)[:, None]
        problem = odeplug.SDEProblem(
            lambda t, x: MU * t - THETA * x, lambda t, x: (SIGMA + PHI * t).expand(x.shape), y0, self.ts
        )
        with torch.no_grad():
            ys = odeplug.solve(problem, odeplug.SDESolver(dt=DT, seed=seed), odeplug.Direct()).ys
        paths = ys.reshape(len(self.ts), ics, samples)
        self.mean = paths.mean(-1)  # (T, ics)
        self.var = paths.var(-1)


def gaussian_kl(mean_d: torch.Tensor, var_d: torch.Tensor, mean_m: torch.Tensor, var_m: torch.Tensor) -> torch.Tensor:
    """KL(N(mean_d, var_d) ‖ N(mean_m, var_m)) averaged over times t > 0 and initial conditions."""
    mean_d, var_d, mean_m, var_m = mean_d[1:], var_d[1:], mean_m[1:], var_m[1:]
    return 0.5 * (torch.log(var_m / var_d) + (var_d + (mean_d - mean_m) ** 2) / var_m - 1).mean()


def _model_moments(ys: torch.Tensor, ics: int) -> tuple[torch.Tensor, torch.Tensor]:
    paths = ys.reshape(ys.shape[0], ics, -1)
    return paths.mean(-1), paths.var(-1)


def _test_kl(drift: TimeMLP, diffusion: TimeMLP, data: OUData, seed: int) -> float:
    y0 = data.x0.repeat_interleave(SAMPLES)[:, None]
    problem = odeplug.SDEProblem(drift, diffusion, y0, data.ts)
    with torch.no_grad():
        ys = odeplug.solve(problem, odeplug.SDESolver(dt=DT, seed=seed), odeplug.Direct()).ys
    mean, var = _model_moments(ys, len(data.x0))
    return float(gaussian_kl(data.mean, data.var, mean, var))


class OUTrainer:
    """One route ("WZ" or "SDE") with ``rule`` training its own drift and diffusion (seeded:
    every route starts from the same models); :meth:`epoch` is one timed epoch."""

    def __init__(self, route: str, rule: Any, width: int, seed: int, tol: float, train: OUData,
                 device: str = "cpu") -> None:
        torch.manual_seed(seed)
        self.route, self.rule, self.train, self.device = route, rule, train, device
        self.drift, self.diffusion = TimeMLP(width).to(device), TimeMLP(width).to(device)
        self.params = [*self.drift.parameters(), *self.diffusion.parameters()]
        self.optimiser = torch.optim.Adam(self.params, lr=LEARNING_RATE)
        # Batch order and noise; never the global RNG.
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.ode_solver = odeplug.Dopri5(rtol=tol, atol=tol)
        self.sde_solver = odeplug.SDESolver(method="reversible_heun", dt=DT)
        self.epoch_times: list[float] = []
        self.nfe_forward: list[int] = []
        self.nfe_backward: list[int | None] = []

    def epoch(self) -> None:
        train = self.train
        order = torch.randperm(len(train.x0), generator=self.generator).to(self.device)
        _sync(self.device)
        start = time.perf_counter()
        for batch in order.split(BATCH):
            y0 = train.x0[batch].repeat_interleave(SAMPLES)[:, None]
            problem = odeplug.SDEProblem(self.drift, self.diffusion, y0, train.ts, params=self.params)
            if self.route == "WZ":
                sol = odeplug.solve(problem, self.ode_solver, self.rule,
                                    wiener=odeplug.KarhunenLoeve(terms=KL_TERMS), generator=self.generator)
            else:
                sol = odeplug.solve(problem, self.sde_solver, self.rule, generator=self.generator)
            mean, var = _model_moments(sol.ys, len(batch))
            loss = gaussian_kl(train.mean[:, batch], train.var[:, batch], mean, var)
            self.optimiser.zero_grad()
            loss.backward()
            self.optimiser.step()
            self.nfe_forward.append(sol.stats["nfe"])
            self.nfe_backward.append(sol.stats.get("nfe_backward"))
        _sync(self.device)
        self.epoch_times.append(time.perf_counter() - start)

    def result(self, test: OUData) -> dict[str, Any]:
        return {
            **spread("epoch_s", self.epoch_times),
            "nfe_forward": statistics.median(self.nfe_forward),
            "nfe_backward": None if self.nfe_backward[0] is None else statistics.median(self.nfe_backward),
            "test_kl": _test_kl(self.drift, self.diffusion, test, seed=10_000),
        }


def train_ou(route: str, rule: Any, width: int, epochs: int, seed: int, tol: float,
             train: OUData, test: OUData, device: str = "cpu", tick: Any = None) -> dict[str, Any]:
    """Train one model along ``route`` ("WZ" or "SDE") with ``rule``; return timings and test KL."""
    trainer = OUTrainer(route, rule, width, seed, tol, train, device)
    for _ in range(epochs):
        trainer.epoch()
        if tick is not None:
            tick()
    return trainer.result(test)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@task("ou", "neural SDE on the OU process: Wong–Zakai + GQAdjoint vs torchsde Direct/Adjoint",
      cpu_threads=1,
      columns={
          "route": "WZ+rule: Wong–Zakai ODE trained with that rule; SDE: torchsde's sdeint",
          "epoch_s": "seconds per epoch, over every epoch of every seed",
          "speedup": "SDE Adjoint's epoch_s ÷ this route's",
          "test_kl": "KL divergence of the model's Gaussian marginals from the data's on the "
                     "test set, mean over the seeds (--repeats)",
          "test_kl_sd": "standard deviation of test_kl over the seeds",
          "test_kl_init": "test_kl of the untrained models (identical for every route)",
          "kl_in_sde_spread": "whether test_kl is within two standard deviations of the SDE "
                              "routes' mean",
      })
def ou(options: BenchOptions) -> list[dict[str, Any]]:
    # The model is tiny (45 × 10 rows through width-20 MLPs): on CPU, intra-op threads only add
    # synchronisation, and on a shared machine they can slow every route by an order of magnitude.
    # So `odeplug bench ou` runs with one thread on CPU unless --threads or OMP_NUM_THREADS says
    # otherwise (registered as cpu_threads=1; the command sets it before the task runs).
    widths = options.widths or (20,)
    epochs = options.epochs or 2
    repeats = options.repeats or 2
    tol = options.tol or 1e-3
    device = options.device
    if options.rules:
        ode_rules = gradient_rules(options.rules)
    else:
        ode_rules = ({"GQAdjoint": odeplug.GQAdjoint()} if hasattr(odeplug, "GQAdjoint")
                     else {"Adjoint": odeplug.Adjoint(), "Direct": odeplug.Direct()})  # fallback
    routes = [(f"WZ+{name}", "WZ", rule) for name, rule in ode_rules.items()]
    routes += [("SDE Direct", "SDE", odeplug.Direct()), ("SDE Adjoint", "SDE", odeplug.Adjoint())]
    train = OUData(TRAIN_ICS, SAMPLES, seed=options.seed, device=device)
    test = OUData(TEST_ICS, SAMPLES, seed=options.seed + 1, device=device)
    rows = []
    with progress(total=len(widths) * len(routes) * repeats * epochs, enabled=options.progress,
                  desc="ou") as bar:
        for width in widths:
            runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in routes}
            epoch_times: dict[str, list[float]] = {label: [] for label, _, _ in routes}
            initial_kls = []
            # Seeds outermost; within a seed every route trains its own model epoch by epoch in
            # turns (the order rotated each epoch), so every route sees the same machine state.
            for seed in range(options.seed, options.seed + repeats):
                torch.manual_seed(seed)  # the initialisation every route starts from (OUTrainer)
                initial_kls.append(_test_kl(TimeMLP(width).to(device), TimeMLP(width).to(device), test,
                                            seed=10_000))
                trainers = {label: OUTrainer(route, rule, width, seed, tol, train, device)
                            for label, route, rule in routes}
                for _, label in interleaved(list(trainers), epochs):
                    trainers[label].epoch()
                    bar.update(1)
                for label, trainer in trainers.items():
                    runs[label].append(trainer.result(test))
                    epoch_times[label] += trainer.epoch_times
            sde_kls = [r["test_kl"] for label in ("SDE Direct", "SDE Adjoint") for r in runs[label]]
            sde_mean = statistics.mean(sde_kls)
            sde_sd = statistics.stdev(sde_kls) if len(sde_kls) > 1 else math.nan
            adjoint_epoch = statistics.median(epoch_times["SDE Adjoint"])
            for label, route, _ in routes:
                rs = runs[label]
                kls = [r["test_kl"] for r in rs]
                epoch = spread("epoch_s", epoch_times[label])
                kl = statistics.mean(kls)
                backward = [r["nfe_backward"] for r in rs if r["nfe_backward"] is not None]
                rows.append({
                    "route": label,
                    "width": width,
                    **epoch,
                    "speedup": adjoint_epoch / epoch["epoch_s"],
                    "nfe_forward": statistics.median(r["nfe_forward"] for r in rs),
                    "nfe_backward": statistics.median(backward) if backward else None,
                    "test_kl": kl,
                    "test_kl_sd": statistics.stdev(kls) if len(kls) > 1 else None,
                    "test_kl_init": statistics.mean(initial_kls),
                    "kl_in_sde_spread": (abs(kl - sde_mean) <= 2 * sde_sd) if route == "WZ" else None,
                })
    return rows
