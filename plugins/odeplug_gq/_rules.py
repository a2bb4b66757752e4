"""The quadrature adjoints: GQAdjoint (Norcliffe & Deisenroth, TMLR 2023) and GaussAdjoint.

Both solve only [z, a_z] backwards (no a_θ channel, so the step control and every backward VJP
involve the state only), and compute the parameter gradient as a definite integral

    dL/dθ = ∫_{t_0}^{t_K} a_z(t)ᵀ ∂f/∂θ(t, z(t)) dt,

split at the output times (a_z jumps there), by quadrature: one VJP of f per node (taken in
batches), with [z, a_z] read from the backward solver's dense output, weighted and added to a
running sum, so memory does not grow with the number of steps. Where GQAdjoint's nodes go is
its node policy's business (``_adaptive``). Time gradients follow the same way:
dL/dt_0 = −Σ_{k≥1} dL/dy_kᵀ f(t_k, y_k) + ∫ a_zᵀ ∂f/∂t dt.
"""

from __future__ import annotations

import functools
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

from ._adaptive import AdaptiveNodes, AdaptivePanels, NodePolicy, PaperNodes

__all__ = ["GQAdjoint", "GaussAdjoint", "QuadratureSum", "gq_placement", "solve_quadrature"]


def _positive_int(instance, attribute, value):
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise odeplug.InvalidOptionError(
            f"{type(instance).__name__}: {attribute.name} must be a positive int, got {value!r}."
        )


def _positive_int_or_none(instance, attribute, value):
    if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise odeplug.InvalidOptionError(
            f"{type(instance).__name__}: {attribute.name} must be a positive int or None, got {value!r}."
        )


def _positive_float_or_none(instance, attribute, value):
    if value is not None and not (
        isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and math.isfinite(value)
    ):
        raise odeplug.InvalidOptionError(
            f"{type(instance).__name__}: {attribute.name} must be a positive number, got {value!r} "
            "(C=None, the default, is the error-controlled policy)."
        )


def _quadrature(instance, attribute, value):
    if not isinstance(value, Quadrature):
        raise odeplug.InvalidOptionError(
            f"{type(instance).__name__}: quadrature must be an odeplug.Quadrature such as "
            f"GaussLegendre(), got {value!r}."
        )


def _node_policy(instance, attribute, value):
    if value is not None and not isinstance(value, NodePolicy):
        raise odeplug.InvalidOptionError(
            f"{type(instance).__name__}: nodes must be a node policy such as AdaptiveNodes() or "
            f"PaperNodes(C=0.1), got {value!r}."
        )


def _one_policy(instance) -> None:
    if instance.nodes is not None and (instance.C is not None or instance.max_terms is not None):
        raise odeplug.InvalidOptionError(
            "GQAdjoint: give the node policy once: either nodes=... or the paper's C=/max_terms=, "
            "not both; e.g. GQAdjoint(nodes=PaperNodes(C=0.1, max_terms=64)) or GQAdjoint(C=0.1)."
        )
    if instance.max_terms is not None and instance.C is None:
        raise odeplug.InvalidOptionError(
            "GQAdjoint: max_terms caps the paper's policy, which C= selects: write "
            "GQAdjoint(C=0.1, max_terms=...). For the default error-controlled policy, the largest "
            "rule per segment is nodes=AdaptiveNodes(max_terms=...)."
        )


@configuration
class GQAdjoint(BacksolveRule):
    """Gauss–Legendre quadrature adjoint (Norcliffe & Deisenroth, "Faster Training of Neural ODEs
    Using Gauß–Legendre Quadrature", TMLR 2023, sec. 3 and Algorithms 1–2).

    The backward solve carries [z, a_z] only; dL/dθ = ∫ a_zᵀ ∂f/∂θ dt is taken by quadrature,
    with nodes placed by a node policy (a method of :func:`odeplug.terms`):

    - default, :class:`AdaptiveNodes`: error-controlled. Per output interval (in panels of at
      most 16 backward steps), as many Gauss nodes per segment as bring the quadrature error,
      estimated from the dense output of [z, a_z, z ⊙ a_z] and extrapolated with a safety
      margin, within the backward solver's rtol/atol; a segment that would need more than 64
      nodes is bisected (see ``_adaptive`` and docs/methods/gq.md);
    - ``C=0.1`` (with ``max_terms``, default 64), i.e. ``nodes=PaperNodes(C=0.1)``: the paper's
      n_k = min(max(ceil(C · NFE · |t_k − t_{k−1}| / |t_K − t_0|), 1), max_terms) per interval;
    - ``nodes=``: any :class:`NodePolicy` (a plugin's, with its ``terms`` method).

    Options: ``nodes`` / ``C`` / ``max_terms`` (above), ``quadrature`` (any registered
    :class:`odeplug.Quadrature`), ``vjp_batch`` (nodes whose parameter VJPs are taken together
    in one vectorised evaluation of f; 1: one VJP per node), and the backward solve's ``norm``,
    ``rtol``, ``atol``, ``solver`` (None: as in the forward).
    """

    nodes: NodePolicy | None = attrs.field(default=None, validator=_node_policy)
    C: float | None = attrs.field(default=None, validator=_positive_float_or_none)
    max_terms: int | None = attrs.field(default=None, validator=_positive_int_or_none)
    quadrature: Quadrature = attrs.field(factory=GaussLegendre, validator=_quadrature)
    vjp_batch: int = attrs.field(default=16, validator=_positive_int)

    def __attrs_post_init__(self) -> None:
        _one_policy(self)

    @property
    def policy(self) -> NodePolicy:
        """The node policy these options select."""
        if self.nodes is not None:
            return self.nodes
        if self.C is not None:
            return PaperNodes(C=self.C, max_terms=64 if self.max_terms is None else self.max_terms)
        return AdaptiveNodes()


@configuration
class GaussAdjoint(BacksolveRule):
    """Per-step Gauss–Legendre quadrature adjoint (the approach of SciMLSensitivity's GaussAdjoint).

    The same [z, a_z] backward solve as :class:`GQAdjoint`, but after **each accepted backward
    step** the integral over that step is added, from an n-node Gauss–Legendre rule on the step's
    dense output with n = ⌊(p+1)/2⌋ (exact to the degree matching the solver's order p, or to
    ``order``). The quadrature error then follows the solver's tolerance; there is no C to tune.
    ``vjp_batch`` as in :class:`GQAdjoint`.
    """

    order: int | None = attrs.field(default=None, validator=_positive_int_or_none)
    vjp_batch: int = attrs.field(default=16, validator=_positive_int)


_BATCH_BYTES = 1 << 26  # node states held for one batched VJP: at most 64 MiB


class QuadratureSum:
    """Running Σ w_j a_z(τ_j)ᵀ [∂f/∂θ, ∂f/∂t](τ_j, z(τ_j)), constant memory.

    Nodes are held (state-sized: t, z and the weighted a_z) until ``batch`` of them are
    there, then their VJPs are taken together: f evaluated once on the stacked states with
    ``torch.func.vmap`` and one backward pass, whose parameter gradient is the sum over the
    nodes. Reading the parameters once per batch instead of once per node is what makes a node
    cheap when f is a wide network. A field vmap cannot run (data-dependent control flow,
    ``.item()``, in-place writes into captured tensors) falls back to one VJP per node.
    """

    def __init__(self, system: AdjointSystem, inputs: tuple[torch.Tensor, ...], time_gradients: bool,
                 batch: int = 1) -> None:
        self.system = system
        self.inputs = inputs
        self.time_gradients = time_gradients
        self.sums = [torch.zeros_like(p) for p in inputs]
        self.t_sum: torch.Tensor | None = None
        self.vjps = 0
        self.batches = 0
        self.batch = max(1, batch)
        self.vectorised = batch > 1
        self._held: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._count = 0

    def limit_batch(self, state_bytes: int) -> None:
        """Hold at most 64 MiB of node states ([z, a_z] per node)."""
        self.batch = max(1, min(self.batch, _BATCH_BYTES // max(1, 2 * state_bytes)))

    def add(self, t_user: torch.Tensor, y_aug: torch.Tensor, weight: torch.Tensor) -> None:
        self.add_many(t_user.reshape(1), y_aug.unsqueeze(0), weight.reshape(1))

    def add_many(self, t_user: torch.Tensor, y_aug: torch.Tensor, weights: torch.Tensor) -> None:
        """Nodes at user times ``t_user`` (k,), augmented states ``y_aug`` (k, ≥ 2n), weights (k,)."""
        n = self.system.n
        # The VJP is linear in its cotangent: weighting a (state-sized) instead of the
        # (parameter-sized) result saves a pass over every parameter per node.
        cotangents = y_aug[:, n : 2 * n] * weights.to(y_aug.dtype).unsqueeze(1)
        self._held.append((t_user, y_aug[:, :n], cotangents))
        self._count += len(t_user)
        self.vjps += len(t_user)
        if self._count >= self.batch:
            self.flush()

    def flush(self) -> None:
        if not self._held:
            return
        held, self._held, self._count = self._held, [], 0
        ts = torch.cat([h[0] for h in held])
        zs = torch.cat([h[1] for h in held])
        cotangents = torch.cat([h[2] for h in held])
        for start in range(0, len(ts), self.batch):
            part = slice(start, start + self.batch)
            self._vjp(ts[part], zs[part], cotangents[part])

    def _vjp(self, ts: torch.Tensor, zs: torch.Tensor, cotangents: torch.Tensor) -> None:
        self.batches += 1
        if self.vectorised and len(ts) > 1:
            try:
                grads, t_grad = self._vectorised(ts, zs, cotangents)
            except Exception:  # noqa: BLE001 — any vmap limitation: take the nodes one by one
                self.vectorised = False
            else:
                self._accumulate(grads, t_grad)
                return
        for j in range(len(ts)):
            grads, t_grad = self.system.parameter_vjp(ts[j], zs[j], cotangents[j], self.inputs,
                                                      self.time_gradients)
            self._accumulate(grads, t_grad)

    def _vectorised(self, ts: torch.Tensor, zs: torch.Tensor, cotangents: torch.Tensor):
        wrt_t = self.time_gradients
        wrt = [*self.inputs]
        if not wrt and not wrt_t:
            return [], None
        with torch.enable_grad():
            t = ts.detach().requires_grad_(wrt_t)
            out = torch.func.vmap(self.system.f)(t.to(zs.dtype), zs.detach())
            self.system.evaluations += len(ts)
            if not out.requires_grad:
                return [None] * len(wrt), None
            grads = torch.autograd.grad(out, wrt + ([t] if wrt_t else []), cotangents, allow_unused=True)
        return list(grads[: len(wrt)]), (grads[-1].sum() if wrt_t and grads[-1] is not None else None)

    def _accumulate(self, grads, t_grad) -> None:  # noqa: ANN001
        for acc, g in zip(self.sums, grads):
            if g is not None:
                acc.add_(g)
        if t_grad is not None:
            self.t_sum = t_grad if self.t_sum is None else self.t_sum + t_grad


def _backward(tape: Tape, grad_ys: torch.Tensor, needs: Needs, make_placement: Any) -> Gradients:
    """Shared backward of both quadrature rules; ``make_placement`` chooses where nodes go."""
    problem, rule, stats = tape.problem, tape.rule, tape.stats
    (ys,) = tape.saved
    ts = problem.ts
    system = AdjointSystem(problem, (), integrals=False)
    total = QuadratureSum(system, tape.inputs, needs.ts, batch=rule.vjp_batch)
    total.limit_batch(ys[0].numel() * ys.element_size())
    direction = tape.direction
    solver = backward_solver(tape.solver, rule)
    placement = make_placement(rule, stats, ts, total, direction, solver)
    result = backsolve(
        system, solver, ys, grad_ys, ts, direction,
        time_gradients=needs.ts, on_step=placement.on_step, on_interval=placement.on_interval,
    )
    total.flush()
    stats.update(
        nfe_backward=result.nfe, steps_accepted_backward=result.counts.accepted,
        steps_rejected_backward=result.counts.rejected, vjp_backward=total.vjps,
        vjp_batches=total.batches, quadrature_nodes=placement.nodes_per_interval(),
        **placement.extra_stats(),
    )
    if result.counts.forced:  # steps taken at the backward solver's min_step
        tape.stats["steps_forced_backward"] = result.counts.forced
    n = system.n
    grad_ts = None
    if needs.ts:
        time_grads = result.time_gradients
        t0 = -sum(time_grads[1:]) + result.jump_time_gradient
        if total.t_sum is not None:
            t0 = t0 + total.t_sum
        time_grads[0] = t0
        grad_ts = torch.stack(time_grads).to(ts.dtype)
    return Gradients(result.y[n : 2 * n] + grad_ys[0], grad_ts, tuple(total.sums))


class IntervalNodes:
    """A count-per-interval policy's placement (:class:`PaperNodes`, or a plugin's policy with a
    ``terms(policy, nfe, interval, span)`` method): n_k nodes on output interval k, consumed as
    the backward steps pass them."""

    def __init__(self, rule: GQAdjoint, stats: dict, ts: torch.Tensor, total: QuadratureSum,
                 direction: float, solver: Solver | None = None) -> None:
        self.total, self.direction = total, direction
        policy = rule.policy
        times = ts.detach().tolist()  # once per backward: interval lengths decide node counts
        span = abs(times[-1] - times[0])
        nfe = int(stats["nfe"])
        self.counts: list[int] = [0] * len(times)
        for k in range(1, len(times)):
            self.counts[k] = int(odeplug.terms(policy, nfe, abs(times[k] - times[k - 1]), span))
        self.times, self.rule, self.ts = times, rule, ts
        self.pending: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.cursor: dict[int, int] = {}

    def _nodes(self, k: int, stepper: Stepper) -> tuple[torch.Tensor, torch.Tensor]:
        # Built when the backward solve enters interval k and dropped when it leaves, so that
        # only one interval's nodes are alive at a time.
        if k not in self.pending:
            self.pending.pop(k + 1, None)
            a, b = self.times[k - 1], self.times[k]
            # The integrand jumps where f does: one rule per piece between the problem's jump
            # times, its share of the interval's nodes by length (at least one).
            cuts = [a, b]
            if stepper.field.jumps is not None:
                inside = [-self.direction * s for s in stepper.field.jumps.tolist()]
                cuts = [a, *sorted((t for t in inside if min(a, b) < t < max(a, b)),
                                   reverse=b < a), b]
            parts = [odeplug.scaled_quadrature(
                self.rule.quadrature, max(1, math.ceil(self.counts[k] * abs(hi - lo) / abs(b - a))),
                lo, hi, self.ts.dtype, self.ts.device) for lo, hi in zip(cuts[:-1], cuts[1:])]
            nodes = torch.cat([p[0] for p in parts])
            weights = torch.cat([p[1] for p in parts])
            # Backward solver time s = −direction·t increases from t_k to t_{k−1}.
            s_nodes = -self.direction * nodes
            order = torch.argsort(s_nodes)
            self.pending[k] = (s_nodes[order], weights[order])
            self.cursor[k] = 0
        return self.pending[k]

    def on_step(self, stepper: Stepper, step: Step, k: int) -> None:
        s_nodes, weights = self._nodes(k, stepper)
        start = self.cursor[k]
        if start >= len(s_nodes):
            return
        # Nodes up to the step's end; one small sync per step to count them.
        stop = int(torch.searchsorted(s_nodes, step.t1, right=True))
        if stop <= start:
            return
        s = s_nodes[start:stop]
        self.total.add_many(-self.direction * s, stepper.interpolate(step, s), weights[start:stop])
        self.cursor[k] = stop

    def on_interval(self, stepper: Stepper, k: int, state: Any) -> None:
        s_nodes, weights = self._nodes(k, stepper)
        # A node exactly at the interval's end (Lobatto-type rules) is read from the landed state.
        rest = len(s_nodes) - self.cursor[k]
        if rest > 0:
            s = s_nodes[self.cursor[k]:]
            self.total.add_many(-self.direction * s, state.y.unsqueeze(0).expand(rest, -1),
                                weights[self.cursor[k]:])
        self.cursor[k] = len(s_nodes)

    def nodes_per_interval(self) -> list[int]:
        return self.counts[1:]

    def extra_stats(self) -> dict[str, int]:
        return {}


class StepNodes:
    """GaussAdjoint's placement: an n-node Gauss–Legendre rule on every accepted backward step."""

    def __init__(self, rule: GaussAdjoint, stats: dict, ts: torch.Tensor, total: QuadratureSum,
                 direction: float, solver: Solver | None = None) -> None:
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
        s = step.t0 + length * fractions
        # ∫_{t0}^{tK} dt in user time is direction·∫ ds over the backward solver's time s.
        self.total.add_many(-self.direction * s, stepper.interpolate(step, s),
                            self.direction * length * weights)
        self.counts[k] += len(weights)

    def on_interval(self, stepper: Stepper, k: int, state: Any) -> None:
        pass

    def nodes_per_interval(self) -> list[int]:
        return self.counts[1:]

    def extra_stats(self) -> dict[str, int]:
        return {}


def gq_placement(rule: GQAdjoint, stats: dict, ts: torch.Tensor, total: QuadratureSum,
                 direction: float, solver: Solver) -> Any:
    """GQAdjoint's placement for its node policy: error-controlled panels for
    :class:`AdaptiveNodes`, a count per output interval for every other policy."""
    if isinstance(rule.policy, AdaptiveNodes):
        return AdaptivePanels(rule, stats, ts, total, direction, solver)
    return IntervalNodes(rule, stats, ts, total, direction, solver)


def solve_quadrature(problem: ODEProblem, solver: Solver, rule: GradientRule, placement: Any,
                     **options: Any) -> odeplug.Solution:
    odeplug.reject_options(f"solve(ODEProblem, Solver, {type(rule).__name__})", options)

    backward = functools.partial(_backward, make_placement=placement)
    return differentiate(problem, solver, rule, forward_outputs, backward)
