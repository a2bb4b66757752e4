"""The quadrature adjoints: GQAdjoint (Norcliffe & Deisenroth, TMLR 2023) and GaussAdjoint.

Both solve only [z, a_z] backwards (no a_θ channel, so the step control and every backward VJP
involve the state only), and compute the parameter gradient as a definite integral

    dL/dθ = ∫_{t_0}^{t_K} a_z(t)ᵀ ∂f/∂θ(t, z(t)) dt,

split at the output times (a_z jumps there), by quadrature: one VJP of f per node, with
[z, a_z] read from the backward solver's dense output, weighted and added to a running sum, so
memory does not grow with the number of steps. Time gradients follow the same way:
dL/dt_0 = −Σ_{k≥1} dL/dy_kᵀ f(t_k, y_k) + ∫ a_zᵀ ∂f/∂t dt.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch

import odeplug
from odeplug import GradientRule, ODEProblem, Quadrature, Solver, Step, Stepper, configuration
from odeplug.backward import (
    AdjointSystem,
    BacksolveRule,
    Gradients,
    Needs,
    Tape,
    backsolve,
    backward_solver,
    differentiate,
    forward_outputs,
)
from odeplug_quadrature import GaussLegendre

__all__ = ["GQAdjoint", "GaussAdjoint", "QuadratureSum"]


def _positive_float(instance, attribute, value):
    if not (isinstance(value, (int, float)) and value > 0):
        raise odeplug.InvalidOptionError(
            f"{type(instance).__name__}: {attribute.name} must be a positive number, got {value!r}."
        )


def _positive_int_or_none(instance, attribute, value):
    if value is not None and not (isinstance(value, int) and value >= 1):
        raise odeplug.InvalidOptionError(
            f"{type(instance).__name__}: {attribute.name} must be a positive int or None, got {value!r}."
        )


def _quadrature(instance, attribute, value):
    if not isinstance(value, Quadrature):
        raise odeplug.InvalidOptionError(
            f"{type(instance).__name__}: quadrature must be an odeplug.Quadrature such as "
            f"GaussLegendre(), got {value!r}."
        )


@configuration
class GQAdjoint(BacksolveRule):
    """Gauss–Legendre quadrature adjoint (Norcliffe & Deisenroth, "Faster Training of Neural ODEs
    Using Gauß–Legendre Quadrature", TMLR 2023, sec. 3 and Algorithms 1–2).

    On each output interval [t_{k−1}, t_k] the integral is taken with

        n_k = min(max(ceil(C · NFE · |t_k − t_{k−1}| / |t_K − t_0|), 1), max_terms)

    nodes of ``quadrature`` (NFE: the forward solve's evaluations; C = 0.1 and 64 in the paper).
    The backward [z, a_z] solve does not restart at nodes or output times.

    Options: ``C``, ``max_terms``, ``quadrature`` (any registered :class:`odeplug.Quadrature`),
    ``norm``, ``rtol``, ``atol``, ``solver`` of the backward solve (None: as in the forward).
    """

    C: float = attrs.field(default=0.1, validator=_positive_float)
    max_terms: int = attrs.field(default=64, validator=_positive_int_or_none)
    quadrature: Quadrature = attrs.field(factory=GaussLegendre, validator=_quadrature)


@configuration
class GaussAdjoint(BacksolveRule):
    """Per-step Gauss–Legendre quadrature adjoint (the approach of SciMLSensitivity's GaussAdjoint).

    The same [z, a_z] backward solve as :class:`GQAdjoint`, but after **each accepted backward
    step** the integral over that step is added, from an n-node Gauss–Legendre rule on the step's
    dense output with n = ⌊(p+1)/2⌋ (exact to the degree matching the solver's order p, or to
    ``order``). The quadrature error then follows the solver's tolerance; there is no C to tune.
    """

    order: int | None = attrs.field(default=None, validator=_positive_int_or_none)


class QuadratureSum:
    """Running Σ w_j a_z(τ_j)ᵀ [∂f/∂θ, ∂f/∂t](τ_j, z(τ_j)): one VJP of f per node, constant memory."""

    def __init__(self, system: AdjointSystem, inputs: tuple[torch.Tensor, ...], time_gradients: bool) -> None:
        self.system = system
        self.inputs = inputs
        self.time_gradients = time_gradients
        self.sums = [torch.zeros_like(p) for p in inputs]
        self.t_sum: torch.Tensor | None = None
        self.vjps = 0

    def add(self, t_user: torch.Tensor, y_aug: torch.Tensor, weight: torch.Tensor) -> None:
        n = self.system.n
        z, a = y_aug[:n], y_aug[n : 2 * n]
        # The VJP is linear in its cotangent: weighting a (state-sized) instead of the
        # (parameter-sized) result saves a pass over every parameter per node.
        grads, t_grad = self.system.parameter_vjp(
            t_user, z, a * weight.to(a.dtype), self.inputs, self.time_gradients
        )
        self.vjps += 1
        for acc, g in zip(self.sums, grads):
            if g is not None:
                acc.add_(g)
        if t_grad is not None:
            self.t_sum = t_grad if self.t_sum is None else self.t_sum + t_grad


def _backward(tape: Tape, grad_ys: torch.Tensor, needs: Needs) -> Gradients:
    """Shared backward of both quadrature rules; ``tape.memo["placement"]`` chooses where nodes go."""
    problem, rule, stats = tape.problem, tape.rule, tape.stats
    (ys,) = tape.saved
    ts = problem.ts
    system = AdjointSystem(problem, (), integrals=False)
    total = QuadratureSum(system, tape.inputs, needs.ts)
    direction = tape.direction
    placement = tape.memo["placement"](rule, stats, ts, total, direction)
    result = backsolve(
        system, backward_solver(tape.solver, rule), ys, grad_ys, ts, direction,
        time_gradients=needs.ts, on_step=placement.on_step, on_interval=placement.on_interval,
    )
    stats.update(
        nfe_backward=result.nfe, steps_accepted_backward=result.counts.accepted,
        steps_rejected_backward=result.counts.rejected, vjp_backward=total.vjps,
        quadrature_nodes=placement.nodes_per_interval(),
    )
    n = system.n
    grad_ts = None
    if needs.ts:
        time_grads = result.time_gradients
        t0 = -sum(time_grads[1:])
        if total.t_sum is not None:
            t0 = t0 + total.t_sum
        time_grads[0] = t0
        grad_ts = torch.stack(time_grads).to(ts.dtype)
    return Gradients(result.y[n : 2 * n] + grad_ys[0], grad_ts, tuple(total.sums))


class IntervalNodes:
    """GQAdjoint's placement: n_k Gauss nodes per output interval, consumed as steps pass them."""

    def __init__(self, rule: GQAdjoint, stats: dict, ts: torch.Tensor, total: QuadratureSum,
                 direction: float) -> None:
        self.total, self.direction = total, direction
        times = ts.detach().tolist()  # once per backward: interval lengths decide node counts
        span = abs(times[-1] - times[0])
        nfe = int(stats["nfe"])
        self.counts: list[int] = [0] * len(times)
        for k in range(1, len(times)):
            self.counts[k] = int(odeplug.terms(rule, nfe, abs(times[k] - times[k - 1]), span))
        self.times, self.rule, self.ts = times, rule, ts
        self.pending: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.cursor: dict[int, int] = {}

    def _nodes(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Built when the backward solve enters interval k and dropped when it leaves, so that
        # only one interval's nodes are alive at a time.
        if k not in self.pending:
            self.pending.pop(k + 1, None)
            nodes, weights = odeplug.scaled_quadrature(self.rule.quadrature, self.counts[k], self.times[k - 1],
                                         self.times[k], self.ts.dtype, self.ts.device)
            # Backward solver time s = −direction·t increases from t_k to t_{k−1}.
            s_nodes = -self.direction * nodes
            order = torch.argsort(s_nodes)
            self.pending[k] = (s_nodes[order], weights[order])
            self.cursor[k] = 0
        return self.pending[k]

    def on_step(self, stepper: Stepper, step: Step, k: int) -> None:
        s_nodes, weights = self._nodes(k)
        start = self.cursor[k]
        if start >= len(s_nodes):
            return
        # Nodes up to the step's end; one small sync per step to count them.
        stop = int(torch.searchsorted(s_nodes, step.t1, right=True))
        if stop <= start:
            return
        for j in range(start, stop):
            y_aug = stepper.interpolate(step, s_nodes[j])
            self.total.add(-self.direction * s_nodes[j], y_aug, weights[j])
        self.cursor[k] = stop

    def on_interval(self, stepper: Stepper, k: int, state: Any) -> None:
        s_nodes, weights = self._nodes(k)
        # A node exactly at the interval's end (Lobatto-type rules) is read from the landed state.
        for j in range(self.cursor[k], len(s_nodes)):
            self.total.add(-self.direction * s_nodes[j], state.y, weights[j])
        self.cursor[k] = len(s_nodes)

    def nodes_per_interval(self) -> list[int]:
        return self.counts[1:]


class StepNodes:
    """GaussAdjoint's placement: an n-node Gauss–Legendre rule on every accepted backward step."""

    def __init__(self, rule: GaussAdjoint, stats: dict, ts: torch.Tensor, total: QuadratureSum,
                 direction: float) -> None:
        self.rule, self.total, self.direction = rule, total, direction
        self.counts = [0] * len(ts)
        self.unit: tuple[torch.Tensor, torch.Tensor] | None = None

    def on_step(self, stepper: Stepper, step: Step, k: int) -> None:
        if self.unit is None:
            order = self.rule.order or stepper.order
            n = max(1, (order + 1) // 2)
            self.unit = odeplug.scaled_quadrature(GaussLegendre(), n, 0.0, 1.0, step.t0.dtype, step.t0.device)
        fractions, weights = self.unit
        length = step.t1 - step.t0
        # ∫_{t0}^{tK} dt in user time is direction·∫ ds over the backward solver's time s.
        for x, w in zip(fractions, weights):
            s = step.t0 + length * x
            self.total.add(-self.direction * s, stepper.interpolate(step, s), self.direction * length * w)
        self.counts[k] += len(weights)

    def on_interval(self, stepper: Stepper, k: int, state: Any) -> None:
        pass

    def nodes_per_interval(self) -> list[int]:
        return self.counts[1:]


def solve_quadrature(problem: ODEProblem, solver: Solver, rule: GradientRule, placement: type,
                     **options: Any) -> odeplug.Solution:
    odeplug.reject_options(f"solve(ODEProblem, Solver, {type(rule).__name__})", options)

    def forward(tape: Tape) -> torch.Tensor:
        ys = forward_outputs(tape)
        tape.saved = (ys,)
        tape.memo["placement"] = placement
        return ys

    return differentiate(problem, solver, rule, forward, _backward)


def node_count(rule: GQAdjoint, nfe: int, interval: float, span: float) -> int:
    """n = min(max(ceil(C · NFE · interval / span), 1), max_terms) (Norcliffe & Deisenroth, eq. 9)."""
    return int(min(max(math.ceil(rule.C * nfe * interval / span), 1), rule.max_terms))
