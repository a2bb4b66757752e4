"""Bench task ``stiff`` (issue 14): the implicit solvers against scipy's Radau and BDF on two
classic stiff problems, and a stiff neural ODE's training step with Kvaerno5 against Dopri5.

Part 1, per problem (Van der Pol with μ = 1000 on [0, 3000]; Robertson's kinetics on [0, 1e5]),
per solver (Kvaerno3/4/5, RadauIIA5, scipy's Radau and BDF), all at rtol = ``--tol`` (default
1e-6), atol = rtol/100, float64: NFE, Jacobian evaluations, LU factorisations, accepted and
rejected steps, the largest error at the output times against scipy's Radau at rtol 1e-10, and
the solve time. Every solver runs once untimed, then ``--repeats`` rounds (default 3) in an
order rotated from round to round (``interleaved``); ``time_s`` is the median (min–max) and
``vs_scipy_Radau`` the median of same-round ratios to scipy's Radau.

Part 2, a stiff neural ODE: dy/dt = Ay + MLP(y), A = −diag(logspace(0, 4, n)) (eigenvalues over
four decades), n = 8, batch 8, t ∈ [0, 1], an MSE loss to a fixed target (Kvaerno5 with the
block-diagonal ``jacobian="batched"``: the rows of a mini-batch are independent); one training step
(forward, backward, optimiser step) per gradient rule with Kvaerno5 and with Dopri5 (its
stiffness test off) on the same model (the same initial parameters), interleaved; ``vs_Dopri5`` is Kvaerno5's step time over
Dopri5's in the same round. A rule that fails (a backsolve adjoint reconstructs z backwards in
time, where the fast modes grow as e^(10⁴ t)) is reported with its error instead of a time.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import torch

import odeplug
from odeplug.bench import BenchOptions, interleaved, spread, task

f64 = torch.float64
MU = 1000.0


def _vdp(t, y):  # noqa: ANN001, ANN202
    return torch.stack([y[1], MU * (1 - y[0] ** 2) * y[1] - y[0]])


def _vdp_np(t, y):  # noqa: ANN001, ANN202
    return [y[1], MU * (1 - y[0] ** 2) * y[1] - y[0]]


def _robertson(t, y):  # noqa: ANN001, ANN202
    return torch.stack([-0.04 * y[0] + 1e4 * y[1] * y[2], 0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2,
                        3e7 * y[1] ** 2])


def _robertson_np(t, y):  # noqa: ANN001, ANN202
    return [-0.04 * y[0] + 1e4 * y[1] * y[2], 0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2, 3e7 * y[1] ** 2]


PROBLEMS = {
    "VdP(mu=1000)": (_vdp, _vdp_np, [2.0, 0.0], np.linspace(0, 3000, 7)),
    "Robertson": (_robertson, _robertson_np, [1.0, 0.0, 0.0], np.array([0.0, 1e-3, 1.0, 1e2, 1e4, 1e5])),
}


class _Run:
    """One solver on one problem: ``run()`` solves once and returns (seconds, counts, ys)."""

    def __init__(self, name: str, problem: str, rtol: float, atol: float) -> None:
        self.name, self.problem, self.rtol, self.atol = name, problem, rtol, atol

    def run(self) -> tuple[float, dict[str, int], np.ndarray]:
        f, f_np, y0, ts = PROBLEMS[self.problem]
        if self.name.startswith("scipy "):
            from scipy.integrate import solve_ivp

            start = time.perf_counter()
            out = solve_ivp(f_np, (ts[0], ts[-1]), y0, method=self.name.split()[1], rtol=self.rtol,
                            atol=self.atol, t_eval=ts)
            seconds = time.perf_counter() - start
            counts = {"nfe": out.nfev, "njev": out.njev, "nlu": out.nlu, "steps": None, "rejected": None}
            return seconds, counts, out.y.T
        solver = getattr(odeplug, self.name)(rtol=self.rtol, atol=self.atol)
        problem = odeplug.ODEProblem(f, torch.tensor(y0, dtype=f64), torch.tensor(ts, dtype=f64))
        start = time.perf_counter()
        with torch.no_grad():
            sol = odeplug.solve(problem, solver, odeplug.Direct())
        seconds = time.perf_counter() - start
        stats = sol.stats
        counts = {"nfe": stats["nfe"], "njev": stats["njev"], "nlu": stats["nlu"],
                  "steps": stats["steps_accepted"], "rejected": stats["steps_rejected"]}
        return seconds, counts, sol.ys.numpy()


def _reference(problem: str) -> np.ndarray:
    from scipy.integrate import solve_ivp

    _, f_np, y0, ts = PROBLEMS[problem]
    return solve_ivp(f_np, (ts[0], ts[-1]), y0, method="Radau", rtol=1e-10, atol=1e-12, t_eval=ts).y.T


SOLVERS = ("Kvaerno3", "Kvaerno4", "Kvaerno5", "RadauIIA5", "scipy Radau", "scipy BDF")


def _solver_rows(options: BenchOptions) -> list[dict[str, Any]]:
    rtol = options.tol or 1e-6
    atol = rtol / 100
    repeats = options.repeats or 3
    rows = []
    for problem in PROBLEMS:
        reference = _reference(problem)
        runs = {name: _Run(name, problem, rtol, atol) for name in SOLVERS}
        times: dict[str, list[float]] = {name: [] for name in SOLVERS}
        results = {name: runs[name].run() for name in SOLVERS}  # warm-up, counts and errors
        for _, name in interleaved(list(SOLVERS), repeats):
            times[name].append(runs[name].run()[0])
        for name in SOLVERS:
            _, counts, ys = results[name]
            ratios = [mine / theirs for mine, theirs in zip(times[name], times["scipy Radau"])]
            rows.append({"problem": problem, "solver": name, "rtol": rtol, **counts,
                         "error": float(np.abs(ys - reference).max()), **spread("time_s", times[name]),
                         "vs_scipy_Radau": statistics.median(ratios)})
    return rows


class _StiffNeuralODE(torch.nn.Module):
    """dy/dt = A y + MLP(y), A = −diag(logspace(0, 4, n))."""

    def __init__(self, n: int, width: int) -> None:
        super().__init__()
        self.register_buffer("rates", -torch.logspace(0, 4, n, dtype=f64))
        self.mlp = torch.nn.Sequential(torch.nn.Linear(n, width), torch.nn.Tanh(), torch.nn.Linear(width, n)).double()

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.rates * y + 0.1 * self.mlp(y)


def _explicit(tol: float) -> odeplug.Solver:
    """Dopri5 at the same tolerances, its stiffness test off (it would refuse this problem: the
    point of the row is what ignoring that costs)."""
    return odeplug.Dopri5(rtol=tol, atol=tol / 100, stiff_steps=None)


def _neural_rows(options: BenchOptions) -> list[dict[str, Any]]:
    n, batch, width = 8, 8, 16
    repeats = max(1, (options.repeats or 3) - 1)
    tol = options.tol or 1e-6
    rules = {"Direct": odeplug.Direct(), "ACA": odeplug.ACA(), "Adjoint": odeplug.Adjoint(),
             "Adjoint(Seminorm)": odeplug.Adjoint(norm=odeplug.Seminorm()), "GQAdjoint": odeplug.GQAdjoint(),
             "GaussAdjoint": odeplug.GaussAdjoint()}
    if options.rules:
        from odeplug.bench import gradient_rules

        rules = gradient_rules(options.rules)
    solvers = {"Kvaerno5": odeplug.Kvaerno5(rtol=tol, atol=tol / 100, jacobian="batched"), "Dopri5": _explicit(tol)}
    torch.manual_seed(options.seed)
    y0 = torch.randn(batch, n, dtype=f64)
    target = 0.1 * torch.randn(batch, n, dtype=f64)
    ts = torch.tensor([0.0, 1.0], dtype=f64)
    initial = _StiffNeuralODE(n, width).state_dict()

    def step(rule, solver) -> tuple[float, dict]:  # noqa: ANN001
        model = _StiffNeuralODE(n, width)
        model.load_state_dict(initial)
        optimiser = torch.optim.SGD(model.parameters(), lr=1e-3)
        start = time.perf_counter()
        sol = odeplug.solve(odeplug.ODEProblem(model, y0, ts), solver, rule)
        loss = ((sol.ys[-1] - target) ** 2).mean()
        loss.backward()
        optimiser.step()
        return time.perf_counter() - start, dict(sol.stats)

    rows = []
    for rule_name, rule in rules.items():
        pairs = [(rule_name, name) for name in solvers]
        times: dict[str, list[float]] = {name: [] for name in solvers}
        stats: dict[str, dict] = {}
        failed: dict[str, str] = {}
        for _, (_, name) in [(0, p) for p in pairs] + list(interleaved(pairs, repeats)):
            if name in failed:
                continue
            try:
                seconds, counted = step(rule, solvers[name])
            except Exception as exc:  # noqa: BLE001 - reported in the table
                failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
                continue
            if name not in stats:
                stats[name] = counted  # the untimed warm-up
            else:
                times[name].append(seconds)
        for name in solvers:
            row: dict[str, Any] = {"problem": f"stiff NODE n={n} batch={batch}", "solver": name,
                                   "rule": rule_name, "rtol": tol}
            if name in failed:
                row["failed"] = failed[name]
            else:
                counted = stats[name]
                row.update(nfe=counted.get("nfe"), nfe_backward=counted.get("nfe_backward"),
                           njev=counted.get("njev"), nlu=counted.get("nlu"),
                           steps=counted.get("steps_accepted"), **spread("step_s", times[name]))
                if name == "Kvaerno5" and "Dopri5" not in failed and times["Dopri5"]:
                    row["vs_Dopri5"] = statistics.median(
                        a / b for a, b in zip(times["Kvaerno5"], times["Dopri5"]))
            rows.append(row)
    return rows


@task("stiff", "implicit solvers vs scipy Radau/BDF on VdP(μ=1000) and Robertson; stiff neural ODE "
      "training step, Kvaerno5 vs Dopri5 per rule",
      cpu_threads=1,
      columns={"njev": "Jacobian evaluations", "nlu": "LU factorisations",
               "error": "largest |y − y_ref| at the output times, y_ref scipy Radau at rtol 1e-10",
               "time_s": "solve time, median (min–max) over the rounds",
               "vs_scipy_Radau": "time_s ÷ scipy Radau's, same round (median)",
               "vs_Dopri5": "Kvaerno5's step_s ÷ Dopri5's, same rule, same round (median)",
               "failed": "the error the rule raised (no time)"})
def stiff_bench(options: BenchOptions) -> list[dict[str, Any]]:
    return _solver_rows(options) + _neural_rows(options)
