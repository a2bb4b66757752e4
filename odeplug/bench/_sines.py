"""The "sines" task of Norcliffe & Deisenroth (TMLR 2023, sec. 5.4 and appendix E.3).

Second-order neural ODE learning x'' = −x: state (x, v), dx/dt = v, dv/dt = MLP(x, v) with two
hidden layers of width W and softplus. 15 training trajectories x(t) = x0 cos t + v0 sin t with
x0, v0 ~ U[−1, 1], observed at 50 uniform times on [0, 2π]; MSE on x; learning rates of their
Table 3. Each gradient rule trains an identically initialised model side by side.

Every row also carries the rule's gradient error on the analytic problem dz/dt = az,
L = z(T)², z0 = 10, a = 0.2, T = 24, whose exact gradients are dL/dz0 = 2 z0 e^{2aT},
dL/da = 2 T z0² e^{2aT} and dL/dT = 2 a z0² e^{2aT}.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import torch

from . import BenchOptions, gradient_rules, task
from ._models import softplus_mlp
from ._progress import progress

__all__ = ["SinesData", "SecondOrderField", "analytic_gradient_error", "train_sines"]

_LEARNING_RATES = {5: 2e-2, 20: 8e-3, 200: 5e-4, 1000: 3e-5, 2000: 1e-5}  # their Table 3


def learning_rate(width: int) -> float:
    """Table 3's rate for the nearest listed width (log-interpolated)."""
    widths = sorted(_LEARNING_RATES)
    if width <= widths[0]:
        return _LEARNING_RATES[widths[0]]
    if width >= widths[-1]:
        return _LEARNING_RATES[widths[-1]]
    for lo, hi in zip(widths, widths[1:]):
        if lo <= width <= hi:
            s = (math.log(width) - math.log(lo)) / (math.log(hi) - math.log(lo))
            return math.exp((1 - s) * math.log(_LEARNING_RATES[lo]) + s * math.log(_LEARNING_RATES[hi]))
    raise AssertionError


class SinesData:
    """Trajectories of x'' = −x: initial (x0, v0) and positions at ``times`` observation times."""

    def __init__(self, trajectories: int = 15, times: int = 50, seed: int = 0,
                 dtype: torch.dtype = torch.float32, device: str = "cpu") -> None:
        g = torch.Generator().manual_seed(seed)
        start = torch.rand(trajectories, 2, generator=g, dtype=torch.float64) * 2 - 1
        self.ts = torch.linspace(0, 2 * math.pi, times, dtype=torch.float64)
        x = start[:, :1] * torch.cos(self.ts) + start[:, 1:] * torch.sin(self.ts)  # (N, T)
        self.y0 = start.to(dtype=dtype, device=device)
        self.x = x.T.to(dtype=dtype, device=device)  # (T, N)
        self.ts = self.ts.to(dtype=dtype, device=device)


class SecondOrderField(torch.nn.Module):
    """d(x, v)/dt = (v, MLP(x, v)); the MLP has two hidden layers of width W and softplus."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.acceleration = softplus_mlp(2, width, 1)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.cat([y[..., 1:], self.acceleration(y)], dim=-1)


def analytic_gradient_error(rule: Any, T: float = 24.0, tol: float = 1e-8) -> float:
    """Max relative error of (dL/dz0, dL/da, dL/dT) for dz/dt = az, L = z(T)², in float64."""
    import odeplug

    z0 = torch.tensor([10.0], dtype=torch.float64, requires_grad=True)
    a = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    ts = torch.tensor([0.0, T], dtype=torch.float64, requires_grad=True)
    problem = odeplug.ODEProblem(lambda t, z: a * z, z0, ts, params=[a])
    sol = odeplug.solve(problem, odeplug.Dopri5(rtol=tol, atol=tol), rule)
    (sol.ys[-1] ** 2).sum().backward()
    zT2 = 10.0**2 * math.exp(2 * 0.2 * T)
    exact = (2 * 10.0 * math.exp(2 * 0.2 * T), 2 * T * zT2, 2 * 0.2 * zT2)
    got = (float(z0.grad[0]), float(a.grad), float(ts.grad[-1]))
    return max(abs(g - e) / abs(e) for g, e in zip(got, exact))


def train_sines(rule: Any, width: int, epochs: int, tol: float, seed: int, times: int = 50,
                device: str = "cpu", tick: Any = None) -> dict[str, Any]:
    """Train one model with ``rule``; return median step time, NFE, final loss, peak memory."""
    import odeplug

    data = SinesData(times=times, seed=seed, device=device)
    ts = data.ts
    torch.manual_seed(seed)
    model = SecondOrderField(width).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate(width))
    solver = odeplug.Dopri5(rtol=tol, atol=tol)
    step_times, forward_nfe, backward_nfe, loss_value = [], [], [], float("nan")
    for _ in range(epochs):
        start = time.perf_counter()
        optimiser.zero_grad()
        sol = odeplug.solve(odeplug.ODEProblem(model, data.y0, ts), solver, rule)
        loss = torch.mean((sol.ys[..., 0] - data.x) ** 2)
        loss.backward()
        optimiser.step()
        _sync(device)
        step_times.append(time.perf_counter() - start)
        forward_nfe.append(sol.stats["nfe"])
        backward_nfe.append(sol.stats.get("nfe_backward"))
        loss_value = float(loss.detach())
        if tick is not None:
            tick()
    return {
        "step_s": statistics.median(step_times),
        "nfe_forward": statistics.median(forward_nfe),
        "nfe_backward": None if backward_nfe[0] is None else statistics.median(backward_nfe),
        "final_loss": loss_value,
    }


@task("sines", "train the sines model (Norcliffe & Deisenroth) with every gradient rule [default]")
def sines(options: BenchOptions) -> list[dict[str, Any]]:
    widths = options.widths or (50,)
    epochs = options.epochs or 15
    tol = options.tol or 1e-3
    rules = gradient_rules(options.rules)
    rows = []
    with progress(total=len(rules) * (len(widths) * epochs + 1), enabled=options.progress,
                  desc="sines") as bar:
        for name, rule in rules.items():
            error = analytic_gradient_error(rule)
            bar.update(1)
            for width in widths:
                result = train_sines(rule, width, epochs, tol, options.seed, device=options.device,
                                     tick=lambda: bar.update(1))
                rows.append({"rule": name, "width": width, **result, "grad_rel_error": error})
    return rows


def sines_backward(rule: Any, width: int, times: int, tol: float, seed: int = 0,
                   repeats: int = 1, device: str = "cpu") -> dict[str, Any]:
    """One forward + backward of the sines loss with ``rule`` (a GradientRule, or the string
    ``"torchdiffeq"`` / ``"torchdiffeq-seminorm"`` for ``torchdiffeq.odeint_adjoint``); median
    backward time over ``repeats`` after one warm-up, and the NFE of each direction.

    Every call builds the same model (same seed), so rows are comparable side by side."""
    import odeplug

    data = SinesData(times=times, seed=seed, device=device)
    torch.manual_seed(seed)
    model = SecondOrderField(width).to(device)
    counter = {"nfe": 0}

    def counted(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        counter["nfe"] += 1
        return model(t, y)

    class Counted(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return counted(t, y)

    def once() -> tuple[float, int, int]:
        model.zero_grad()
        counter["nfe"] = 0
        if isinstance(rule, str):
            import torchdiffeq

            options = {"norm": "seminorm"} if rule.endswith("seminorm") else {}
            ys = torchdiffeq.odeint_adjoint(Counted(), data.y0, data.ts, rtol=tol, atol=tol,
                                            adjoint_options=options)
            forward = counter["nfe"]
        else:
            sol = odeplug.solve(odeplug.ODEProblem(counted, data.y0, data.ts,
                                                   params=list(model.parameters())),
                                odeplug.Dopri5(rtol=tol, atol=tol), rule)
            ys, forward = sol.ys, counter["nfe"]
        loss = torch.mean((ys[..., 0] - data.x) ** 2)
        _sync(device)
        start = time.perf_counter()
        loss.backward()
        _sync(device)
        return time.perf_counter() - start, forward, counter["nfe"] - forward

    once()  # warm-up (first-call costs of autograd and allocators)
    runs = [once() for _ in range(repeats)]
    return {
        "backward_s": statistics.median(r[0] for r in runs),
        "nfe_forward": runs[-1][1],
        "nfe_backward": runs[-1][2],
    }


def _sync(device: str) -> None:
    if device != "cpu":
        torch.cuda.synchronize()
