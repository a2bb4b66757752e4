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
        "field", "tableau", "layout", "order", "dense_order", "max_steps", "adaptive", "rtol", "atol",
        "first_step", "dt", "_norm", "_norm_fn", "_coef", "_dtype", "_stage_is_end", "_t_end",
        "min_step", "max_step", "last_dt", "_rtol", "_atol", "_stops", "_jumps",
    )
    supports_stops = True

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
        min_step: float = 0.0,
        max_step: float | None = None,
    ) -> None:
        self.field = field
        self.min_step = float(min_step)
        self.max_step = None if max_step is None else float(max_step)
        self.last_dt: torch.Tensor | None = None
        self._stops = field.stops
        self._jumps = field.jumps
        self.tableau = tableau
        self.layout = layout
        self.order = tableau.order
        self.dense_order = tableau.order - 1 if tableau.dense_order is None else tableau.dense_order
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
            # Per-element tolerances are broadcast to the flat state once per solve.
            self._rtol = flat_tolerance("rtol", self.rtol, self.layout, y0)
            self._atol = flat_tolerance("atol", self.atol, self.layout, y0)
        if self._stops is not None:
            self._stops = self._stops.to(y0.device)
        if self._jumps is not None:
            self._jumps = self._jumps.to(y0.device)

    # -- which side of a jump f is evaluated on ------------------------------------------------
    def _after(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The time at which F is evaluated at the start of a step from solver time ``t``: ``t``
        in ``dtype``, or the next float after it when ``t`` is a jump."""
        ty = t.to(dtype)
        if self._jumps is None:
            return ty
        up = torch.nextafter(ty, torch.full_like(ty, float("inf")))
        return torch.where((self._jumps == t.detach()).any(), up, ty)

    def _before(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The time of a step's end-of-step stages (c = 1): the float before ``t`` on a jump."""
        ty = t.to(dtype)
        if self._jumps is None:
            return ty
        down = torch.nextafter(ty, torch.full_like(ty, float("-inf")))
        return torch.where((self._jumps == t.detach()).any(), down, ty)

    def _on_jump(self, t: torch.Tensor) -> torch.Tensor:
        return (self._jumps == t.detach()).any()

    def _limit(self, t0: torch.Tensor, t_target: torch.Tensor, land: bool) -> torch.Tensor | None:
        """Where the step from ``t0`` must end at the latest: the next stop after ``t0`` (and
        ``t_target`` with ``land``), or ``None``. Tensor operations only."""
        if self._stops is None:
            return t_target if land else None
        index = torch.searchsorted(self._stops, t0.detach().reshape(1), right=True)
        nxt = self._stops[index].reshape(()).to(t0.dtype)
        return torch.minimum(nxt, t_target) if land else nxt

    @staticmethod
    def _shorten(
        t0: torch.Tensor, h: torch.Tensor, limit: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(shortened, dt): ``dt`` is ``h`` or, where ``t0 + h`` passes ``limit``, the size that
        ends exactly on it. Its value is chosen so that ``t0 + dt == limit`` in floating point
        (so ``step_from(t0, y0, dt)`` lands there too); its derivative is that of
        ``limit − t0`` (the end does not move with t0)."""
        shortened = t0 + h > limit
        gap = limit - t0
        g = gap.detach()
        t0d, lim = t0.detach(), limit.detach()
        g = torch.where(t0d + g == lim, g, g + (lim - (t0d + g)))
        return shortened, torch.where(shortened, g + (gap - gap.detach()), h)

    def _scaled_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self._norm_fn(self._norm, x, self.layout)

    def start(self, t0: torch.Tensor, y0: torch.Tensor, t_end: torch.Tensor) -> StepState:
        self._prepare(y0)
        f0 = self.field(self._after(t0, y0.dtype), y0)
        if not self.adaptive:
            h = torch.as_tensor(self.dt, dtype=t0.dtype, device=t0.device)
            self._t_end = t_end
            return StepState(t0, y0, f0, h)
        if self.first_step is not None:
            h = torch.as_tensor(self.first_step, dtype=t0.dtype, device=t0.device)
        else:
            with torch.no_grad():
                h = self._initial_step(t0.detach(), y0.detach(), f0.detach())
        return StepState(t0, y0, f0, self._clamp(h))

    def _clamp(self, h: torch.Tensor) -> torch.Tensor:
        if self.min_step > 0 or self.max_step is not None:
            return h.clamp(min=self.min_step, max=self.max_step)
        return h

    def _initial_step(self, t0: torch.Tensor, y0: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
        """Hairer, Nørsett & Wanner (II.4) starting step, with torchdiffeq's constants."""
        scale = self._atol + y0.abs() * self._rtol
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
        t0y, dty, t1y = t0.to(dtype), dt.to(dtype), self._before(t1, dtype)
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
    ) -> tuple[StepState, Step | None, tuple[bool, ...]]:
        t0, y0, f0, proposed = state
        if not self.adaptive:
            return self._fixed_attempt(state, t_target, land)
        limit = self._limit(t0, t_target, land)
        if limit is not None:
            shortened, dt = self._shorten(t0, proposed, limit)
        else:
            shortened = torch.zeros((), dtype=torch.bool, device=t0.device)
            dt = proposed
        t1 = t0 + dt
        self.last_dt = dt
        stages, last_input = self._stages(t0, y0, f0, dt, t1)
        dty = dt.to(y0.dtype)
        coef = self._coef
        y1 = last_input if self.tableau.fsal else torch.addmv(y0, stages.t(), coef["b"] * dty)
        with torch.no_grad():
            error = torch.mv(stages.t().detach(), coef["b_error"] * dty)
            tolerance = self._atol + self._rtol * torch.maximum(y0.detach().abs(), y1.detach().abs())
            ratio = self._scaled_norm(error / tolerance)
            accept = ratio <= 1
            flags = [finite := torch.isfinite(y1).all(), t1 > t0]
            if self.min_step > 0:  # diffrax's force_dtmin: a step at min_step is taken anyway
                forced = (dt.detach() <= self.min_step) & ~accept & finite
                accept = accept | forced
            ratio64 = ratio.to(dt.dtype)
            floor = torch.where(accept, torch.ones_like(ratio64), torch.full_like(ratio64, _DFACTOR))
            factor = torch.clamp(torch.maximum(_SAFETY / ratio64 ** (1.0 / self.order), floor), max=_IFACTOR)
            dt_next = (dt * factor).detach()
            if limit is not None:
                dt_next = torch.where(accept & shortened, torch.maximum(dt_next, proposed), dt_next)
            dt_next = self._clamp(dt_next)
            t_next = torch.where(accept, t1, t0)
            flags = [accept, *flags, t_next >= t_target]
            if self.min_step > 0:
                flags.append(forced)
            if self._jumps is not None:
                flags.append(self._on_jump(t1))
            status = torch.stack(flags).tolist()
        accepted = status[0]
        if accepted:
            on_jump = self._jumps is not None and status[-1]
            if self.tableau.fsal:
                f1 = stages[-1]
            else:
                f1 = self.field(self._before(t1, y0.dtype), y1)
                if self.tableau.dense_uses_f1:  # as step_from does: the interpolant's last row
                    stages = torch.cat([stages, f1.unsqueeze(0)])
            if on_jump:  # f is discontinuous here: the next step starts from just after t1
                f_next = self.field(torch.nextafter(t1.to(y0.dtype), torch.tensor(float("inf"), dtype=y0.dtype, device=y0.device)), y1)
                step = Step(t0, t1, y0, y1, stages, dt, shortened, None)
            else:
                f_next = f1
                step = Step(t0, t1, y0, y1, stages, dt, shortened, f1)
            return StepState(t1, y1, f_next, dt_next), step, self._status(status)
        return StepState(t0, y0, f0, dt_next), None, self._status(status)

    def _status(self, status: list[bool]) -> tuple[bool, ...]:
        """(accepted, finite, size_ok, reached[, forced]) from the stepper's flag list."""
        return tuple(status[:5]) if self.min_step > 0 else tuple(status[:4])

    def _fixed_attempt(
        self, state: StepState, t_target: torch.Tensor, land: bool
    ) -> tuple[StepState, Step | None, tuple[bool, bool, bool, bool]]:
        t0, y0, f0, dt = state
        end = t_target if land else self._t_end
        remaining = end - t0
        # Land exactly on the end time instead of overshooting it or leaving a sliver. That last
        # step's size depends on the end time, and (unlike adaptive step sizes) is differentiated.
        landed = remaining <= dt * (1 + 1e-9)
        h = torch.where(landed, remaining, dt)
        if self._stops is not None:
            # Land on the next stop (the grid goes on from it with the same dt).
            index = torch.searchsorted(self._stops, t0.detach().reshape(1), right=True)
            nxt = self._stops[index].reshape(()).to(t0.dtype)
            at_stop = (nxt < end) & (nxt - t0 <= dt * (1 + 1e-9))
            _, to_stop = self._shorten(t0, nxt - t0 + 1, nxt)
            h = torch.where(at_stop, to_stop, h)
            landed = landed | at_stop
        t1 = t0 + h
        self.last_dt = h
        stages, _ = self._stages(t0, y0, f0, h, t1)
        y1 = torch.addmv(y0, stages.t(), self._coef["b"] * h.to(y0.dtype))
        with torch.no_grad():
            flags = [torch.isfinite(y1).all(), t1 > t0, t1 >= t_target]
            if self._jumps is not None:
                flags.append(self._on_jump(t1))
            status = torch.stack(flags).tolist()
        finite, size_ok, reached = status[:3]
        f1 = self.field(self._before(t1, y0.dtype), y1)
        if self.tableau.dense_uses_f1:
            stages = torch.cat([stages, f1.unsqueeze(0)])
        if self._jumps is not None and status[3]:
            f_next = self.field(self._after(t1, y0.dtype), y1)
            step = Step(t0, t1, y0, y1, stages, h, landed, None)
        else:
            f_next = f1
            step = Step(t0, t1, y0, y1, stages, h, landed, f1)
        return StepState(t1, y1, f_next, dt), step, (True, finite, size_ok, reached)

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
        if self._jumps is not None:  # on a jump, F just after it
            return StepState(state.t, y, self.field(self._after(state.t, y.dtype), y), state.h)
        return StepState(state.t, y, self.field(state.t.to(y.dtype), y), state.h)

    def step_from(self, t0: torch.Tensor, y0: torch.Tensor, h: torch.Tensor) -> Step:
        self._prepare(y0)
        t1 = t0 + h
        f0 = self.field(self._after(t0, y0.dtype), y0)
        stages, last_input = self._stages(t0, y0, f0, h, t1)
        landed = torch.zeros((), dtype=torch.bool, device=t0.device)
        # A step ending on a jump does not hand its last stage on (one sync, only with jumps).
        on_jump = self._jumps is not None and bool(self._on_jump(t1))
        if self.adaptive and self.tableau.fsal:
            return Step(t0, t1, y0, last_input, stages, h, landed, None if on_jump else stages[-1])
        # As an accepted attempt: y1 from the weights, then F(t1, y1), the next first stage.
        y1 = torch.addmv(y0, stages.t(), self._coef["b"] * h.to(y0.dtype))
        f1 = self.field(self._before(t1, y0.dtype), y1)
        if self.tableau.dense_uses_f1:
            stages = torch.cat([stages, f1.unsqueeze(0)])
        return Step(t0, t1, y0, y1, stages, h, landed, None if on_jump else f1)


def flat_tolerance(name: str, value, layout: Layout, like: torch.Tensor):  # noqa: ANN001
    """A solver's ``rtol``/``atol`` for the flat state ``like``: a float stays a float; a
    per-element tolerance (:class:`ElementwiseTolerance`, or a tuple with one entry per
    element of a tuple state) becomes one flat tensor, broadcast once per solve."""
    if isinstance(value, (int, float)):
        return float(value)
    blocks = layout.blocks
    if isinstance(value, tuple) and len(blocks) > 1:
        if len(value) != len(blocks):
            raise odeplug.InvalidOptionError(
                f"{name}: the state is a tuple of {len(blocks)} tensors, so a per-element {name} "
                f"must be a tuple of {len(blocks)} entries (a number or a tensor each), got "
                f"{len(value)} entries."
            )
        parts = value
    elif isinstance(value, tuple):
        parts = (torch.tensor(value, dtype=torch.float64),)
    else:
        parts = (value,)
        if len(blocks) > 1:
            raise odeplug.InvalidOptionError(
                f"{name}: the state is a tuple of {len(blocks)} tensors; give one {name} per "
                f"tensor, {name}=(..., ...), each a number or a tensor broadcastable to it."
            )
    flat = []
    for block, part in zip(blocks, parts):
        if isinstance(part, (int, float)):
            flat.append(like.new_full((block.size,), float(part)))
            continue
        tensor = part.tensor() if hasattr(part, "tensor") else torch.as_tensor(part, dtype=torch.float64)
        try:
            tensor = torch.broadcast_to(tensor, block.shape)
        except RuntimeError:
            raise odeplug.InvalidOptionError(
                f"{name} of shape {tuple(tensor.shape)} does not broadcast to the state"
                f"{'' if len(blocks) == 1 else ' tensor ' + block.name} of shape {block.shape}; "
                f"give a number or a tensor of a broadcastable shape."
            ) from None
        flat.append(tensor.reshape(-1).to(dtype=like.dtype, device=like.device))
    return torch.cat(flat)
