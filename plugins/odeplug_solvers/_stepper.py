"""The one explicit Runge–Kutta algorithm, adaptive or fixed-step, driven by a tableau.

Step control follows torchdiffeq's ``RKAdaptiveStepsizeODESolver`` (and Hairer, Nørsett &
Wanner, *Solving ODEs I*, sec. II.4) so that on the same problem odeplug takes the same steps:

- error ratio r = ‖err / (atol + rtol·max(|y0|, |y1|))‖, accept if r ≤ 1;
- next step h·min(ifactor, max(safety / r^(1/p), dfactor)), with dfactor replaced by 1 when the
  step was accepted (safety 0.9, ifactor 10, dfactor 0.2, p the method's order);
- initial step by Hairer's selection, which costs one extra evaluation;
- time is float64 (or wider); stage times are cast to the state's dtype.

Fixed steps (no error control) end where :func:`fixed_step_end` says: every ``dt``, on every
output and stop time (``dt=None``), or on a given grid (whose inner times become stops of the
solve, :func:`add_grid_stops`); see :class:`odeplug_solvers.FixedStep` for the options.

Tensors only in the loop: one device synchronisation per attempted step.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

import odeplug
from odeplug import Layout, Step, Stepper, StepState, VectorField, exact_gap, final

from ._tableau import ButcherTableau

__all__ = [
    "RungeKuttaStepper", "add_grid_stops", "check_grid_ends", "exact_gap", "fixed_step_end",
    "linear_interpolation", "unprimed",
]

_SAFETY, _IFACTOR, _DFACTOR = 0.9, 10.0, 0.2


@final
class RungeKuttaStepper(Stepper):
    """A :class:`Stepper` for any explicit Runge–Kutta tableau."""

    __slots__ = (
        "field", "tableau", "layout", "order", "dense_order", "max_steps", "adaptive", "rtol", "atol",
        "first_step", "dt", "_norm", "_norm_fn", "_coef", "_dtype", "_stage_is_end", "_t_end",
        "min_step", "max_step", "last_dt", "_rtol", "_atol", "_stops", "_jumps", "grid", "linear",
        "perturb", "_to_outputs", "_origin", "_run_trial", "_run_stages", "_run_initial_step", "_evaluate", "_compiled",
        "stiff_steps", "_stiff_run", "_calm_run", "_stage_gap", "_b_error", "_error_dtype", "_stiff_limit",
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
        adaptive: bool | None = None,
        grid: tuple[float, ...] | None = None,
        interpolation: str = "cubic",
        perturb: bool = False,
        compile: bool | str = False,  # noqa: A002  (the solver option's name)
        stiff_steps: int | None = None,
    ) -> None:
        """``adaptive`` (default: whether ``dt`` is None) picks error control; the fixed-step
        options ``dt``, ``grid``, ``interpolation`` and ``perturb`` are :class:`FixedStep`'s;
        ``compile`` is the solvers' (see :func:`compiled_step`)."""
        self.field = field
        self.adaptive = dt is None if adaptive is None else adaptive
        self.stiff_steps = stiff_steps if self.adaptive else None
        self._stiff_run = self._calm_run = 0
        self._stiff_limit = 0.98 * tableau.real_stability_limit
        self._compiled = bool(compile)
        # Compiled stages evaluate F uncounted and count once per call (see VectorField.uncounted).
        self._evaluate = field.uncounted if compile else field
        if compile:
            mode = None if compile is True else compile
            self._run_trial = compiled_step("_trial", mode)
            self._run_stages = compiled_step("_stages", mode)
            self._run_initial_step = compiled_step("_initial_step", mode)
        else:
            self._run_trial = RungeKuttaStepper._trial
            self._run_stages = RungeKuttaStepper._stages
            self._run_initial_step = RungeKuttaStepper._initial_step
        self.grid = grid
        self.linear = interpolation == "linear"
        self.perturb = perturb and not self.adaptive
        # dt=None and no grid: every step ends on the next output (or stop) time.
        self._to_outputs = not self.adaptive and dt is None and grid is None
        self._origin: tuple[torch.Tensor, torch.Tensor] | None = None  # of a dt grid
        if grid is not None:
            add_grid_stops(field, grid)
        self.min_step = float(min_step)
        self.max_step = None if max_step is None else float(max_step)
        self.last_dt: torch.Tensor | None = None
        self._stops = field.stops
        self._jumps = field.jumps
        self.tableau = tableau
        self.layout = layout
        self.order = tableau.order
        self.dense_order = tableau.order - 1 if tableau.dense_order is None else tableau.dense_order
        if self.linear:
            self.dense_order = 1
        self.max_steps = max_steps
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
            # The error control runs in float32 or wider: a float16 state's scaled error
            # (error / tolerance) overflows its 65504 long before the solve is in trouble.
            edtype = self._error_dtype = torch.promote_types(y0.dtype, torch.float32)
            like = y0.detach().to(edtype)
            self._norm_fn = odeplug.resolve_norm(self._norm, like, self.layout)
            # Per-element tolerances are broadcast to the flat state once per solve.
            self._rtol = flat_tolerance("rtol", self.rtol, self.layout, like)
            self._atol = flat_tolerance("atol", self.atol, self.layout, like)
            check_precision(self._rtol, y0.dtype)
            error_coef = self.tableau.tensors(edtype, y0.device)
            self._b_error = error_coef["b_error"]
            self._stage_gap = error_coef.get("stage_gaps")
        if self._stops is not None:
            self._stops = self._stops.to(y0.device)
        if self._jumps is not None:
            self._jumps = self._jumps.to(y0.device)

    # -- which side of a jump f is evaluated on ------------------------------------------------
    def _after(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The time at which F is evaluated at the start of a step from solver time ``t``: ``t``
        in ``dtype``, or the next float after it when ``t`` is a jump (always, with perturb)."""
        ty = t.to(dtype)
        if self._jumps is None and not self.perturb:
            return ty
        up = torch.nextafter(ty, torch.full_like(ty, float("inf")))
        if self.perturb:
            return up
        return torch.where((self._jumps == t.detach()).any(), up, ty)

    def _before(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The time of a step's end-of-step stages (c = 1): the float before ``t`` on a jump
        (always, with perturb)."""
        ty = t.to(dtype)
        if self._jumps is None and not self.perturb:
            return ty
        down = torch.nextafter(ty, torch.full_like(ty, float("-inf")))
        if self.perturb:
            return down
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
        return shortened, torch.where(shortened, exact_gap(t0, limit), h)

    def _scaled_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self._norm_fn(x)

    def start(self, t0: torch.Tensor, y0: torch.Tensor, t_end: torch.Tensor) -> StepState:
        self._prepare(y0)
        self._check_budget_can_be_met(t0, t_end)
        if not self.adaptive:
            if self.grid is not None:
                check_grid_ends(self.grid, self.field, t0, t_end)
            self._t_end = t_end
            self._origin = (t0, torch.zeros_like(t0))
            f0 = self.field(self._after(t0, y0.dtype), unprimed(y0) if self.perturb else y0)
            # With dt=None the grid sets each step; h is then the span, never used as a size.
            h = (t_end - t0).detach() if self.dt is None else t0.new_tensor(self.dt)
            return StepState(t0, y0, f0, h)
        f0 = self.field(self._after(t0, y0.dtype), y0)
        if self.first_step is not None:
            h = torch.as_tensor(self.first_step, dtype=t0.dtype, device=t0.device)
        else:
            with torch.no_grad():
                h = self._run_initial_step(self, t0.detach(), y0.detach(), f0.detach())
            if self._compiled:
                self.field.count(1)
        return StepState(t0, y0, f0, self._clamp(h))

    def _check_budget_can_be_met(self, t0: torch.Tensor, t_end: torch.Tensor) -> None:
        """Refuse up front a solve whose span needs more than ``max_steps`` steps of the fixed
        ``dt`` (or of at most ``max_step``), instead of stepping until the budget runs out."""
        size, name = (self.dt, "dt") if not self.adaptive else (self.max_step, "max_step")
        if size is None or self.field.open_end:
            return
        span = abs(float(t_end - t0))
        needed = math.ceil(span / size * (1 - 1e-12))
        if needed > self.max_steps:
            raise odeplug.StepBudgetExhaustedError(
                f"the span {span:.6g} needs at least {needed} steps of {name}={size:g}, more than "
                f"max_steps={self.max_steps}: raise max_steps to at least {needed} or use a larger "
                f"{name}."
            )

    def _clamp(self, h: torch.Tensor) -> torch.Tensor:
        if self.min_step > 0 or self.max_step is not None:
            return h.clamp(min=self.min_step, max=self.max_step)
        return h

    def _initial_step(self, t0: torch.Tensor, y0: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
        """Hairer, Nørsett & Wanner (II.4) starting step, with torchdiffeq's constants; its
        norms in the error control's dtype (float32 or wider), as the step control's. Tensor
        operations only (both branches computed, one kept), so it synchronises nothing and
        compiles with the step (one evaluation of F, counted by the caller when compiled)."""
        dtype = y0.dtype
        y0, f0 = y0.to(self._error_dtype), f0.to(self._error_dtype)
        scale = self._atol + y0.abs() * self._rtol
        d0 = self._scaled_norm(y0 / scale).abs()
        d1 = self._scaled_norm(f0 / scale).abs()
        h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1).abs()
        y1 = y0 + h0 * f0
        f1 = self._evaluate((t0 + h0).to(dtype), y1.to(dtype)).to(y0.dtype)
        d2 = torch.abs(self._scaled_norm((f1 - f0) / scale) / h0)
        # torchdiffeq passes order − 1 here, so the exponent is 1/order.
        h1 = torch.where((d1 <= 1e-15) & (d2 <= 1e-15), torch.clamp(h0 * 1e-3, min=1e-6),
                         (0.01 / torch.maximum(d1, d2)) ** (1.0 / float(self.order)))
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
        # Every stage time in one vector operation (indexing it is one more per stage).
        c_times = t0y + coef["c"] * dty
        stages = self.tableau.stages
        if self._compiled:
            # Traced: each stage input as a sum of scaled stages, which the compiler fuses into
            # one kernel (a matrix-vector product over re-stacked stages would copy them).
            ks = [f0]
            yi = y0
            for i in range(1, stages):
                yi = y0 + sum(a_dt[i, j] * ks[j] for j in range(i))
                ti = t1y if self._stage_is_end[i] else c_times[i]
                ks.append(self._evaluate(ti, yi))
            return torch.stack(ks), yi
        if not torch.is_grad_enabled():
            # No graph to protect: write stages into one buffer, so each stage input is a single
            # matrix-vector product over the rows so far (no re-stacking: O(s·n) not O(s²·n)).
            k = y0.new_empty(stages, y0.shape[0])
            k[0] = f0
            yi = y0
            for i in range(1, stages):
                yi = torch.addmv(y0, k[:i].t(), a_dt[i, :i])
                ti = t1y if self._stage_is_end[i] else c_times[i]
                k[i] = self._evaluate(ti, yi)
            return k, yi
        ks = [f0]
        yi = y0
        for i in range(1, stages):
            yi = torch.addmv(y0, torch.stack(ks).t(), a_dt[i, :i])  # same layout as the buffer path
            ti = t1y if self._stage_is_end[i] else c_times[i]
            ks.append(self._evaluate(ti, yi))
        return torch.stack(ks), yi

    def _trial(
        self, t0: torch.Tensor, y0: torch.Tensor, f0: torch.Tensor, proposed: torch.Tensor,
        t_target: torch.Tensor, land: bool,
    ) -> tuple[torch.Tensor, ...]:
        """One adaptive attempt as tensors, nothing read on the host: the step's size ``dt``
        (``proposed``, or shortened to a stop or the target), its end ``t1``, ``shortened``, the
        stages, ``y1``, the next size and the flags (accept, finite, size ok, reached[, forced]
        [, on a jump]). The compiled path (``compile=``) compiles exactly this function: the
        field's evaluations together with the stage arithmetic and the step-size control."""
        limit = self._limit(t0, t_target, land)
        if limit is not None:
            shortened, dt = self._shorten(t0, proposed, limit)
        else:
            shortened = torch.zeros((), dtype=torch.bool, device=t0.device)
            dt = proposed
        t1 = t0 + dt
        stages, last_input = self._stages(t0, y0, f0, dt, t1)
        dty = dt.to(y0.dtype)
        coef = self._coef
        y1 = last_input if self.tableau.fsal else torch.addmv(y0, stages.t(), coef["b"] * dty)
        with torch.no_grad():
            edtype = self._error_dtype
            k = stages.detach().to(edtype)
            dte = dt.detach().to(edtype)
            error = torch.mv(k.t(), self._b_error * dte)
            scale = torch.maximum(y0.detach().abs(), y1.detach().abs()).to(edtype)
            tolerance = self._atol + self._rtol * scale
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
            if self.stiff_steps is not None:
                # Shampine's and Hairer's test (Solving ODEs II, sec. IV.2): the last two
                # stages' slopes differ by about J (Y_s − Y_(s−1)), so h·ρ with
                # ρ = ‖k_s − k_(s−1)‖ / ‖Y_s − Y_(s−1)‖ estimates h times the stiffest rate;
                # above the stability limit the step size is set by stability, not accuracy.
                # Y_s − Y_(s−1) = h Σ_j d_j k_j, so h·ρ = ‖k_s − k_(s−1)‖ / ‖Σ_j d_j k_j‖: both
                # norms from one product with the rows d and (0, …, −1, 1).
                gaps = torch.linalg.vector_norm(torch.mm(self._stage_gap, k), dim=1)
                flags.append(gaps[1] > self._stiff_limit * gaps[0])
            if self._jumps is not None:
                flags.append(self._on_jump(t1))
            flags = torch.stack(flags)
        return dt, t1, shortened, stages, y1, dt_next, flags

    def attempt(
        self, state: StepState, t_target: torch.Tensor, land: bool = False
    ) -> tuple[StepState, Step | None, tuple[bool, ...]]:
        t0, y0, f0, proposed = state
        if not self.adaptive:
            return self._fixed_attempt(state, t_target, land)
        dt, t1, shortened, stages, y1, dt_next, flags = self._run_trial(
            self, t0, y0, f0, proposed, t_target, land)
        self._count_compiled()
        self.last_dt = dt
        status = flags.tolist()
        if self.stiff_steps is not None and status[0]:
            self._stiffness_test(status[4 + (self.min_step > 0)], t0)
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

    def _stiffness_test(self, stiff: bool, t0: torch.Tensor) -> None:
        """Count accepted steps at the stability limit (six calm steps in a row reset the run,
        as in Hairer's DOPRI5) and raise once ``stiff_steps`` of them have run."""
        if not stiff:
            self._calm_run += 1
            if self._calm_run >= 6:
                self._stiff_run = 0
            return
        self._calm_run = 0
        self._stiff_run += 1
        if self._stiff_run < self.stiff_steps:
            return
        name = self.tableau.name
        raise odeplug.StiffProblemError(
            f"the problem looks stiff: for {self._stiff_run} accepted steps up to "
            f"t={float(self.field.to_user_time(t0)):.6g} {name}'s step size stayed at its stability "
            f"limit (h·ρ ≈ {self.tableau.real_stability_limit:.3g}, ρ the field's stiffest rate), so "
            "stability, not accuracy, sets the steps. Use an implicit solver: odeplug.Kvaerno5() or "
            "odeplug.RadauIIA5() (the odeplug_implicit plugin). To go on with this solver anyway, "
            f"pass {name}(stiff_steps=None) (or a larger count)."
        )

    def _count_compiled(self) -> None:
        if self._compiled:
            self.field.count(self.tableau.stages - 1)

    def _status(self, status: list[bool]) -> tuple[bool, ...]:
        """(accepted, finite, size_ok, reached[, forced]) from the stepper's flag list."""
        return tuple(status[:5]) if self.min_step > 0 else tuple(status[:4])

    def _fixed_attempt(
        self, state: StepState, t_target: torch.Tensor, land: bool
    ) -> tuple[StepState, Step | None, tuple[bool, bool, bool, bool]]:
        t0, y0, f0, dt = state
        # Land exactly on the end time instead of overshooting it or leaving a sliver. That
        # step's size depends on the end time and, unlike adaptive step sizes, is differentiated.
        end = t_target if (land or self._to_outputs) else self._t_end
        h, t1, landed, self._origin = fixed_step_end(
            t0, None if self.dt is None else dt, end, self._stops, self._t_end, land, self._origin
        )
        self.last_dt = h
        stages, _ = self._run_stages(self, t0, y0, f0, h, t1)
        self._count_compiled()
        y1 = torch.addmv(y0, stages.t(), self._coef["b"] * h.to(y0.dtype))
        with torch.no_grad():
            flags = [torch.isfinite(y1).all(), t1 > t0, t1 >= t_target]
            if self._jumps is not None:
                flags.append(self._on_jump(t1))
            status = torch.stack(flags).tolist()
        finite, size_ok, reached = status[:3]
        on_jump = self._jumps is not None and status[3]
        step, f_next = self._end_of_step(t0, t1, y0, y1, stages, h, landed, on_jump, next_stage=True)
        return StepState(t1, y1, f_next, dt), step, (True, finite, size_ok, reached)

    def _end_of_step(
        self, t0: torch.Tensor, t1: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor,
        stages: torch.Tensor, h: torch.Tensor, landed: torch.Tensor, on_jump: bool, next_stage: bool,
    ) -> tuple[Step, torch.Tensor | None]:
        """A fixed (or non-FSAL) step's end: F(t1, y1), the dense output's last row and the next
        step's first stage in one evaluation; after a jump, or with perturb, the next first stage
        is F just after t1 (evaluated only if ``next_stage``) and the step hands no f1 on."""
        dtype = y0.dtype
        if not (on_jump or self.perturb):
            f1 = self.field(t1.to(dtype), y1)
            if self.tableau.dense_uses_f1:
                stages = torch.cat([stages, f1.unsqueeze(0)])
            return Step(t0, t1, y0, y1, stages, h, landed, f1), f1
        if self.tableau.dense_uses_f1 and not self.linear:
            # The interpolant's end slope: F just before a jump; with perturb, F at t1 itself,
            # as torchdiffeq's cubic interpolation reads it.
            t1y = t1.to(dtype)
            at = torch.nextafter(t1y, torch.full_like(t1y, float("-inf"))) if on_jump else t1y
            stages = torch.cat([stages, self.field(at, y1).unsqueeze(0)])
        f_next = self.field(self._after(t1, dtype), y1) if next_stage else None
        return Step(t0, t1, y0, y1, stages, h, landed, None), f_next

    def interpolate(self, step: Step, t: torch.Tensor) -> torch.Tensor:
        t0, t1, y0, stages = step.t0, step.t1, step.y0, step.stages
        theta = ((t - t0) / (t1 - t0)).to(y0.dtype)
        if self.linear:
            return linear_interpolation(theta, y0, step.y1)
        dense = self._coef["dense"]  # (stages, degree): b_i(θ) = Σ_p dense[i, p] θ^(p+1)
        exponents = self._coef["dense_exponents"]
        h = (t1 - t0).to(y0.dtype)
        if theta.dim() == 0:
            return torch.addmv(y0, stages.t(), (dense @ theta**exponents) * h)
        weights = (theta.unsqueeze(-1) ** exponents) @ dense.t()  # (times, stages)
        return torch.addmm(y0, weights * h, stages)

    def restart(self, state: StepState, y: torch.Tensor) -> StepState:
        if self._jumps is not None or self.perturb:  # on a jump (or with perturb), F just after it
            return StepState(state.t, y, self.field(self._after(state.t, y.dtype), y), state.h)
        return StepState(state.t, y, self.field(state.t.to(y.dtype), y), state.h)

    def step_from(self, t0: torch.Tensor, y0: torch.Tensor, h: torch.Tensor) -> Step:
        if self._to_outputs and t0.requires_grad and torch.is_grad_enabled():
            # A replay differentiating the step's start (ACA's dL/dts) would take h as a
            # constant or as a function of the last time, but here it is the difference of
            # two output times, which (t0, y0, h) does not say: refuse rather than be wrong.
            raise odeplug.UnsupportedCombinationError(
                "with dt=None a fixed-step solver's steps end on the output times, so each step's "
                "size is the difference of two of them, which a step recomputed from (t0, y0, h) "
                "cannot differentiate (ACA's dL/dts). Use Direct() or a continuous adjoint "
                "(Adjoint(), GQAdjoint(), GaussAdjoint()), give the solver dt= or grid=, or "
                "leave ts without requires_grad (dL/dy0 and dL/dθ work)."
            )
        self._prepare(y0)
        t1 = t0 + h
        f0 = self.field(self._after(t0, y0.dtype), y0)
        stages, last_input = self._run_stages(self, t0, y0, f0, h, t1)
        self._count_compiled()
        landed = torch.zeros((), dtype=torch.bool, device=t0.device)
        # A step ending on a jump does not hand its last stage on (one sync, only with jumps).
        on_jump = self._jumps is not None and bool(self._on_jump(t1))
        if self.adaptive and self.tableau.fsal:
            return Step(t0, t1, y0, last_input, stages, h, landed, None if on_jump else stages[-1])
        # As an accepted attempt: y1 from the weights, then F(t1, y1), the next first stage.
        y1 = torch.addmv(y0, stages.t(), self._coef["b"] * h.to(y0.dtype))
        step, _ = self._end_of_step(t0, t1, y0, y1, stages, h, landed, on_jump, next_stage=False)
        return step


@functools.cache
def compiled_step(method: str, mode: str | None) -> Callable[..., tuple[torch.Tensor, ...]]:
    """``RungeKuttaStepper.<method>`` compiled by ``torch.compile`` (``mode`` its mode, e.g.
    ``"reduce-overhead"`` for CUDA graphs): one compiled function per process, shared by every
    stepper, so a new solve (a new stepper, a new field closure) reuses the compiled code
    instead of compiling again; dynamo's guards recompile only for a new shape, dtype, device,
    tableau or grad mode. The field is traced together with the stage arithmetic (and, for
    ``_trial``, the step-size control), which is what removes eager PyTorch's per-operation
    cost at small widths; the loop, the dense output and the rules stay eager."""
    return torch.compile(getattr(RungeKuttaStepper, method), mode=mode, dynamic=False)


#: The state dtypes whose tolerances are checked against their machine epsilon (float32 and
#: float64 are not: torchdiffeq's default rtol 1e-7 is already near float32's epsilon, and
#: there it costs steps, not the answer).
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def check_precision(rtol: float | torch.Tensor, dtype: torch.dtype) -> None:
    """Warn (:class:`odeplug.PrecisionWarning`) when ``rtol`` (as :func:`flat_tolerance` gives
    it) is below 100 × the machine epsilon of a float16 or bfloat16 state: steps then add
    increments the dtype rounds away, and the solve stalls at a wrong answer (bfloat16,
    y' = −y at rtol 1e-7: y(1) = 0.996, not 0.368)."""
    if dtype not in _LOW_PRECISION:
        return
    smallest = 100 * torch.finfo(dtype).eps
    low = rtol if isinstance(rtol, float) else float(rtol.min())
    if low < smallest:
        import warnings

        warnings.warn(
            f"rtol={low:g} is below what a {dtype} state resolves (100 × its machine epsilon "
            f"= {smallest:.4g}): its steps' increments round away and the solve can stall at a "
            f"wrong answer. Use rtol >= {smallest:.4g}, or solve in float32 and cast the result.",
            odeplug.PrecisionWarning, stacklevel=4,
        )


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


def linear_interpolation(theta: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor) -> torch.Tensor:
    """(1 − θ) y0 + θ y1 at θ (0-d: the flat state; 1-D: one row per θ), exactly y0 at θ = 0
    and y1 at θ = 1, where its derivative in θ is zero: torchdiffeq's ``_linear_interp``
    returns the end itself there (the output time only picks it)."""
    if theta.dim() == 1:
        theta = theta.unsqueeze(-1)
    inside = (1 - theta) * y0 + theta * y1
    return torch.where(theta == 1, y1, torch.where(theta == 0, y0, inside))


def unprimed(y0: torch.Tensor) -> torch.Tensor:
    """``y0`` as a new tensor object (a view, on its graph), so that the field evaluates afresh:
    a rule may have primed F at the initial time itself (VectorField.prime matches the state
    tensor only), and with perturb the first stage is at the float after it."""
    return y0.view_as(y0)


def fixed_step_end(
    t0: torch.Tensor, dt: torch.Tensor | None, end: torch.Tensor, stops: torch.Tensor | None,
    t_end: torch.Tensor, land: bool, origin: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """Where a fixed step from ``t0`` ends (solver time): ``(h, t1, landed, origin)``.

    With a step size ``dt``: the next grid time ``anchor + (k + 1)·dt`` (``origin`` = (anchor,
    k), the grid's last restart and the steps since; computed from the anchor, not summed step
    by step, so grid times carry no accumulated rounding, as torchdiffeq's ``arange(n)·dt +
    t0``), or the next stop or ``end`` when within ``dt`` (1e-9 relative: no sliver of a last
    step); the grid restarts from where a step landed. With ``dt=None``: the next stop or
    ``end``, whichever comes first. A step that ends on one ends there exactly (``t1`` its
    value, with the derivative of ``t0 + h``), and its size has the derivative of that time −
    ``t0`` (a stop is a constant; ``end`` is an output time, differentiable). ``landed`` (see
    :class:`Step`): it ended on a stop, on ``end`` with ``land``, or on the solve's last time
    ``t_end``. Tensor operations only."""
    false = torch.zeros((), dtype=torch.bool, device=t0.device)
    at_stop = false
    if stops is not None:
        index = torch.searchsorted(stops, t0.detach().reshape(1), right=True)
        nxt = stops[index].reshape(()).to(t0.dtype)
    if dt is None:
        limit = end
        if stops is not None:
            at_stop = nxt < end
            limit = torch.where(at_stop, nxt, end)
        h = exact_gap(t0, limit)
        lands = torch.ones_like(false)
    else:
        slack = dt * (1 + 1e-9)
        on_end = end - t0 <= slack
        anchor, since = origin if origin is not None else (t0, torch.zeros_like(t0))
        # A state the grid did not lead to (a caller's own) steps dt from where it is.
        on_grid = t0.detach() == (anchor + since * dt).detach()
        h = exact_gap(t0, torch.where(on_grid, anchor + (since + 1) * dt, t0 + dt))
        h = torch.where(on_end, exact_gap(t0, end), h)
        limit = end
        if stops is not None:
            # Land on the next stop (the grid goes on from it with the same dt).
            at_stop = (nxt < end) & (nxt - t0 <= slack)
            h = torch.where(at_stop, exact_gap(t0, nxt), h)
            limit = torch.where(at_stop, nxt, end)
        lands = on_end | at_stop
    t1 = t0 + h
    # t0 + h can miss the landing time by an ulp; a sliver of a step after it would cost a step.
    t1 = torch.where(lands, t1 + (limit.detach() - t1.detach()), t1)
    on_end = lands & ~at_stop
    landed = at_stop | (on_end if land else on_end & (end >= t_end))
    if dt is not None:
        origin = (torch.where(lands, t1, anchor), torch.where(lands, torch.zeros_like(since), since + 1))
    return h, t1, landed, origin


def add_grid_stops(field: VectorField, grid: tuple[float, ...]) -> None:
    """Make a grid's inner times stops of ``field`` (solver time, with the problem's own), so
    that every step lands on them and every rule that reads ``field.stops`` (ACA's record of
    where steps landed) sees them; its ends are the solve's own first and last times."""
    inner = grid[1:-1]
    if not inner:
        return
    times = torch.tensor(inner, dtype=torch.float64) * field.direction
    if field.stops is not None:
        times = torch.cat([field.stops[:-1], times.to(field.stops)])
    inf = torch.full((1,), float("inf"), dtype=times.dtype, device=times.device)
    field.stops = torch.cat([torch.unique(times), inf])


def check_grid_ends(
    grid: tuple[float, ...], field: VectorField, t0: torch.Tensor, t_end: torch.Tensor
) -> None:
    """Refuse a grid that does not run from the solve's first time to its last (either way round:
    a backward solve runs it in reverse), to float32 rounding. Once per solve."""
    ends = sorted(field.direction * value for value in (grid[0], grid[-1]))
    wanted = (float(t0.detach()), float(t_end.detach()))
    if all(abs(a - b) <= 1e-6 * max(1.0, abs(b)) for a, b in zip(ends, wanted)):
        return
    first, last = (float(field.to_user_time(t)) for t in (t0.detach(), t_end.detach()))
    raise odeplug.InvalidOptionError(
        f"grid must start at ts[0] and end at ts[-1], got a grid from {grid[0]!r} to "
        f"{grid[-1]!r} for a solve from {first!r} to {last!r}; make its first and last times "
        "the first and last output times."
    )
