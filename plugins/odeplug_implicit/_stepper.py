"""The implicit steppers: one ESDIRK algorithm driven by a tableau, and Radau IIA (order 5).

Both solve their stage equations G(Y) = Y − r − (hD ⊗ I) F(Y) = 0 by simplified Newton
(``_linear.py``) and share everything around it:

**Newton.** Iterate ΔY = −(I − hD ⊗ J)⁻¹ G(Y) from a predictor, measuring ‖ΔY_k‖ in the
solver's norm scaled by atol + rtol·|y0|. With the contraction rate θ_k = ‖ΔY_k‖/‖ΔY_{k−1}‖
the iteration has converged when η_k‖ΔY_k‖ ≤ κ, η_k = θ_k/(1 − θ_k) (η₀ carried over from
the last solve as max(η, 0.1)^0.8), or when ‖ΔY_k‖ ≤ 10⁻³κ; it has failed when θ_k ≥ 0.9 (θ_1 ≥ 2: the second increment may still
exceed the first before the quadratic phase begins) or after
k_max iterations (Hairer & Wanner, *Solving ODEs II*, IV.8, the RADAU5 code). One read of
‖ΔY_k‖ per iteration decides. After a Newton failure the step size does not grow again until a
step has been accepted without one.

**Jacobian and LU reuse.** J is evaluated at the start of a step only when needed and then
serves every stage and every following step (and its LU every stage and every step of the same
h): it is refreshed (1) after an accepted step whose Newton iterations contracted slowly (largest
θ above ``jacobian_reuse_rate``, default 0.05), (2) when Newton fails with a J from an earlier step (the step is
then retried at once with a fresh J: no rejection), and (3) never twice at one point. Newton
failing with a fresh J rejects the step and halves h (counted as a rejected step). The LU of
I − hD ⊗ J is refactorised only when J or h changed; step-size control keeps h when the proposed
change is a factor in [1, 1.2] (RADAU5's rule) so that LUs survive.

**Step control.** Accept when r = ‖err / (atol + rtol·max(|y0|, |y1|))‖ ≤ 1; next
h·min(10, max(0.2, 0.9 r^(−1/q))) (not below h after an accepted step), q the order of the error
estimate plus one.

**Replay.** ``step_from(t0, y0, h)`` of a step this stepper accepted reuses the step's recorded
linear solver (J and LU, or the frozen Krylov point) and Newton iteration counts and runs the
same operations without the convergence tests, so it reproduces y1, the stages and f1 bit for
bit. A step it never took is solved with a fresh J at (t0, y0), Newton iterated to round-off.

**Differentiation (Direct, ACA's replay).** The Newton iterations are recorded by autograd and
backpropagated through; J and its LU factors are constants (as step sizes are). That is the exact
derivative of the computed solution — what finite differences of the solver measure and what a
replay reproduces — and it needs nothing from f but autograd (no Jacobian in backward, any field
autograd can differentiate). At convergence it differs from the implicit-function-theorem
derivative of the exact stage solution by the Newton contraction, θ^k. The price: the graph holds
every Newton iteration (typically 1–3 per stage).
"""

from __future__ import annotations

import abc
import math

import torch

import odeplug
from odeplug import Layout, Step, Stepper, StepState, VectorField, exact_gap, final

from ._linear import (
    BlockJacobian, BlockSolve, DenseJacobian, DenseSolve, FrozenPoint, KrylovSolve, Work, state_columns,
)
from ._tableau import ESDIRKTableau, RadauIIA

__all__ = ["ImplicitStepper", "ESDIRKStepper", "RadauIIAStepper"]

_SAFETY, _GROW, _SHRINK, _NEWTON_SHRINK = 0.9, 10.0, 0.2, 0.5
_KEEP_LOW, _KEEP_HIGH = 1.0, 1.2
_TIGHT_ITERATIONS = 50
_TIGHT_STALL = 1e-10  # relative size of a stalled increment still taken as round-off
# Newton's first iteration has no rate yet: it is taken to contract at least this slowly
# (RADAU5 carries the last rate over; a floor keeps one lucky step from excusing the next).
_FIRST_ETA = 0.1
_NEGLIGIBLE = 1e-3
_DIVERGING = 0.9
_FIRST_DIVERGING = 2.0


class _Failed(Exception):
    """Newton did not converge (internal: turns into a rejected step)."""


class ImplicitStepper(Stepper):
    """Abstract: the Newton machinery, step control and replay shared by the implicit methods."""

    __slots__ = (
        "field", "layout", "order", "dense_order", "max_steps", "rtol", "atol", "first_step", "max_step",
        "krylov", "newton_tol", "max_newton", "reuse_rate", "krylov_tol", "krylov_max", "work", "_norm",
        "_norm_fn", "_dtype", "_columns", "_transforms", "_linearisation", "_fresh", "_stale", "_solvers",
        "_eta", "_records", "error_exponent", "_cap", "batched", "_rows",
    )
    supports_stops = False

    def __init__(self, field: VectorField, layout: Layout, *, order: int, error_order: int, dense_order: int,
                 rtol: float, atol: float, norm: odeplug.Norm, first_step: float | None, max_step: float | None,
                 max_steps: int, linear_solver: str, newton_tol: float, max_newton_iterations: int,
                 jacobian_reuse_rate: float, krylov_tol: float, krylov_max_iterations: int,
                 jacobian: str = "full") -> None:
        self.field, self.layout = field, layout
        self.order, self.dense_order = order, dense_order
        self.error_exponent = 1.0 / (error_order + 1)
        self.rtol, self.atol = float(rtol), float(atol)
        self.first_step, self.max_step, self.max_steps = first_step, max_step, max_steps
        self.krylov = linear_solver == "krylov"
        self.batched = jacobian == "batched"
        self._rows = 0
        self.newton_tol, self.max_newton, self.reuse_rate = newton_tol, max_newton_iterations, jacobian_reuse_rate
        self.krylov_tol, self.krylov_max = krylov_tol, krylov_max_iterations
        self.work = Work(self.krylov)
        self._norm = norm
        self._norm_fn = None
        self._dtype: torch.dtype | None = None
        self._columns: torch.Tensor | None = None
        self._transforms = [True]
        self._linearisation: DenseJacobian | FrozenPoint | None = None
        self._fresh = False  # J was evaluated at the current step's start
        self._stale = True  # J must be re-evaluated before the next step
        self._solvers: dict[tuple[float, ...], DenseSolve | KrylovSolve] = {}
        self._eta = 1.0
        self._cap = False  # a Newton failure since the last accepted step: do not grow h
        self._records: dict[tuple[float, float], tuple[object, tuple[int, ...]]] = {}

    # -- what the core copies into Solution.stats --------------------------------------------
    def stats(self) -> dict[str, int]:
        """Jacobian evaluations, LU factorisations, Newton (and GMRES) iterations."""
        return self.work.as_stats()

    # -- set-up, once per solve ------------------------------------------------------------------
    def _prepare(self, y0: torch.Tensor) -> None:
        if self._dtype == y0.dtype:
            return
        self._dtype = y0.dtype
        self._norm_fn = odeplug.resolve_norm(self._norm, y0.detach(), self.layout)
        columns = None
        if self.layout.has_integral_blocks:
            _, selector = self.layout.state_part()
            columns = state_columns(selector, y0.shape[0], y0.device)
        self._columns = columns
        # jacobian="batched": rows of a single (B, ...) state block with B > 1, on a layout without
        # integral channels (an adjoint's backward state is not one batch: full Jacobian there).
        blocks = self.layout.blocks
        self._rows = 0
        if (self.batched and columns is None and len(blocks) == 1 and len(blocks[0].shape) >= 2
                and blocks[0].shape[0] > 1):
            self._rows = blocks[0].shape[0]
        self._solvers.clear()

    def _scale(self, y0: torch.Tensor) -> torch.Tensor:
        return self.atol + self.rtol * y0.detach().abs()

    # -- the Jacobian and the linear solvers ------------------------------------------------------
    def _linearise(self, t: torch.Tensor, y: torch.Tensor) -> None:
        field, ty = self.field, t.detach().to(y.dtype)

        def fn(x: torch.Tensor) -> torch.Tensor:
            return field(ty, x)

        if self.krylov:
            self._linearisation = FrozenPoint(fn, y.detach(), self._transforms)
        elif self._rows:
            self._linearisation = BlockJacobian.evaluate(fn, y.detach(), self._rows, self._transforms)
        else:
            self._linearisation = DenseJacobian.evaluate(fn, y.detach(), self._columns, self._transforms)
        self.work.jacobians += 1
        self._solvers.clear()
        self._fresh, self._stale = True, False

    def _solver(self, hd: torch.Tensor, key: tuple[float, ...]) -> DenseSolve | KrylovSolve:
        """The solve with I − hD ⊗ J for the current J, factorised once per (J, h)."""
        solver = self._solvers.get(key)
        if solver is None:
            if self.krylov:
                solver = KrylovSolve(self._linearisation, hd, self.krylov_tol, self.krylov_max, self.work)
            elif self._rows:
                solver = BlockSolve(self._linearisation, hd, self.work)
            else:
                solver = DenseSolve(self._linearisation, hd, self.work)
            self._solvers[key] = solver
        return solver

    # -- Newton ---------------------------------------------------------------------------------
    def _residual(self, times: list[torch.Tensor], r: torch.Tensor, hd: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        if len(times) == 1:  # one ESDIRK stage: no stacking
            return Y - r - hd[0, 0] * self.field(times[0], Y[0]).unsqueeze(0)
        K = torch.stack([self.field(t, row) for t, row in zip(times, Y)])
        return Y - r - hd @ K

    def _newton(self, times: list[torch.Tensor], r: torch.Tensor, hd: torch.Tensor, Y: torch.Tensor,
                solver, scale: torch.Tensor, replay: list[int] | None,
                tight: bool) -> tuple[torch.Tensor, int, float]:
        """Solve G(Y) = Y − r − hd F(Y) = 0 from ``Y``: (Y, iterations, largest rate). ``replay``:
        pop the iteration count to run without tests; ``tight``: iterate to round-off (a step
        never taken). Raises :class:`_Failed` when the iteration does not converge."""
        if replay is not None:
            for _ in range(replay.pop(0)):
                Y = Y + solver.solve(-self._residual(times, r, hd, Y))
            return Y, 0, 0.0
        kappa, limit = self.newton_tol, (_TIGHT_ITERATIONS if tight else self.max_newton)
        eta = max(self._eta, _FIRST_ETA) ** 0.8
        previous, worst = None, 0.0
        eps = torch.finfo(Y.dtype).eps
        for k in range(limit):
            delta = solver.solve(-self._residual(times, r, hd, Y))
            Y = Y + delta
            self.work.newton_iterations += 1
            with torch.no_grad():
                d = delta.detach()
                if tight:
                    size = float((d.abs().max() / Y.detach().abs().max().clamp_min(1e-300)).nan_to_num(nan=math.inf))
                else:
                    size = float(self._norm_fn(d[0] / scale) if d.shape[0] == 1
                                 else torch.stack([self._norm_fn(row / scale) for row in d]).max())
            if not math.isfinite(size):
                self.work.newton_failures += 1
                raise _Failed
            if tight:
                if size <= 4 * eps:
                    return Y, k + 1, worst
                if previous is not None and k >= 2 and size >= previous:  # stalled
                    if size <= _TIGHT_STALL:
                        return Y, k + 1, worst
                    raise _Failed
                previous = size
                continue
            if size <= _NEGLIGIBLE * kappa:  # an increment far below the tolerance: done
                return Y, k + 1, worst
            if previous is not None:
                rate = size / previous
                worst = max(worst, rate)
                # The second increment may exceed the first (a poor predictor, the quadratic
                # phase not reached yet); divergence is declared from the third on.
                if rate >= (_FIRST_DIVERGING if k == 1 else _DIVERGING):
                    break
                eta = rate / (1 - rate) if rate < 1 else math.inf
            if eta * size <= kappa:
                self._eta = eta
                return Y, k + 1, worst
            previous = size
        if tight:
            raise _Failed
        self.work.newton_failures += 1
        raise _Failed

    # -- the Stepper contract --------------------------------------------------------------------
    def start(self, t0: torch.Tensor, y0: torch.Tensor, t_end: torch.Tensor) -> StepState:
        self._prepare(y0)
        f0 = self.field(t0.to(y0.dtype), y0)
        if self.first_step is not None:
            h = torch.as_tensor(self.first_step, dtype=t0.dtype, device=t0.device)
        else:
            with torch.no_grad():
                h = self._initial_step(t0.detach(), y0.detach(), f0.detach())
        return StepState(t0, y0, f0, self._clamp(h))

    def _clamp(self, h: torch.Tensor) -> torch.Tensor:
        return h if self.max_step is None else h.clamp(max=self.max_step)

    def _initial_step(self, t0: torch.Tensor, y0: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
        """Hairer, Nørsett & Wanner's starting step (Solving ODEs I, II.4): one evaluation."""
        scale = self._scale(y0)
        d0, d1 = float(self._norm_fn(y0 / scale)), float(self._norm_fn(f0 / scale))
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        f1 = self.field((t0 + h0).to(y0.dtype), y0 + h0 * f0)
        d2 = float(self._norm_fn((f1 - f0) / scale)) / h0
        if max(d1, d2) <= 1e-15:
            h1 = max(1e-6, h0 * 1e-3)
        else:
            h1 = (0.01 / max(d1, d2)) ** (1.0 / (self.order + 1))
        return torch.tensor(min(100 * h0, h1), dtype=t0.dtype, device=t0.device)

    def attempt(self, state: StepState, t_target: torch.Tensor, land: bool = False):
        t0, y0, f0, proposed = state
        if land:
            shortened = t0 + proposed > t_target
            h = torch.where(shortened, exact_gap(t0, t_target), proposed)
        else:
            shortened = torch.zeros((), dtype=torch.bool, device=t0.device)
            h = proposed
        t1 = t0 + h
        try:
            y1, stages, error, used = self._attempt_newton(t0, y0, f0, h)
        except _Failed:
            self._cap = True
            with torch.no_grad():
                h_next = (h * _NEWTON_SHRINK).detach()
                status = torch.stack([t0 + h_next > t0, t0 >= t_target]).tolist()
            return StepState(t0, y0, f0, h_next), None, (False, True, status[0], False)
        with torch.no_grad():
            scale = self.atol + self.rtol * torch.maximum(y0.detach().abs(), y1.detach().abs())
            ratio = self._norm_fn(error / scale).to(h.dtype)
            accept = ratio <= 1
            factor = torch.clamp(_SAFETY * ratio.clamp_min(1e-10) ** (-self.error_exponent), _SHRINK, _GROW)
            factor = torch.where(accept, factor.clamp(1.0, 1.0 if self._cap else _GROW), factor.clamp_max(1.0))
            keep = accept & (factor >= _KEEP_LOW) & (factor <= _KEEP_HIGH)
            factor = torch.where(keep, torch.ones_like(factor), factor)
            h_next = (h * factor).detach()
            h_next = torch.where(accept & shortened, torch.maximum(h_next, proposed), h_next)
            h_next = self._clamp(h_next)
            t_next = torch.where(accept, t1, t0)
            flags = torch.stack([accept.to(torch.float64), torch.isfinite(y1).all().to(torch.float64),
                                 (t1 > t0).to(torch.float64), (t_next >= t_target).to(torch.float64),
                                 t0.detach().to(torch.float64), h.detach().to(torch.float64)]).tolist()
        accepted, finite, size_ok, reached = (bool(x) for x in flags[:4])
        status = (accepted, finite, size_ok, reached)
        if not accepted:
            return StepState(t0, y0, f0, h_next), None, status
        solver, iterations, worst = used
        self._cap = False
        self._records[(flags[4], flags[5])] = (solver, iterations)
        self._stale = self._stale or worst > self.reuse_rate
        self._fresh = False
        f1 = self.field(t1.to(y0.dtype), y1)
        step = Step(t0, t1, y0, y1, torch.cat([stages, f1.unsqueeze(0)]), h, shortened, f1)
        return StepState(t1, y1, f1, h_next), step, status

    def _attempt_newton(self, t0: torch.Tensor, y0: torch.Tensor, f0: torch.Tensor, h: torch.Tensor):
        """One step's stages with the reuse policy: a J from an earlier step gets one chance,
        then a fresh J at (t0, y0); Newton failing with a fresh J raises :class:`_Failed`."""
        while True:
            if self._linearisation is None or self._stale:
                self._linearise(t0, y0)
            try:
                return self._take(t0, y0, f0, h, replay=None, tight=False)
            except _Failed:
                if self._fresh:
                    raise
                self._stale = True

    def step_from(self, t0: torch.Tensor, y0: torch.Tensor, h: torch.Tensor) -> Step:
        self._prepare(y0)
        f0 = self.field(t0.to(y0.dtype), y0)
        record = self._records.get((float(t0.detach()), float(h.detach())))
        if record is not None:
            solver, iterations = record
            y1, stages, _, _ = self._take(t0, y0, f0, h, replay=list(iterations), tight=False, solver=solver)
        else:
            y1, stages = self._solve_afresh(t0, y0, f0, h)
        t1 = t0 + h
        f1 = self.field(t1.to(y0.dtype), y1)
        landed = torch.zeros((), dtype=torch.bool, device=t0.device)
        return Step(t0, t1, y0, y1, torch.cat([stages, f1.unsqueeze(0)]), h, landed, f1)

    def _solve_afresh(self, t0: torch.Tensor, y0: torch.Tensor, f0: torch.Tensor, h: torch.Tensor):
        """A step this stepper never took: Newton to round-off with the Jacobian at hand (any
        J serves when iterating to convergence), or, if it does not converge, a fresh one at
        (t0, y0). The stepper's own Jacobian state is left as it was for its next attempt."""
        kept = (self._linearisation, self._fresh, self._stale, dict(self._solvers))
        try:
            if self._linearisation is None:
                self._linearise(t0, y0)
            try:
                y1, stages, _, _ = self._take(t0, y0, f0, h, replay=None, tight=True)
            except _Failed:
                self._linearise(t0, y0)
                y1, stages, _, _ = self._take(t0, y0, f0, h, replay=None, tight=True)
        except _Failed:
            raise odeplug.SolveError(
                f"Newton's iteration did not converge for a step of size {float(h):.3g} from "
                f"t={float(self.field.to_user_time(t0.detach())):.6g} even with a fresh Jacobian; "
                "take smaller steps (the problem may be too nonlinear for this step size)."
            ) from None
        finally:
            if kept[0] is not None and self._linearisation is not kept[0]:
                self._linearisation, self._fresh, self._stale, self._solvers = kept
        return y1, stages

    def restart(self, state: StepState, y: torch.Tensor) -> StepState:
        self._stale = True  # the state jumped: J at the old state may be far off
        return StepState(state.t, y, self.field(state.t.to(y.dtype), y), state.h)

    @abc.abstractmethod
    def _take(self, t0: torch.Tensor, y0: torch.Tensor, f0: torch.Tensor, h: torch.Tensor, *,
              replay: list[int] | None, tight: bool, solver=None):  # noqa: ANN001, ANN202
        """The step's stages: (y1, stage rows for the dense output (first row F(t0, y0)),
        error estimate (no graph), (solver used, Newton iterations per solve, largest rate))."""


def _hermite(theta: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor, f0: torch.Tensor, f1: torch.Tensor,
             h: torch.Tensor) -> torch.Tensor:
    """The cubic Hermite through (y0, f0) and (y1, f1) at θ ∈ [0, 1] (0-d or 1-D)."""
    if theta.dim() == 1:
        theta = theta.unsqueeze(-1)
    t2, t3 = theta * theta, theta * theta * theta
    h01 = 3 * t2 - 2 * t3
    h10 = t3 - 2 * t2 + theta
    h11 = t3 - t2
    return y0 + h01 * (y1 - y0) + h * (h10 * f0 + h11 * f1)


@final
class ESDIRKStepper(ImplicitStepper):
    """The one ESDIRK algorithm: stage i solves Y_i = r_i + hγ F(t0 + c_i h, Y_i),
    r_i = y0 + h Σ_{j<i} a_ij k_j, by Newton from the predictor r_i + hγ k_{i−1}, and takes
    k_i = (Y_i − r_i)/(hγ) (Hairer & Wanner IV.8: no evaluation of F at the converged Y_i, whose
    Newton error J would amplify). y1 = Y_s (stiffly accurate), err = h Σ (b_i − b̂_i) k_i, dense
    output the cubic Hermite through (y0, F(t0, y0)) and (y1, F(t1, y1))."""

    __slots__ = ("tableau", "_coef")

    def __init__(self, tableau: ESDIRKTableau, field: VectorField, layout: Layout, **options) -> None:
        super().__init__(field, layout, order=tableau.order, error_order=tableau.embedded_order,
                         dense_order=3, **options)
        self.tableau = tableau
        self._coef: dict[str, torch.Tensor] | None = None

    def _take(self, t0, y0, f0, h, *, replay, tight, solver=None):  # noqa: ANN001, ANN202
        tableau = self.tableau
        if self._coef is None or self._coef["a"].dtype != y0.dtype:
            self._coef = tableau.tensors(y0.dtype, y0.device)
        a, c = self._coef["a"], tableau.c
        hy = h.to(y0.dtype)
        hgamma = hy * tableau.gamma
        hd = hgamma.detach().reshape(1, 1)
        if solver is None:
            solver = self._solver(hd, (float(h),))
        scale = self._scale(y0)
        ks = [f0]
        iterations, worst = [], 0.0
        Y = y0
        for i in range(1, tableau.stages):
            r = torch.addmv(y0, torch.stack(ks).t(), a[i, :i] * hy)
            ti = (t0 + h).to(y0.dtype) if c[i] == 1.0 else (t0 + c[i] * h).to(y0.dtype)
            guess = (r + hgamma * ks[-1]).unsqueeze(0)
            Y, count, rate = self._newton([ti], r.unsqueeze(0), hgamma.reshape(1, 1), guess, solver, scale,
                                          replay, tight)
            Y = Y[0]
            iterations.append(count)
            worst = max(worst, rate)
            ks.append((Y - r) / hgamma)
        stages = torch.stack(ks)
        if replay is not None:
            return Y, stages, None, (solver, tuple(iterations), worst)
        with torch.no_grad():
            error = torch.mv(stages.detach().t(), self._coef["b_error"] * hy.detach())
        return Y, stages, error, (solver, tuple(iterations), worst)

    def interpolate(self, step: Step, t: torch.Tensor) -> torch.Tensor:
        h = (step.t1 - step.t0).to(step.y0.dtype)
        theta = ((t - step.t0) / (step.t1 - step.t0)).to(step.y0.dtype)
        return _hermite(theta, step.y0, step.y1, step.stages[0], step.stages[-1], h)


@final
class RadauIIAStepper(ImplicitStepper):
    """Radau IIA of order 5: the three stages Y = 1 ⊗ y0 + (hA ⊗ I) F(Y) solved together by
    Newton with the 3n × 3n matrix I − hA ⊗ J (one LU, formed directly rather than through
    RADAU5's complex eigen-transformation) from the predictor Y_j = y0 + c_j h F(t0, y0). y1 = Y_3,
    the error estimate is RADAU5's (one more solve with I − hγ₀J, its own LU), dense output the
    collocation polynomial (order 3)."""

    __slots__ = ("method", "_coef")

    def __init__(self, method: RadauIIA, field: VectorField, layout: Layout, **options) -> None:
        super().__init__(field, layout, order=method.order, error_order=3, dense_order=3, **options)
        self.method = method
        self._coef: dict[str, torch.Tensor] | None = None

    def _take(self, t0, y0, f0, h, *, replay, tight, solver=None):  # noqa: ANN001, ANN202
        if self._coef is None or self._coef["a"].dtype != y0.dtype:
            self._coef = self.method.tensors(y0.dtype, y0.device)
        coef = self._coef
        hy = h.to(y0.dtype)
        hd = (coef["a"] * hy).detach()
        if solver is None:
            solver = self._solver(hd, (float(h),))
        times = [(t0 + ci * h).to(y0.dtype) for ci in self.method.c[:2]] + [(t0 + h).to(y0.dtype)]
        r = y0.unsqueeze(0).expand(3, -1)
        guess = y0 + (coef["c"] * hy).unsqueeze(-1) * f0
        Y, count, worst = self._newton(times, r, coef["a"] * hy, guess, solver, self._scale(y0), replay, tight)
        Z = Y - y0
        if replay is not None:  # a replay reproduces the step; its error test was passed
            return Y[2], torch.cat([f0.unsqueeze(0), Z]), None, (solver, (count,), worst)
        with torch.no_grad():
            gamma0 = 1.0 / self.method.mu
            hg = (hy * gamma0).detach()
            error_solver = self._error_solver(solver, hg)
            rhs = hg * f0.detach() + gamma0 * (coef["e"] @ Z.detach())
            error = error_solver.solve(rhs.unsqueeze(0))[0]
        return Y[2], torch.cat([f0.unsqueeze(0), Z]), error, (solver, (count,), worst)

    def _error_solver(self, solver, hg: torch.Tensor):  # noqa: ANN001, ANN202
        """The solve with I − hγ₀J for the error estimate, kept with the step's own solver."""
        key = ("error", id(solver))
        found = self._solvers.get(key)
        if found is None:
            if isinstance(solver, KrylovSolve):
                found = KrylovSolve(solver.point, hg.reshape(1, 1), self.krylov_tol, self.krylov_max, self.work)
            else:
                found = type(solver)(solver.jacobian, hg.reshape(1, 1), self.work)  # DenseSolve, BlockSolve
            self._solvers[key] = found
        return found

    def interpolate(self, step: Step, t: torch.Tensor) -> torch.Tensor:
        y0, Z = step.y0, step.stages[1:4]
        theta = ((t - step.t0) / (step.t1 - step.t0)).to(y0.dtype)
        dense, exponents = self._coef_for(y0)
        if theta.dim() == 0:
            return y0 + (dense @ theta**exponents) @ Z
        weights = (theta.unsqueeze(-1) ** exponents) @ dense.t()  # (times, 3)
        return y0 + weights @ Z

    def _coef_for(self, y0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        coef = self.method.tensors(y0.dtype, y0.device)
        return coef["dense"], coef["dense_exponents"]
