"""The one explicit Runge–Kutta algorithm, adaptive or fixed-step, driven by a tableau.

Step control follows torchdiffeq's ``RKAdaptiveStepsizeODESolver`` (and Hairer, Nørsett &
Wanner, *Solving ODEs I*, sec. II.4) so that on the same problem odeplug takes the same steps:

- error ratio r = ‖err / (atol + rtol·max(|y0|, |y1|))‖, accept if r ≤ 1;
- next step h·min(ifactor, max(safety / r^(1/p), dfactor)), with dfactor replaced by 1 when the
  step was accepted (safety 0.9, ifactor 10, dfactor 0.2, p the method's order);
- initial step by Hairer's selection, which costs one extra evaluation;
- time is float64 (or wider); stage times are cast to the state's dtype.

Tensors only in the loop: one device synchronisation per attempted step.
"""

from __future__ import annotations

import torch

import odeplug
from odeplug import Layout, Step, Stepper, StepState, VectorField, final

from ._tableau import ButcherTableau

__all__ = ["RungeKuttaStepper"]

_SAFETY, _IFACTOR, _DFACTOR = 0.9, 10.0, 0.2


@final
class RungeKuttaStepper(Stepper):
    """A :class:`Stepper` for any explicit Runge–Kutta tableau."""

    __slots__ = (
        "field", "tableau", "layout", "order", "max_steps", "adaptive", "rtol", "atol",
        "first_step", "dt", "_norm", "_norm_fn", "_coef", "_dtype", "_stage_is_end", "_t_end",
    )

    def __init__(
        self,
        tableau: ButcherTableau,
        field: VectorField,
        layout: Layout,
        *,
        rtol: float = 0.0,
        atol: float = 0.0,
        norm: odeplug.Norm | None = None,
        first_step: float | None = None,
        dt: float | None = None,
        max_steps: int,
    ) -> None:
        self.field = field
        self.tableau = tableau
        self.layout = layout
        self.order = tableau.order
        self.max_steps = max_steps
        self.adaptive = dt is None
        self.rtol, self.atol = rtol, atol
        self.first_step, self.dt = first_step, dt
        self._norm = norm
        self._norm_fn = None
        self._coef: dict[str, torch.Tensor] | None = None
        self._dtype: torch.dtype | None = None
        self._stage_is_end = tuple(ci == 1.0 for ci in tableau.c)

    # -- set-up, once per solve -------------------------------------------------------------
    def _prepare(self, y0: torch.Tensor) -> None:
        if self._dtype == y0.dtype and self._coef is not None:
            return
        self._dtype = y0.dtype
        self._coef = self.tableau.tensors(y0.dtype, y0.device)
        if self.adaptive:
            self._norm_fn = odeplug.resolve_norm(self._norm, y0, self.layout)

    def _scaled_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self._norm_fn(self._norm, x, self.layout)

    def start(self, t0: torch.Tensor, y0: torch.Tensor, t_end: torch.Tensor) -> StepState:
        self._prepare(y0)
        f0 = self.field(t0.to(y0.dtype), y0)
        if not self.adaptive:
            h = torch.as_tensor(self.dt, dtype=t0.dtype, device=t0.device)
            self._t_end = t_end
            return StepState(t0, y0, f0, h)
        if self.first_step is not None:
            h = torch.as_tensor(self.first_step, dtype=t0.dtype, device=t0.device)
        else:
            with torch.no_grad():
                h = self._initial_step(t0.detach(), y0.detach(), f0.detach())
        return StepState(t0, y0, f0, h)

    def _initial_step(self, t0: torch.Tensor, y0: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
        """Hairer, Nørsett & Wanner (II.4) starting step, with torchdiffeq's constants."""
        scale = self.atol + y0.abs() * self.rtol
        d0 = self._scaled_norm(y0 / scale).abs()
        d1 = self._scaled_norm(f0 / scale).abs()
        if d0 < 1e-5 or d1 < 1e-5:
            h0 = torch.tensor(1e-6, dtype=y0.dtype, device=y0.device)
        else:
            h0 = 0.01 * d0 / d1
        h0 = h0.abs()
        y1 = y0 + h0 * f0
        f1 = self.field((t0 + h0).to(y0.dtype), y1)
        d2 = torch.abs(self._scaled_norm((f1 - f0) / scale) / h0)
        if d1 <= 1e-15 and d2 <= 1e-15:
            h1 = torch.clamp(h0 * 1e-3, min=1e-6)
        else:
            # torchdiffeq passes order − 1 here, so the exponent is 1/order.
            h1 = (0.01 / torch.maximum(d1, d2)) ** (1.0 / float(self.order))
        return torch.minimum(100 * h0, h1.abs()).to(t0.dtype)

    # -- the loop ----------------------------------------------------------------------------
    def _stages(
        self, t0: torch.Tensor, y0: torch.Tensor, f0: torch.Tensor, dt: torch.Tensor, t1: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All stages of one step, and the last stage input (y1 for an FSAL tableau)."""
        coef = self._coef
        dtype = y0.dtype
        t0y, dty, t1y = t0.to(dtype), dt.to(dtype), t1.to(dtype)
        a_dt = coef["a"] * dty
        c = coef["c"]
        stages = self.tableau.stages
        if not torch.is_grad_enabled():
            # No graph to protect: write stages into one buffer, so each stage input is a single
            # matrix-vector product over the rows so far (no re-stacking: O(s·n) not O(s²·n)).
            k = y0.new_empty(stages, y0.shape[0])
            k[0] = f0
            yi = y0
            for i in range(1, stages):
                yi = torch.addmv(y0, k[:i].t(), a_dt[i, :i])
                ti = t1y if self._stage_is_end[i] else t0y + c[i] * dty
                k[i] = self.field(ti, yi)
            return k, yi
        ks = [f0]
        yi = y0
        for i in range(1, stages):
            yi = torch.addmv(y0, torch.stack(ks).t(), a_dt[i, :i])  # same layout as the buffer path
            ti = t1y if self._stage_is_end[i] else t0y + c[i] * dty
            ks.append(self.field(ti, yi))
        return torch.stack(ks), yi

    def attempt(
        self, state: StepState, t_target: torch.Tensor, land: bool = False
    ) -> tuple[StepState, Step | None, tuple[bool, bool, bool, bool]]:
        t0, y0, f0, proposed = state
        if not self.adaptive:
            return self._fixed_attempt(state, t_target, land)
        if land:
            shortened = t0 + proposed > t_target
            dt = torch.where(shortened, t_target - t0, proposed)
            t1 = torch.where(shortened, t_target, t0 + dt)
        else:
            shortened = torch.zeros((), dtype=torch.bool, device=t0.device)
            dt = proposed
            t1 = t0 + dt
        stages, last_input = self._stages(t0, y0, f0, dt, t1)
        dty = dt.to(y0.dtype)
        coef = self._coef
        y1 = last_input if self.tableau.fsal else torch.addmv(y0, stages.t(), coef["b"] * dty)
        with torch.no_grad():
            error = torch.mv(stages.t().detach(), coef["b_error"] * dty)
            tolerance = self.atol + self.rtol * torch.maximum(y0.detach().abs(), y1.detach().abs())
            ratio = self._scaled_norm(error / tolerance)
            accept = ratio <= 1
            ratio64 = ratio.to(dt.dtype)
            floor = torch.where(accept, torch.ones_like(ratio64), torch.full_like(ratio64, _DFACTOR))
            factor = torch.clamp(torch.maximum(_SAFETY / ratio64 ** (1.0 / self.order), floor), max=_IFACTOR)
            dt_next = (dt * factor).detach()
            if land:
                dt_next = torch.where(accept & shortened, torch.maximum(dt_next, proposed), dt_next)
            t_next = torch.where(accept, t1, t0)
            status = torch.stack(
                [accept, torch.isfinite(y1).all(), t1 > t0, t_next >= t_target]
            ).tolist()
        accepted, finite, size_ok, reached = status
        if accepted:
            if self.tableau.fsal:
                f1 = stages[-1]
                step = Step(t0, t1, y0, y1, stages, dt, shortened, f1)
            else:
                f1 = self.field(t1.to(y0.dtype), y1)
                if self.tableau.dense_uses_f1:  # as step_from does: the interpolant's last row
                    stages = torch.cat([stages, f1.unsqueeze(0)])
                step = Step(t0, t1, y0, y1, stages, dt, shortened, f1)
            return StepState(t1, y1, f1, dt_next), step, (True, finite, size_ok, reached)
        return StepState(t0, y0, f0, dt_next), None, (False, finite, size_ok, reached)

    def _fixed_attempt(
        self, state: StepState, t_target: torch.Tensor, land: bool
    ) -> tuple[StepState, Step | None, tuple[bool, bool, bool, bool]]:
        t0, y0, f0, dt = state
        remaining = (t_target if land else self._t_end) - t0
        # Land exactly on the end time instead of overshooting it or leaving a sliver. That last
        # step's size depends on the end time, and (unlike adaptive step sizes) is differentiated.
        landed = remaining <= dt * (1 + 1e-9)
        h = torch.where(landed, remaining, dt)
        t1 = t0 + h
        stages, _ = self._stages(t0, y0, f0, h, t1)
        y1 = torch.addmv(y0, stages.t(), self._coef["b"] * h.to(y0.dtype))
        with torch.no_grad():
            status = torch.stack([torch.isfinite(y1).all(), t1 > t0, t1 >= t_target]).tolist()
        finite, size_ok, reached = status
        f1 = self.field(t1.to(y0.dtype), y1)
        if self.tableau.dense_uses_f1:
            stages = torch.cat([stages, f1.unsqueeze(0)])
        step = Step(t0, t1, y0, y1, stages, h, landed, f1)
        return StepState(t1, y1, f1, dt), step, (True, finite, size_ok, reached)

    def interpolate(self, step: Step, t: torch.Tensor) -> torch.Tensor:
        t0, t1, y0, stages = step.t0, step.t1, step.y0, step.stages
        theta = ((t - t0) / (t1 - t0)).to(y0.dtype)
        dense = self._coef["dense"]  # (stages, degree): b_i(θ) = Σ_p dense[i, p] θ^(p+1)
        exponents = torch.arange(1, dense.shape[1] + 1, device=y0.device, dtype=y0.dtype)
        h = (t1 - t0).to(y0.dtype)
        if theta.dim() == 0:
            return torch.addmv(y0, stages.t(), (dense @ theta**exponents) * h)
        weights = (theta.unsqueeze(-1) ** exponents) @ dense.t()  # (times, stages)
        return torch.addmm(y0, weights * h, stages)

    def restart(self, state: StepState, y: torch.Tensor) -> StepState:
        return StepState(state.t, y, self.field(state.t.to(y.dtype), y), state.h)

    def step_from(self, t0: torch.Tensor, y0: torch.Tensor, h: torch.Tensor) -> Step:
        self._prepare(y0)
        t1 = t0 + h
        f0 = self.field(t0.to(y0.dtype), y0)
        stages, last_input = self._stages(t0, y0, f0, h, t1)
        landed = torch.zeros((), dtype=torch.bool, device=t0.device)
        if self.adaptive and self.tableau.fsal:
            return Step(t0, t1, y0, last_input, stages, h, landed, stages[-1])
        # As an accepted attempt: y1 from the weights, then F(t1, y1), the next first stage.
        y1 = torch.addmv(y0, stages.t(), self._coef["b"] * h.to(y0.dtype))
        f1 = self.field(t1.to(y0.dtype), y1)
        if self.tableau.dense_uses_f1:
            stages = torch.cat([stages, f1.unsqueeze(0)])
        return Step(t0, t1, y0, y1, stages, h, landed, f1)
