"""Node policies of GQAdjoint: the paper's count and the error-controlled default.

**Why the paper's count is not enough.** Norcliffe & Deisenroth's count
n_k = ceil(C · NFE · Δt_k / T) spreads nodes by interval *length*, while the integrand
a_zᵀ ∂f/∂θ needs them where the solution moves fast. On torchdiffeq's demo problem
dy/dt = y³A over [0, 25] with 11 output times (tolerance 1e-8) the backward solve takes 214 of
its 677 steps in [0, 2.5] and 22 in [22.5, 25]; C = 0.1 gives every interval 28 nodes, which
leave [0, 2.5] with a relative quadrature error of a few 1e-3 (1.5e-2 at 24 nodes, 1.1e-3 at
32, 1e-9 only past 90) while [22.5, 25] is exact to 1e-9 with 12. With 2 output times a single
interval needs about 250 nodes, past any cap (64 in the paper).

**The error-controlled policy.** The integrand is a function of t through z(t) and a_z(t), whose
dense output the backward solver has anyway (state-sized; the parameter-sized VJPs are the
expensive part). Where f is analytic the integrand is analytic wherever z and a_z are, so the
Chebyshev coefficients of the proxy P = [z, a_z, z ⊙ a_z] decay at the integrand's own
geometric rate, and the quadrature error of P predicts the integrand's up to a constant (the
product z ⊙ a_z matters when the solution is entire, as for linear f, where the degrees of the
two factors add). Per *panel* — the backward steps of one output interval, at most
``panel_steps`` of them, kept until the panel ends:

1. sample P at the m+1 Chebyshev points of a segment (m = 8, 16, … up to 2·max_terms) from the
   kept steps' dense output, and take its Chebyshev coefficients c_j (one matrix product);
2. the segment is *resolved* when the top quarter of the coefficients is within tolerance;
   otherwise double m, and past the largest m bisect the segment;
3. the error of the n-node rule on P is Σ_j c_j E_{j,n}, with E_{j,n} = ∫_{-1}^{1} T_j − Q_n(T_j)
   exact (a table per rule and size, from the rule's own nodes and weights);
4. n = ``terms(policy, errors)``: the smallest n such that it and every larger candidate are
   within rtol·RMS + atol of each block (z, a_z, z ⊙ a_z; RMS over the panel) per unit
   length, plus a margin: the errors' geometric decay over the last failing rules, extrapolated
   to 1/``safety`` (100) of the tolerance — the proxy predicts the integrand's error only up to
   a constant (10–40 on the demo problem; a contracting field with sin(3θz) in f needed a
   node more than the proxy's own count), and below the tolerance its estimates sit on the
   floor of the dense output's accuracy, so they are extrapolated, not measured;
5. the parameter VJPs run at those n nodes, [z, a_z] read from the kept dense output.

Tolerances default to the backward solver's: the quadrature then adds less than the solve's own
error (measured: GQAdjoint's gradient error 0.6–1.1× Adjoint's on the problems above).

Memory, state-sized and bounded by the options, never growing with the number of steps: the
panel's steps (``panel_steps`` · (stages + 2) vectors of [z, a_z]: 16 · 9 for Dopri5), the
samples of one segment (at most 2·max_terms + 1 rows of 3 · min(|y|, 16) numbers: states of
more than 16 numbers are projected on 16 fixed random directions per block first), and the node
states waiting for one batched VJP (``QuadratureSum``).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import attrs
import numpy as np
import torch

import odeplug
from odeplug import Noun, Quadrature, Step, Stepper, configuration

__all__ = ["NodePolicy", "PaperNodes", "AdaptiveNodes", "AdaptivePanels", "plan_segments",
           "adaptive_count", "paper_count", "error_table"]


class NodePolicy(Noun):
    """How many quadrature nodes GQAdjoint puts where: a method of :func:`odeplug.terms`.

    - a policy that counts per output interval up front registers
      ``terms(policy, nfe: int, interval: float, span: float) -> n`` (as :class:`PaperNodes`);
    - :class:`AdaptiveNodes` is asked ``terms(policy, errors) -> n`` per segment, with the
      estimated errors of the 1, 2, … node rules divided by the tolerance.
    """

    __slots__ = ()


def _positive_number(instance, attribute, value):  # noqa: ANN001
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
            and math.isfinite(value)):
        raise odeplug.InvalidOptionError(
            f"{type(instance).__name__}: {attribute.name} must be a positive number, got {value!r}."
        )


def _non_negative_or_none(instance, attribute, value):  # noqa: ANN001
    if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                  and value >= 0 and math.isfinite(value)):
        raise odeplug.InvalidOptionError(
            f"{type(instance).__name__}: {attribute.name} must be a non-negative number or None "
            f"(None: the backward solver's {attribute.name}), got {value!r}."
        )


def _int_at_least(low: int):
    def check(instance, attribute, value):  # noqa: ANN001
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
            raise odeplug.InvalidOptionError(
                f"{type(instance).__name__}: {attribute.name} must be an int >= {low}, got {value!r}."
            )
    return check


@configuration
class PaperNodes(NodePolicy):
    """Norcliffe & Deisenroth's count (TMLR 2023, eq. 9) on each output interval:

        n_k = min(max(ceil(C · NFE · |t_k − t_{k−1}| / |t_K − t_0|), 1), max_terms)

    (NFE: the forward solve's evaluations). ``GQAdjoint(C=0.1)`` is
    ``GQAdjoint(nodes=PaperNodes(C=0.1))``. Not error-controlled: see docs/methods/gq.md."""

    C: float = attrs.field(default=0.1, validator=_positive_number)
    max_terms: int = attrs.field(default=64, validator=_int_at_least(1))


@configuration
class AdaptiveNodes(NodePolicy):
    """Error-controlled nodes (GQAdjoint's default): per segment, the fewest Gauss nodes whose
    quadrature error on the dense output of [z, a_z] is within ``rtol``·RMS + ``atol`` (see the
    module docstring). Options:

    - ``rtol``, ``atol``: the quadrature tolerance (None: the backward solver's; 1e-6 for a
      fixed-step solver, which has none);
    - ``max_terms``: the largest rule on one segment; a segment that needs more is bisected;
    - ``panel_steps``: backward steps kept before their quadrature is decided (memory: this
      many steps of [z, a_z]; fewer, shorter panels cost more nodes);
    - ``safety``: how far below the tolerance the proxy's error is extrapolated (the proxy
      predicts the integrand's error up to a constant: 10–40 measured on torchdiffeq's demo).
    """

    rtol: float | None = attrs.field(default=None, validator=_non_negative_or_none)
    atol: float | None = attrs.field(default=None, validator=_non_negative_or_none)
    max_terms: int = attrs.field(default=64, validator=_int_at_least(1))
    panel_steps: int = attrs.field(default=16, validator=_int_at_least(1))
    safety: float = attrs.field(default=100.0, validator=_positive_number)


def paper_count(policy: PaperNodes, nfe: int, interval: float, span: float) -> int:
    """n = min(max(ceil(C · NFE · interval / span), 1), max_terms) (Norcliffe & Deisenroth, eq. 9)."""
    return int(min(max(math.ceil(policy.C * nfe * interval / span), 1), policy.max_terms))


def adaptive_count(policy: AdaptiveNodes, errors: torch.Tensor) -> int:
    """The node count for one segment from ``errors[i]``, the (i+1)-node rule's estimated error
    over the tolerance (a CPU tensor).

    n₀ is the smallest n from which every candidate is within tolerance. Where at least two
    rules fail (n₀ ≥ 3), nodes are added until the errors' geometric decay over the last
    failing rules, extrapolated, reaches 1/``safety`` of the tolerance. Returns 0 when that is
    more than the candidates (the caller refines or bisects).

    Why a margin: the proxy's error predicts the integrand's only up to a constant (the
    integrand is a nonlinear function of z and a_z), and below the tolerance the estimates sit on
    the floor of the proxy interpolant's own accuracy, so the extra nodes are extrapolated, not
    measured.
    """
    values = errors.tolist()
    failing = [i for i, e in enumerate(values) if e > 1]
    if not failing:
        return 1
    n = failing[-1] + 2
    if n >= 3:
        last = n - 2  # the last failing rule (n − 1 nodes) and a few before it, all > 1
        first = max(0, last - max(1, n // 4))
        rate = (values[first] / values[last]) ** (1.0 / (last - first))
        if rate > 1:
            n += max(0, math.ceil(math.log(values[last] * policy.safety) / math.log(rate)) - 1)
        else:  # no decay over the failing rules: refine rather than guess
            return 0
    return n if n <= len(values) else 0


# -- Chebyshev machinery, cached per size, rule, dtype and device ------------------------------


@functools.lru_cache(maxsize=64)
def _chebyshev(m: int) -> tuple[np.ndarray, np.ndarray]:
    """Points x_k = cos(πk/m), k = 0..m, increasing order, and the matrix mapping values at them
    to the coefficients of the degree-m interpolant Σ c_j T_j (a DCT-I)."""
    k = np.arange(m + 1)
    x = np.cos(np.pi * k / m)
    matrix = np.cos(np.pi * np.outer(k, k) / m) * (2.0 / m)
    matrix[:, [0, m]] *= 0.5
    matrix[[0, m], :] *= 0.5
    # Reorder columns for increasing x (x_k decreases with k).
    return x[::-1].copy(), matrix[:, ::-1].copy()


@functools.lru_cache(maxsize=256)
def error_table(rule: Quadrature, m: int, n_max: int) -> np.ndarray:
    """E[j, n−1] = ∫_{-1}^{1} T_j − Q_n(T_j) for j ≤ m, n ≤ n_max: the n-node rule's error on
    each Chebyshev polynomial (0 where the rule is exact), float64."""
    j = np.arange(m + 1)
    exact = np.where(j % 2 == 1, 0.0, 2.0 / (1.0 - np.where(j % 2 == 1, 0, j) ** 2))
    table = np.empty((m + 1, n_max))
    for n in range(1, n_max + 1):
        nodes, weights = odeplug.quadrature(rule, n)
        theta = np.arccos(np.clip(nodes.numpy(), -1.0, 1.0))
        table[:, n - 1] = exact - (weights.numpy()[None, :] * np.cos(np.outer(j, theta))).sum(1)
        # Every error estimate is relative to the constant term: a rule that misses constants
        # would never meet a tolerance, and the planner would bisect without end.
        if abs(table[0, n - 1]) > 1e-10:
            raise odeplug.InvalidOptionError(
                f"GQAdjoint: the {n}-point {type(rule).__name__} rule's weights sum to "
                f"{2.0 - table[0, n - 1]:.12g}, not 2 (the length of [-1, 1]), so it cannot "
                "integrate a constant; check the rule with odeplug.testing.check_quadrature."
            )
    return table


@functools.lru_cache(maxsize=64)
def _points(m: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(_chebyshev(m)[0]).to(dtype=dtype, device=device)


@functools.lru_cache(maxsize=256)
def _tables(rule: Quadrature, m: int, n_max: int, dtype: torch.dtype,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The values-to-coefficients matrix and the error table, in ``dtype`` on ``device``."""
    return (torch.from_numpy(_chebyshev(m)[1]).to(dtype=dtype, device=device),
            torch.from_numpy(error_table(rule, m, n_max)).to(dtype=dtype, device=device))


def _sizes(max_terms: int) -> list[int]:
    """Chebyshev degrees tried on a segment: 8, 16, … up to the first ≥ 2·max_terms."""
    sizes, m = [], 8
    while True:
        sizes.append(m)
        if m >= 2 * max_terms:
            return sizes
        m *= 2


@attrs.define
class Plan:
    """What :func:`plan_segments` decided: segments (a, b, n) in increasing time, the proxy
    samples it read, and the segments it had to accept unresolved (at ``max_depth``)."""

    segments: list[tuple[torch.Tensor, torch.Tensor, int]] = attrs.field(factory=list)
    estimates: int = 0
    samples: int = 0
    unresolved: int = 0


def plan_segments(
    sample: Any, a: torch.Tensor, b: torch.Tensor, blocks: int, *, rtol: float, atol: float,
    policy: AdaptiveNodes, count: Any, rule: Quadrature, max_depth: int = 30,
    max_segments: int = 4096,
) -> Plan:
    """Split [a, b] (0-d time tensors, a < b) into segments with a node count each, so that on
    each segment the chosen rule integrates every block of the proxy within
    ``rtol``·RMS + ``atol`` per unit length, RMS of the block over all of [a, b] (see the
    module docstring): the segments' errors add up to at most that times b − a.

    ``sample(s) -> (len(s), blocks·w)``: the proxy at increasing times ``s``, made of ``blocks``
    blocks of w components each. ``count``: the resolved ``terms(policy, errors)``. One device
    synchronisation per tried degree (a few numbers), none per node. A segment still
    unresolved at ``max_depth`` bisections is kept with ``max_terms`` nodes (a kink localised by
    bisection); more than ``max_segments`` segments means the tolerance cannot be met anywhere,
    and is an error rather than a hang.
    """
    plan = Plan()
    sizes = _sizes(policy.max_terms)
    pending = [(a, b, 0)]
    scale = None
    while pending:
        lo, hi, depth = pending.pop()
        n = 0
        for m in sizes:
            values = sample((lo + hi) / 2 + (hi - lo) / 2 * _points(m, lo.dtype, lo.device))
            n_max = min(policy.max_terms, m + 1)
            matrix, table = _tables(rule, m, n_max, values.dtype, values.device)
            plan.estimates += 1
            plan.samples += m + 1
            values = values.reshape(m + 1, blocks, -1)
            if depth == 0:  # the scale of each block over the whole span, from the root's samples
                scale = values.pow(2).mean((0, 2)).sqrt()
            # The dense output is only as exact as the arithmetic: never ask for less than a
            # few dozen round-offs (a float32 state with rtol=1e-9 would bisect forever).
            floor = 64 * torch.finfo(values.dtype).eps * values.abs().amax((0, 2))
            tolerance = (rtol * scale + atol + floor).clamp_min(torch.finfo(values.dtype).tiny)
            coefficients = matrix @ values.reshape(m + 1, -1)  # (m + 1, blocks·w)
            tail = coefficients[m - m // 4 :].reshape(-1, blocks, values.shape[2]).pow(2).mean(2).sqrt()
            # The n-node rule's error per unit length, ½ Σ_j c_j E_{j,n}: RMS over each block,
            # over its tolerance, the worst block.
            errors = (table.t() @ coefficients).reshape(n_max, blocks, -1).pow(2).mean(2).sqrt()
            summary = torch.cat([(tail / tolerance).amax().reshape(1),
                                 (errors / (2 * tolerance)).amax(1)]).to("cpu", torch.float64)
            if float(summary[0]) <= 1:
                n = count(policy, summary[1:])
                if n > 0:
                    break
        if n > 0:
            plan.segments.append((lo, hi, n))
        elif len(plan.segments) + len(pending) >= max_segments:
            raise odeplug.SolveError(
                f"GQAdjoint: the error-controlled node policy split one panel of the backward "
                f"solve into {max_segments} segments and still could not meet rtol={rtol:g}, "
                f"atol={atol:g} with at most {policy.max_terms} {type(rule).__name__} nodes per "
                "segment: the rule's error does not fall as nodes are added (check it with "
                "odeplug.testing.check_quadrature), or the tolerance is below what the dense "
                "output resolves. Loosen rtol/atol, or count nodes with PaperNodes()."
            )
        elif depth >= max_depth:
            plan.unresolved += 1
            plan.segments.append((lo, hi, policy.max_terms))
        else:
            mid = (lo + hi) / 2
            # Last in, first out: push the later half first so that segments come out in order.
            pending.append((mid, hi, depth + 1))
            pending.append((lo, mid, depth + 1))
    return plan


@functools.lru_cache(maxsize=512)
def _sorted_rule(rule: Quadrature, n: int, dtype: torch.dtype, device: torch.device):
    """The rule's nodes on [-1, 1] in increasing order, with their weights."""
    nodes, weights = odeplug.scaled_quadrature(rule, n, -1.0, 1.0, dtype, device)
    order = torch.argsort(nodes)
    return nodes[order], weights[order]


_PROJECTED = 16  # proxy components per block when the state is larger


class AdaptivePanels:
    """GQAdjoint's placement for :class:`AdaptiveNodes`: keep each panel's backward steps (the
    steps of one output interval, at most ``panel_steps``), then plan its segments and add their
    nodes to the running sum, reading [z, a_z] from the kept steps' dense output.

    The proxy is [z, a_z, z ⊙ a_z]: the integrand is a product of a function of a_z and one of
    z, and for an entire solution (linear f) the degrees of the factors add, which z ⊙ a_z
    shows. For a state of more than 16 numbers, z and a_z are first projected on 16 fixed random
    directions (the same singularities, so the same decay; the samples stay small)."""

    def __init__(self, rule: Any, stats: dict, ts: torch.Tensor, total: Any, direction: float,
                 solver: Any = None) -> None:
        self.policy: AdaptiveNodes = rule.policy
        self.quadrature: Quadrature = rule.quadrature
        self.total, self.direction = total, direction
        rtol, atol = self.policy.rtol, self.policy.atol
        adaptive = solver is not None and hasattr(solver, "rtol") and hasattr(solver, "atol")
        self.rtol = rtol if rtol is not None else (float(solver.rtol) if adaptive else 1e-6)
        self.atol = atol if atol is not None else (float(solver.atol) if adaptive else 1e-6)
        self.count = odeplug.resolve(odeplug.terms, self.policy, torch.zeros(1, dtype=torch.float64))
        self.projection: torch.Tensor | None = None
        self.steps: list[Step] = []
        self.counts = [0] * len(ts)
        self.segments = 0
        self.estimates = 0
        self.samples = 0
        self.unresolved = 0

    def _prepare_proxy(self, y: torch.Tensor) -> None:
        n = self.total.system.n
        if n > _PROJECTED and (self.projection is None or self.projection.dtype != y.dtype):
            g = torch.Generator().manual_seed(0)
            block = torch.randn(n, _PROJECTED, generator=g, dtype=torch.float64) / math.sqrt(_PROJECTED)
            self.projection = torch.block_diag(block, block).to(dtype=y.dtype, device=y.device)

    def on_step(self, stepper: Stepper, step: Step, k: int) -> None:
        self.steps.append(step)
        # A panel ends at a jump of f (a step ending there hands no f1 on): the integrand is
        # discontinuous there, and a segment across it would be bisected down to the jump.
        at_jump = step.f1 is None and stepper.field.jumps is not None
        if at_jump or len(self.steps) >= self.policy.panel_steps:
            self._flush(stepper, k)

    def on_interval(self, stepper: Stepper, k: int, state: Any) -> None:
        self._flush(stepper, k)

    def _read(self, stepper: Stepper, s: torch.Tensor, proxy: bool = False) -> torch.Tensor:
        """The augmented state (or, with ``proxy``, the proxy) at the increasing solver times
        ``s`` from the kept steps: one interpolation per step they fall in, and one
        synchronisation to group them."""
        steps, n = self.steps, self.total.system.n

        def read(step: Step, times: torch.Tensor) -> torch.Tensor:
            y = stepper.interpolate(step, times)
            if not proxy:
                return y
            y = y[:, : 2 * n]
            if self.projection is not None:
                y = y @ self.projection
            z, a = y.chunk(2, dim=1)
            return torch.cat([y, z * a], dim=1)

        if len(steps) == 1:
            return read(steps[0], s)
        ends = torch.stack([step.t1 for step in steps[:-1]])
        bounds = torch.searchsorted(s, ends).tolist()
        parts, start = [], 0
        for step, stop in zip(steps, [*bounds, len(s)]):
            if stop > start:
                parts.append(read(step, s[start:stop]))
                start = stop
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _flush(self, stepper: Stepper, k: int) -> None:
        if not self.steps:
            return
        first, last = self.steps[0], self.steps[-1]
        self._prepare_proxy(first.y0)
        plan = plan_segments(
            lambda s: self._read(stepper, s, proxy=True), first.t0, last.t1, 3,
            rtol=self.rtol, atol=self.atol, policy=self.policy, count=self.count, rule=self.quadrature,
        )
        direction, chunk = self.direction, self.total.batch
        for lo, hi, n in plan.segments:
            unit_nodes, unit_weights = _sorted_rule(self.quadrature, n, lo.dtype, lo.device)
            half = (hi - lo) / 2
            s = (lo + hi) / 2 + half * unit_nodes
            # ∫ over user time t = −direction·s is direction·∫ ds.
            weights = direction * half * unit_weights
            for start in range(0, n, chunk):  # at most one batch of node states at a time
                part = slice(start, start + chunk)
                self.total.add_many(-direction * s[part], self._read(stepper, s[part]), weights[part])
            self.counts[k] += n
        self.segments += len(plan.segments)
        self.estimates += plan.estimates
        self.samples += plan.samples
        self.unresolved += plan.unresolved
        self.steps = []

    def nodes_per_interval(self) -> list[int]:
        return self.counts[1:]

    def extra_stats(self) -> dict[str, int]:
        return {"quadrature_segments": self.segments, "quadrature_estimates": self.estimates,
                "quadrature_samples": self.samples, "quadrature_unresolved": self.unresolved}
