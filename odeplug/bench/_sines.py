"""The "sines" task of Norcliffe & Deisenroth (TMLR 2023, sec. 5.4 and appendix E.3).

Second-order neural ODE learning x'' = −x: state (x, v), dx/dt = v, dv/dt = MLP(x, v) with two
hidden layers of width W and softplus. 15 training trajectories x(t) = x0 cos t + v0 sin t with
x0, v0 ~ U[−1, 1], observed at 50 uniform times on [0, 2π]; MSE on x; learning rates of their
Table 3. Each gradient rule trains an identically initialised model side by side: the rules take
turns step by step (each round every rule one step, the order rotated), the first round a
warm-up that is not timed; ``step_s`` is the median with min and max over the timed steps.

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

from . import BenchOptions, gradient_rules, interleaved, spread, task
from ._models import softplus_mlp
from ._progress import progress

__all__ = ["SinesData", "SecondOrderField", "SinesTrainer", "SinesBackward", "analytic_gradient_error",
           "train_sines", "sines_backward"]

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


def analytic_gradient_error(rule: Any, T: float = 24.0, tol: float = 1e-8, device: str = "cpu") -> float:
    """Max relative error of (dL/dz0, dL/da, dL/dT) for dz/dt = az, L = z(T)², in float64."""
    import odeplug

    f64 = dict(dtype=torch.float64, device=device)
    z0 = torch.tensor([10.0], **f64, requires_grad=True)
    a = torch.tensor(0.2, **f64, requires_grad=True)
    ts = torch.tensor([0.0, T], **f64, requires_grad=True)
    problem = odeplug.ODEProblem(lambda t, z: a * z, z0, ts, params=[a])
    sol = odeplug.solve(problem, odeplug.Dopri5(rtol=tol, atol=tol), rule)
    (sol.ys[-1] ** 2).sum().backward()
    zT2 = 10.0**2 * math.exp(2 * 0.2 * T)
    exact = (2 * 10.0 * math.exp(2 * 0.2 * T), 2 * T * zT2, 2 * 0.2 * zT2)
    got = (float(z0.grad[0]), float(a.grad), float(ts.grad[-1]))
    return max(abs(g - e) / abs(e) for g, e in zip(got, exact))


class SinesTrainer:
    """One rule training its own model (seeded: every rule starts from the same one) on the
    sines data; :meth:`step` is one timed training step (solve, loss, backward, Adam).
    ``compile`` is Dopri5's (the compiled path); ``first_step_s`` keeps the first untimed
    step's time (a warm-up, or the compilation)."""

    def __init__(self, rule: Any, width: int, tol: float, seed: int, times: int = 50,
                 device: str = "cpu", data: SinesData | None = None, compile: bool = False) -> None:  # noqa: A002
        import odeplug

        self.rule, self.device = rule, device
        self.data = SinesData(times=times, seed=seed, device=device) if data is None else data
        torch.manual_seed(seed)
        self.model = SecondOrderField(width).to(device)
        # Fused Adam: the update in one kernel, as optax's is under jit (the optimiser is not
        # what the task compares; its eager loop would add ~0.3 ms to every rule's step).
        self.optimiser = torch.optim.Adam(self.model.parameters(), lr=learning_rate(width), fused=True)
        self.solver = odeplug.Dopri5(rtol=tol, atol=tol, compile=compile)
        self.step_times: list[float] = []
        self.first_step_s: float | None = None
        self.forward_nfe: list[int] = []
        self.backward_nfe: list[int | None] = []
        self.loss = float("nan")

    def step(self, timed: bool = True) -> None:
        import odeplug

        _sync(self.device)
        start = time.perf_counter()
        self.optimiser.zero_grad()
        sol = odeplug.solve(odeplug.ODEProblem(self.model, self.data.y0, self.data.ts), self.solver,
                            self.rule)
        loss = torch.mean((sol.ys[..., 0] - self.data.x) ** 2)
        loss.backward()
        self.optimiser.step()
        _sync(self.device)
        if timed:
            self.step_times.append(time.perf_counter() - start)
        elif self.first_step_s is None:
            self.first_step_s = time.perf_counter() - start
        self.forward_nfe.append(sol.stats["nfe"])
        self.backward_nfe.append(sol.stats.get("nfe_backward"))
        self.loss = float(loss.detach())

    def result(self) -> dict[str, Any]:
        """step_s (median, min, max over the timed steps), median NFE, final loss."""
        return {
            **spread("step_s", self.step_times),
            "nfe_forward": statistics.median(self.forward_nfe),
            "nfe_backward": None if self.backward_nfe[0] is None else statistics.median(self.backward_nfe),
            "final_loss": self.loss,
        }


def train_sines(rule: Any, width: int, epochs: int, tol: float, seed: int, times: int = 50,
                device: str = "cpu", tick: Any = None) -> dict[str, Any]:
    """Train one model with ``rule`` for ``epochs`` steps (the first untimed, a warm-up, when
    there are two or more); return step time (median, min, max), NFE, final loss."""
    trainer = SinesTrainer(rule, width, tol, seed, times, device)
    for epoch in range(epochs):
        trainer.step(timed=epochs == 1 or epoch > 0)
        if tick is not None:
            tick()
    return trainer.result()


@task("sines", "train the sines model (Norcliffe & Deisenroth) with every gradient rule [default]")
def sines(options: BenchOptions) -> list[dict[str, Any]]:
    widths = options.widths or (50,)
    epochs = options.epochs or 15
    tol = options.tol or 1e-3
    rules = gradient_rules(options.rules)
    if options.processes > 1:  # data-parallel over the batch (DDP): odeplug.bench._processes
        from ._processes import run_data_parallel

        return run_data_parallel("sines", options, rules, widths, epochs)
    rows = []
    with progress(total=len(rules) * (len(widths) * epochs + 1), enabled=options.progress,
                  desc="sines") as bar:
        errors = {}
        for name, rule in rules.items():
            errors[name] = analytic_gradient_error(rule, device=options.device)
            bar.update(1)
        for width in widths:
            data = SinesData(seed=options.seed, device=options.device)
            trainers = {name: SinesTrainer(rule, width, tol, options.seed, device=options.device, data=data)
                        for name, rule in rules.items()}
            # Round 0 is a warm-up (a training step, untimed) when there are two or more; then
            # every rule takes one step per round, in an order rotated from round to round.
            for epoch, name in interleaved(list(trainers), epochs):
                trainers[name].step(timed=epochs == 1 or epoch > 0)
                bar.update(1)
            for name, trainer in trainers.items():
                rows.append({"rule": name, "width": width, **trainer.result(),
                             "grad_rel_error": errors[name]})
    return rows


class SinesBackward:
    """One forward + backward of the sines loss with ``rule`` (a GradientRule, or the string
    ``"torchdiffeq"`` / ``"torchdiffeq-seminorm"`` for ``torchdiffeq.odeint_adjoint``): each call
    returns (backward seconds, forward NFE, backward NFE). Every instance builds the same model
    (same seed), so several can be timed side by side, round by round."""

    def __init__(self, rule: Any, width: int, times: int, tol: float, seed: int = 0,
                 device: str = "cpu") -> None:
        self.rule, self.tol, self.device = rule, tol, device
        self.data = SinesData(times=times, seed=seed, device=device)
        torch.manual_seed(seed)
        self.model = SecondOrderField(width).to(device)
        self.nfe = 0

    def _field(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        return self.model(t, y)

    def __call__(self) -> tuple[float, int, int]:
        import odeplug

        self.model.zero_grad()
        self.nfe = 0
        data, tol = self.data, self.tol
        if isinstance(self.rule, str):
            import torchdiffeq

            owner = self

            class Counted(torch.nn.Module):
                def __init__(self) -> None:
                    super().__init__()
                    self.model = owner.model

                def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                    return owner._field(t, y)

            options = {"norm": "seminorm"} if self.rule.endswith("seminorm") else {}
            ys = torchdiffeq.odeint_adjoint(Counted(), data.y0, data.ts, rtol=tol, atol=tol,
                                            adjoint_options=options)
        else:
            sol = odeplug.solve(odeplug.ODEProblem(self._field, data.y0, data.ts,
                                                   params=list(self.model.parameters())),
                                odeplug.Dopri5(rtol=tol, atol=tol), self.rule)
            ys = sol.ys
        forward = self.nfe
        loss = torch.mean((ys[..., 0] - data.x) ** 2)
        _sync(self.device)
        start = time.perf_counter()
        loss.backward()
        _sync(self.device)
        return time.perf_counter() - start, forward, self.nfe - forward


def sines_backward(rule: Any, width: int, times: int, tol: float, seed: int = 0,
                   repeats: int = 1, device: str = "cpu") -> dict[str, Any]:
    """:class:`SinesBackward` of one rule alone: one warm-up (first-call costs of autograd and
    allocators), then ``repeats`` timed runs; backward time (median, min, max) and the NFE of
    each direction. To compare rules, time several :class:`SinesBackward` round by round."""
    run = SinesBackward(rule, width, times, tol, seed, device)
    run()
    runs = [run() for _ in range(repeats)]
    return {
        **spread("backward_s", (r[0] for r in runs)),
        "nfe_forward": runs[-1][1],
        "nfe_backward": runs[-1][2],
    }


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
