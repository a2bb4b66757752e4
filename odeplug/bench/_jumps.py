"""Bench task ``jumps``: what declaring the times where f is discontinuous in t saves, counted.

An adaptive solver that is not told where f jumps finds each jump by rejecting steps until one
ends close enough before it; told (``ODEProblem(..., jump_times=...)``, torchdiffeq's
``options={"jump_t": ...}``), it ends a step on the jump and starts the next with a fresh
evaluation just after it (docs/methods/step-control.md). Each row solves one problem by one
route twice, without and with the jump times, and puts the counts side by side:

- ``switch``: dy/dt = A₁y before t = 1.3, A₂y after (the example of step-control.md), float64,
  7 output times on [0, 3], Dopri5 at rtol 1e-8, atol 1e-10.
- ``steps``: dy/dt = −y + Σ_j c_j H(t − t_j), a forcing that steps up or down at t_j = 0.7,
  1.6, 2.4 (H the unit step), float64, same times and tolerances.
- ``cde``: a controlled differential equation dy = f(y) dX(t) on a piecewise-linear path X
  through 12 irregular observations (odeplug.interpolate with LinearInterpolation); dX/dt jumps
  at the 10 interior knots, which ``odeplug.controlled`` passes on as jump times. "Without" is
  an ``ODEProblem`` with the same field and no jump times. Dopri5 at rtol = atol = 1e-6
  (docs/pipelines.md).

Routes: ``odeplug Dopri5`` (forward solve), ``torchdiffeq dopri5`` (the same field and
tolerances through ``torchdiffeq.odeint``, counted by a wrapper and its step callbacks) and
``Adjoint backward`` (odeplug's Adjoint rule, L = Σ ys², the backward solve's counts).

Counts are deterministic: every round must give the same ones (checked). ``time_ratio`` is the
median over rounds of (time with jump times) / (time without), the two runs of a round back to
back, with its min and max (``time_ratio_min``, ``time_ratio_max``; for ``Adjoint backward`` a
run is the forward solve and the backward pass). The rows compare each route with itself, so
the two runs of a pair are what is interleaved; routes are not timed against each other.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import torch

from . import BenchOptions, spread, task
from ._progress import progress

__all__ = ["jumps_bench"]

_ROUTES = ("odeplug Dopri5", "torchdiffeq dopri5", "Adjoint backward")


class _CountingField(torch.nn.Module):
    """torchdiffeq's view of a field: counts evaluations, and accepted and rejected steps through
    torchdiffeq's step callbacks (called on the func it is given)."""

    def __init__(self, f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.f = f
        self.nfe = self.accepted = self.rejected = 0

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        return self.f(t, y)

    def callback_accept_step(self, t0: torch.Tensor, y0: torch.Tensor, dt: torch.Tensor) -> None:
        self.accepted += 1

    def callback_reject_step(self, t0: torch.Tensor, y0: torch.Tensor, dt: torch.Tensor) -> None:
        self.rejected += 1


class _Case:
    """One problem: its field, y0, output times, jump times, parameters and tolerances."""

    def __init__(self, name: str, f: Callable, y0: torch.Tensor, ts: torch.Tensor,
                 jump_times: torch.Tensor, params: list[torch.Tensor], rtol: float, atol: float) -> None:
        self.name, self.f, self.y0, self.ts = name, f, y0, ts
        self.jump_times, self.params, self.rtol, self.atol = jump_times, params, rtol, atol

    def problem(self, with_jumps: bool, y0: torch.Tensor | None = None) -> Any:
        import odeplug

        jumps = {"jump_times": self.jump_times} if with_jumps else {}
        return odeplug.ODEProblem(self.f, self.y0 if y0 is None else y0, self.ts, params=self.params, **jumps)


def _switch(device: str, rtol: float, atol: float) -> _Case:
    f64 = dict(dtype=torch.float64, device=device)
    A1 = torch.tensor([[-0.5, 1.0], [-1.0, -0.5]], **f64, requires_grad=True)
    A2 = torch.tensor([[0.3, -2.0], [2.0, 0.1]], **f64, requires_grad=True)

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (A1 if t < 1.3 else A2) @ y

    return _Case("switch", f, torch.tensor([1.0, 0.5], **f64), torch.linspace(0.0, 3.0, 7, **f64),
                 torch.tensor([1.3], **f64), [A1, A2], rtol, atol)


def _steps(device: str, rtol: float, atol: float) -> _Case:
    f64 = dict(dtype=torch.float64, device=device)
    jumps = torch.tensor([0.7, 1.6, 2.4], **f64)
    heights = torch.tensor([[1.0, -0.5], [-2.0, 1.0], [1.5, 0.5]], **f64, requires_grad=True)

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        on = (t > jumps).to(y.dtype)  # H(t − t_j), one per jump
        return -y + on @ heights

    return _Case("steps", f, torch.tensor([1.0, -0.5], **f64), torch.linspace(0.0, 3.0, 7, **f64),
                 jumps, [heights], rtol, atol)


def _cde(device: str, seed: int, rtol: float, atol: float) -> _Case:
    import odeplug

    generator = torch.Generator().manual_seed(seed)
    f64 = dict(dtype=torch.float64)
    times = torch.sort(torch.rand(12, generator=generator, **f64) * 4).values
    labels = (torch.arange(16) % 2).to(torch.float64)
    angle = (2 * labels[:, None] - 1) * times  # 16 spirals turning either way
    x = torch.stack([torch.cos(angle), torch.sin(angle)], -1)  # (16, 12, 2)
    path = odeplug.interpolate(odeplug.LinearInterpolation(), times.to(device), x.to(device))
    B = (torch.randn(path.shape[-1], 4, 4, generator=generator, **f64) * 0.5).to(device).requires_grad_()
    y0 = torch.randn(16, 4, generator=generator, **f64).to(device)
    cde = odeplug.CDEProblem(lambda t, y: torch.einsum("cij,bj->bic", B, y), path, y0, times.to(device))
    ode = odeplug.controlled(cde)
    if ode.jump_times is None:
        raise RuntimeError("bench jumps: controlled(CDEProblem) on a linear path declared no jump times")
    return _Case("cde", ode.f, ode.y0, ode.ts, ode.jump_times, [B], rtol, atol)


def _run(case: _Case, route: str, with_jumps: bool) -> dict[str, int]:
    """One solve of ``case`` by ``route``; its counts."""
    import odeplug

    if route == "odeplug Dopri5":
        with torch.no_grad():
            stats = odeplug.solve(case.problem(with_jumps), odeplug.Dopri5(rtol=case.rtol, atol=case.atol)).stats
        return {"accepted": stats["steps_accepted"], "rejected": stats["steps_rejected"], "nfe": stats["nfe"]}
    if route == "torchdiffeq dopri5":
        import torchdiffeq

        counted = _CountingField(case.f)
        options = {"jump_t": case.jump_times.to(case.ts.dtype)} if with_jumps else {}
        with torch.no_grad():
            torchdiffeq.odeint(counted, case.y0, case.ts, rtol=case.rtol, atol=case.atol,
                               method="dopri5", options=options)
        return {"accepted": counted.accepted, "rejected": counted.rejected, "nfe": counted.nfe}
    if route == "Adjoint backward":
        y0 = case.y0.clone().requires_grad_()
        solution = odeplug.solve(case.problem(with_jumps, y0), odeplug.Dopri5(rtol=case.rtol, atol=case.atol),
                                 odeplug.Adjoint())
        torch.autograd.grad(solution.ys.square().sum(), [y0, *case.params])
        stats = solution.stats
        return {"accepted": stats["steps_accepted_backward"], "rejected": stats["steps_rejected_backward"],
                "nfe": stats["nfe_backward"]}
    raise ValueError(f"bench jumps: unknown route {route!r}; routes: {', '.join(_ROUTES)}")


def _timed(fn: Callable[[], dict[str, int]], device: str) -> tuple[float, dict[str, int]]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    counts = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, counts


@task("jumps", "jump times declared vs found by rejection: rejected steps, NFE (Dopri5, torchdiffeq, Adjoint, CDE)")
def jumps_bench(options: BenchOptions) -> list[dict[str, Any]]:
    rounds = options.repeats or 5
    # --tol sets rtol = atol for every problem; by default each keeps the tolerances it is
    # documented with.
    ode_tol = (options.tol, options.tol) if options.tol else (1e-8, 1e-10)
    cde_tol = (options.tol, options.tol) if options.tol else (1e-6, 1e-6)
    cases = [
        _switch(options.device, *ode_tol),
        _steps(options.device, *ode_tol),
        _cde(options.device, options.seed, *cde_tol),
    ]
    rows = []
    with progress(total=len(cases) * len(_ROUTES) * (rounds + 1), enabled=options.progress, desc="jumps") as bar:
        for case in cases:
            for route in _ROUTES:
                # The first round warms up (and fixes the counts every later round must repeat).
                counts = {with_jumps: _run(case, route, with_jumps) for with_jumps in (False, True)}
                bar.update(1)
                ratios = []
                for _ in range(rounds):
                    seconds = {}
                    for with_jumps in (False, True):
                        seconds[with_jumps], again = _timed(functools.partial(_run, case, route, with_jumps), options.device)
                        if again != counts[with_jumps]:
                            raise RuntimeError(
                                f"bench jumps: {case.name} by {route} ({'with' if with_jumps else 'without'} "
                                f"jump times) counted {again}, then {counts[with_jumps]}: counts must be "
                                "deterministic; something in the solve depends on state it should not."
                            )
                    ratios.append(seconds[True] / seconds[False])
                    bar.update(1)
                without, with_ = counts[False], counts[True]
                rows.append({
                    "problem": case.name, "route": route, "jumps": int(case.jump_times.numel()),
                    "rtol": case.rtol,
                    "rejected_without": without["rejected"], "rejected_with": with_["rejected"],
                    "accepted_without": without["accepted"], "accepted_with": with_["accepted"],
                    "nfe_without": without["nfe"], "nfe_with": with_["nfe"],
                    **spread("time_ratio", ratios),
                })
    return rows
