"""Solver overhead: what odeplug's loop costs over the evaluations it makes, and against the
PyTorch peers on the same solve.

MLP vector field (width 64, two hidden layers, tanh), batch 16, rtol 1e-6, float32. Two routes:

- **Dopri5 forward** (no graph): odeplug's solve against the same number of bare evaluations of
  the field (``net(y)`` called NFE times, timed alone: the floor any solver has), against
  torchdiffeq's ``odeint(method="dopri5")`` (the same steps: the NFE must be equal), and against
  torchode's Dopri5 when torchode is installed (its own step control per batch element, so its
  NFE is reported beside).
- **Adjoint backward**: the backward of ``odeplug.Adjoint`` against the same number of bare
  evaluations of what each backward evaluation is (f with a graph and one VJP for the state
  and the parameters), and against torchdiffeq's ``odeint_adjoint`` backward.

Every timed quantity is measured in rounds, each route's variants interleaved within a round, and
reported as median (min–max) of the per-round ratios.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from . import BenchOptions, interleaved, spread, task
from ._progress import progress

_DIM, _BATCH = 4, 16


@task("overhead", "loop cost over bare evaluations (Dopri5 forward, eager and compiled; Adjoint "
      "backward); vs torchdiffeq and torchode",
      columns={"compile_s": "the compiled route's first solve (its compilation), s",
               "stepping_us": "the loop's own cost per attempted step, µs: (solve − bare evaluations) / attempts"})
def overhead(options: BenchOptions) -> list[dict[str, Any]]:
    import torchdiffeq

    import odeplug

    torch.manual_seed(options.seed)
    width = (options.widths or (64,))[0]
    tol = options.tol or 1e-6
    repeats = options.repeats or 30
    device = options.device
    net = torch.nn.Sequential(
        torch.nn.Linear(_DIM, width), torch.nn.Tanh(), torch.nn.Linear(width, width),
        torch.nn.Tanh(), torch.nn.Linear(width, _DIM),
    ).to(device)
    params = tuple(net.parameters())
    y0 = torch.randn(_BATCH, _DIM, device=device)
    ts = torch.linspace(0, 10, 20, device=device)
    counted = _Counted(net)

    def synced(fn: Callable[[], Any]) -> Callable[[], float]:
        def timed() -> float:
            if device != "cpu":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device != "cpu":
                torch.cuda.synchronize()
            return time.perf_counter() - start

        return timed

    # -- Dopri5 forward -----------------------------------------------------------------------
    solver = odeplug.Dopri5(rtol=tol, atol=tol)

    def ours_forward() -> Any:
        with torch.no_grad():
            return odeplug.solve(odeplug.ODEProblem(counted, y0, ts), solver)

    probe_stats = ours_forward().stats
    nfe = probe_stats["nfe"]
    attempts = probe_stats["steps_accepted"] + probe_stats["steps_rejected"]

    def bare_forward() -> None:
        with torch.no_grad():
            for _ in range(nfe):
                net(y0)

    def torchdiffeq_forward() -> Any:
        with torch.no_grad():
            return torchdiffeq.odeint(counted, y0, ts, rtol=tol, atol=tol, method="dopri5")

    # The compiled path (Dopri5(compile=True)) on the same net, through a field without the
    # Python counter (torch.compile would specialise on it and compile at every call).
    compiled_solver = odeplug.Dopri5(rtol=tol, atol=tol, compile=True)
    plain = _Plain(net)

    def compiled_forward() -> Any:
        with torch.no_grad():
            return odeplug.solve(odeplug.ODEProblem(plain, y0, ts), compiled_solver)

    started = time.perf_counter()
    nfe_compiled = compiled_forward().stats["nfe"]
    compile_s = time.perf_counter() - started

    forward = {"odeplug": ours_forward, "bare evaluations": bare_forward,
               "torchdiffeq": torchdiffeq_forward, "odeplug compiled": compiled_forward}
    torchode_forward, torchode_nfe = _torchode(net, y0, ts, tol)
    if torchode_forward is not None:
        forward["torchode"] = torchode_forward
    counted.nfe = 0
    torchdiffeq_forward()
    nfe_torchdiffeq = counted.nfe

    # -- Adjoint backward ---------------------------------------------------------------------
    rule = odeplug.Adjoint()

    def adjoint_forward() -> torch.Tensor:
        return odeplug.solve(odeplug.ODEProblem(counted, y0, ts), solver, rule)

    probe = adjoint_forward()
    probe.ys.pow(2).sum().backward()
    nfe_backward = probe.stats["nfe_backward"]
    net.zero_grad()
    cotangent = torch.ones_like(y0)

    def bare_backward() -> None:
        for _ in range(nfe_backward):
            with torch.enable_grad():
                y = y0.detach().requires_grad_(True)
                torch.autograd.grad(net(y), (y, *params), cotangent)

    backward_inputs: dict[str, Callable[[], torch.Tensor]] = {
        "odeplug": lambda: adjoint_forward().ys.pow(2).sum(),
        "torchdiffeq": lambda: torchdiffeq.odeint_adjoint(
            counted, y0, ts, rtol=tol, atol=tol, method="dopri5", adjoint_params=params
        ).pow(2).sum(),
    }

    def backward_of(make_loss: Callable[[], torch.Tensor]) -> Callable[[], float]:
        def timed() -> float:  # the backward alone: the forward runs outside the clock
            loss = make_loss()
            seconds = synced(loss.backward)()
            net.zero_grad()
            return seconds

        return timed

    backward = {name: backward_of(make) for name, make in backward_inputs.items()}
    backward["bare evaluations"] = synced(bare_backward)

    timers = {("forward", name): synced(fn) for name, fn in forward.items()}
    timers.update({("backward", name): fn for name, fn in backward.items()})
    for timer in timers.values():  # warm-up
        timer()
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in timers}
    with progress(total=repeats * len(timers), enabled=options.progress, desc="overhead") as bar:
        for _, key in interleaved(list(timers), repeats):
            samples[key].append(timers[key]())
            bar.update(1)

    def ratio(route: str, a: str, b: str) -> list[float]:
        return [x / y for x, y in zip(samples[(route, a)], samples[(route, b)])]

    def stepping(name: str) -> list[float]:
        """The loop's own cost per attempted step, µs: the solve minus its bare evaluations,
        round by round (the same NFE, so what is left is stages, control, dense output)."""
        pairs = zip(samples[("forward", name)], samples[("forward", "bare evaluations")])
        return [(x - y) / attempts * 1e6 for x, y in pairs]

    forward_row: dict[str, Any] = {
        "route": "Dopri5 forward", "width": width, "nfe": nfe, "nfe_torchdiffeq": nfe_torchdiffeq,
        **spread("loop_over_evaluations", ratio("forward", "odeplug", "bare evaluations")),
        **spread("vs_torchdiffeq", ratio("forward", "odeplug", "torchdiffeq")),
        **spread("odeplug_s", samples[("forward", "odeplug")]),
        **spread("stepping_us", stepping("odeplug")),
    }
    if torchode_forward is not None:
        forward_row.update(spread("vs_torchode", ratio("forward", "odeplug", "torchode")))
        forward_row["nfe_torchode"] = torchode_nfe
    compiled_row: dict[str, Any] = {
        "route": "Dopri5 forward, compile=True", "width": width, "nfe": nfe_compiled,
        **spread("loop_over_evaluations", ratio("forward", "odeplug compiled", "bare evaluations")),
        **spread("vs_torchdiffeq", ratio("forward", "odeplug compiled", "torchdiffeq")),
        **spread("odeplug_s", samples[("forward", "odeplug compiled")]),
        **spread("stepping_us", stepping("odeplug compiled")),
        "compile_s": compile_s,
    }
    if torchode_forward is not None:
        compiled_row.update(spread("vs_torchode", ratio("forward", "odeplug compiled", "torchode")))
    backward_row: dict[str, Any] = {
        "route": "Adjoint backward", "width": width, "nfe": nfe_backward,
        **spread("loop_over_evaluations", ratio("backward", "odeplug", "bare evaluations")),
        **spread("vs_torchdiffeq", ratio("backward", "odeplug", "torchdiffeq")),
        **spread("odeplug_s", samples[("backward", "odeplug")]),
    }
    return [forward_row, compiled_row, backward_row]


class _Counted(torch.nn.Module):
    """The field ``net(y)``, counting its evaluations (for torchdiffeq's NFE)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.nfe = 0

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        return self.net(y)


class _Plain(torch.nn.Module):
    """The field ``net(y)``."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


def _torchode(net: torch.nn.Module, y0: torch.Tensor, ts: torch.Tensor, tol: float
              ) -> tuple[Callable[[], Any] | None, int | None]:
    """torchode's Dopri5 on the same problem (eager, its own step control for each batch
    element), and its mean NFE per element; ``(None, None)`` when torchode is not installed."""
    try:
        import torchode
    except ImportError:
        return None, None
    term = torchode.ODETerm(lambda t, y: net(y))
    method = torchode.Dopri5(term=term)
    controller = torchode.IntegralController(atol=tol, rtol=tol, term=term)
    solver = torchode.AutoDiffAdjoint(method, controller)
    problem = torchode.InitialValueProblem(y0=y0, t_eval=ts.expand(len(y0), -1))

    def run() -> Any:
        with torch.no_grad():
            return solver.solve(problem)

    nfe = int(run().stats["n_f_evals"].float().mean())
    return run, nfe
