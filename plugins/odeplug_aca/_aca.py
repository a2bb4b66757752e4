"""The adaptive checkpoint adjoint: checkpoint every accepted step, backpropagate one step at a time.

Zhuang, Dvornek, Li, Tatikonda, Papademetris & Duncan, "Adaptive Checkpoint Adjoint Method for
Gradient Estimation in Neural ODE", ICML 2020.

Forward (no graph): the solver runs as usual; for every accepted step i (from s_i to s_i + h_i)
the checkpoint (s_i, y_i, h_i) is kept and nothing else (not the stages). Each step is computed
once. Backward: for i = n−1, …, 0 the step is recomputed from its checkpoint with a graph,
``step_from(s_i, y_i, h_i)``, which reproduces the forward's y_{i+1} bit for bit, and one
vector–Jacobian product pulls the adjoint back through it:

    a_i = (∂y_{i+1}/∂y_i)ᵀ a_{i+1} + Σ_{k in step i} (∂ŷ(s_k)/∂y_i)ᵀ ∂L/∂y(s_k),

with the same product giving the step's contribution to dL/dθ, to dL/ds_k through the dense
output ŷ, and to dL/ds_0 through the step's start time s_i = s_0 + Σ_{j<i} h_j (the h_j are
constants, as in the Direct rule, except a fixed-step solver's step landing on the end time,
h = s_end − s_i, differentiated as there). The gradients are therefore those of the Direct rule
(the exact derivative of the computed solution), with the memory of one step's graph plus the
checkpoints. For first-same-as-last methods each checkpoint also keeps F(s_i, y_i), which the
recomputation takes instead of evaluating it (see :class:`_PrimableField`).

With ``max_checkpoints = B`` only every k-th checkpoint is kept (k doubles whenever more than B
would be stored); the backward recomputes the states of a segment without a graph from its
kept checkpoint and the recorded step sizes, then backpropagates through it step by step.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

import odeplug
from odeplug import (
    Counts,
    GradientRule,
    ODEProblem,
    Solution,
    Solver,
    Stats,
    Step,
    Stepper,
    StepState,
    VectorField,
    configuration,
    final,
)

__all__ = ["ACA", "solve_aca"]

# Per accepted step ACA also keeps three float64 scalars: start time, step size, end time.
_TIME_BYTES_PER_STEP = 3 * 8


def _budget(instance: Any, attribute: Any, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise odeplug.InvalidOptionError(
            f"ACA: max_checkpoints must be None (keep every accepted step) or a positive int, "
            f"got {value!r}; e.g. ACA(max_checkpoints=64)."
        )


@configuration
class ACA(GradientRule):
    """The adaptive checkpoint adjoint (Zhuang et al., ICML 2020).

    Forward without a graph, keeping a checkpoint (t_i, y_i, h_i) per accepted step; backward
    walks the steps in reverse, recomputes each from its checkpoint with a graph and applies one
    vector–Jacobian product::

        a_i = (∂y_{i+1}/∂y_i)ᵀ a_{i+1} + Σ_{t_k in step i} (∂y(t_k)/∂y_i)ᵀ ∂L/∂y(t_k)
        dL/dθ = Σ_i (∂y_{i+1}/∂θ)ᵀ a_{i+1} + …,   dL/dt_0 = Σ_i ∂(step i)/∂t_i

    Gradients equal the Direct rule's (discretise-then-optimise: exact for the computed
    solution, including dL/dt for every output time) at the memory of one step's graph plus
    the checkpoints, for about one extra forward solve of work.

    Options:
        max_checkpoints: at most this many state checkpoints are stored (default ``None``: one
            per accepted step). Fewer are kept by storing every k-th one (k = 1, 2, 4, …); the
            backward then recomputes the k − 1 states between two checkpoints (counted in
            ``stats["nfe_recompute"]``).

    Stats: ``nfe``, ``steps_accepted``, ``steps_rejected``, ``checkpoints`` (stored states),
    ``checkpoint_bytes_peak`` (state checkpoints, with F(t_i, y_i) for first-same-as-last
    methods, plus three float64 times per step; after backward also the states of a recomputed
    segment), and after ``backward()``:
    ``nfe_backward`` (all evaluations of the backward, recomputation included),
    ``nfe_recompute`` and ``steps_backward``.
    """

    max_checkpoints: int | None = attrs.field(default=None, validator=_budget)


def _step_sizes(
    t0: torch.Tensor, t1: torch.Tensor, proposed: torch.Tensor, end: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The size of every accepted step (1-D tensors of starts, ends and proposed sizes), and
    which step landed on the end time ``end``.

    A step of the proposed size h ends at t1 = t0 + h. A fixed-step solver shortens the step
    that would pass the end time to land on it (see ``Stepper.start``): that step is
    h = end − t0, which depends on the times (the Direct rule differentiates it), and it may be
    followed by a sliver when t0 + (end − t0) rounds short of the end. So a step is taken as
    landing when it ends where such a step ends, t1 = t0 + (end − t0) in floating point, and
    either not where its proposed size would (t0 + h ≠ t1) or it is the final step (then
    ending on the end is what a fixed step does; an adaptive step passes the end, and to end
    within rounding of it would be a coincidence). Any other step whose end is not t0 + h keeps
    h = t1 − t0, a constant.
    """
    final = torch.zeros_like(t1, dtype=torch.bool)
    final[-1] = True
    as_proposed = t0 + proposed == t1
    landed = (t0 + (end - t0) == t1) & (final | ~as_proposed)
    h = torch.where(landed, end - t0, torch.where(as_proposed, proposed, t1 - t0))
    return h, landed


def _own(t: torch.Tensor) -> torch.Tensor:
    """``t``, copied if it is a view into a larger buffer (a solver's stage buffer, say), so a
    checkpoint keeps alive only its own bytes."""
    if t.untyped_storage().nbytes() != t.numel() * t.element_size():
        return t.clone()
    return t


class _PrimableField:
    """``problem.flat_field()`` that can be told the value of its next evaluation at one state.

    The backward recomputes step i from its checkpoint; the step's first stage F(t_i, y_i) is
    already known (it is the last stage of step i − 1 for a first-same-as-last tableau, stored
    with the checkpoint), so it is handed over instead of evaluated: as a leaf, whose gradient
    is then pulled back through the last stage of step i − 1, exactly where the forward (and
    the Direct rule's graph) computed it. This saves one evaluation and one VJP per step.
    A primed value is used once, and only for the very tensor ``y`` it was primed with; if a
    stepper never asks for it, the evaluation simply happens and the leaf gets no gradient.
    """

    __slots__ = ("fn", "y", "value", "hits")

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.y: torch.Tensor | None = None
        self.value: torch.Tensor | None = None
        self.hits = 0

    def prime(self, y: torch.Tensor, value: torch.Tensor) -> None:
        self.y, self.value = y, value

    def clear(self) -> None:
        self.y = self.value = None

    def __call__(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if y is self.y:
            value = self.value
            self.y = self.value = None
            self.hits += 1
            return value
        return self.fn(s, y)


@final
class _Recorder(Stepper):
    """Delegates to the solver's stepper and remembers, for the last attempt, the step size and
    the first stage it started from, and whether the solver reuses a step's last stage as the
    next step's first (first same as last).

    A :class:`odeplug.Step` carries ``t0`` and ``t1`` but not ``h``, and ``t1 − t0`` is not ``h``
    in floating point, while ``step_from`` needs the very ``h`` of the forward to reproduce its
    ``y1`` bit for bit.
    """

    __slots__ = ("inner", "field", "max_steps", "order", "h", "f", "fsal")

    def __init__(self, inner: Stepper) -> None:
        self.inner = inner
        self.field = inner.field
        self.max_steps = inner.max_steps
        self.order = inner.order
        self.h: torch.Tensor | None = None
        self.f: torch.Tensor | None = None
        self.fsal: bool | None = None

    def start(self, t0: torch.Tensor, y0: torch.Tensor, t_end: torch.Tensor) -> StepState:
        return self.inner.start(t0, y0, t_end)

    def attempt(self, state: StepState, t_target: torch.Tensor, land: bool = False):
        self.h, self.f = state.h, state.f
        new_state, step, status = self.inner.attempt(state, t_target, land)
        if step is not None and self.fsal is None:
            last = step.stages[-1]
            self.fsal = new_state.f.shape == last.shape and new_state.f.data_ptr() == last.data_ptr()
        return new_state, step, status

    def interpolate(self, step: Step, t: torch.Tensor) -> torch.Tensor:
        return self.inner.interpolate(step, t)

    def restart(self, state: StepState, y: torch.Tensor) -> StepState:
        return self.inner.restart(state, y)

    def step_from(self, t0: torch.Tensor, y0: torch.Tensor, h: torch.Tensor) -> Step:
        return self.inner.step_from(t0, y0, h)


class _RunningSum:
    """The parameter gradients summed over the steps processed so far, handed to autograd.

    Summing each step's parameter gradients outside autograd keeps three parameter-sized
    tensors alive at once (the running sum, autograd's sum for this step, one new contribution),
    and four for a weight used transposed (``nn.Linear``), whose first contribution arrives as a
    view that autograd will not add into, so it adds the second out of place. Instead, each step's
    VJP gets one more output, :class:`_HandOver`, whose backward returns the running sum as a
    contribution to each parameter's gradient. Autograd runs that node first (it is the newest)
    and then adds the step's contributions into the running sum in place (it is the only
    reference and not a view), so the VJP's result *is* the new running sum, and at most two
    parameter-sized tensors are alive: the sum and one contribution.
    """

    __slots__ = ("sums",)

    def __init__(self) -> None:
        self.sums: list[torch.Tensor] | None = None

    def take(self, params: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        sums, self.sums = self.sums, None
        if sums is None:  # the first step: start from zeros, which autograd can add into
            sums = [torch.zeros_like(p, memory_format=torch.contiguous_format) for p in params]
        return sums


class _HandOver(torch.autograd.Function):
    """A scalar output of the step whose backward gives each parameter the running sum."""

    @staticmethod
    def forward(ctx: Any, running: _RunningSum, *params: torch.Tensor) -> torch.Tensor:
        ctx.running = running
        ctx.params = params
        return params[0].new_zeros(())

    @staticmethod
    def backward(ctx: Any, _: torch.Tensor):
        running: _RunningSum = ctx.running
        sums = running.take(ctx.params)
        ctx.running = ctx.params = None
        return (None, *sums)


class _Tape:
    """What one ACA solve keeps between its forward and its backward (not the tensors saved
    for backward, which go through ``ctx.save_for_backward`` so autograd frees them)."""

    __slots__ = ("stepper", "field", "budget", "stats", "kept_index", "fsal", "landed",
                 "state_bytes", "n_steps", "n_params", "_pending")

    def __init__(self, stepper: Stepper, field: _PrimableField, budget: int | None, stats: Stats,
                 n_params: int) -> None:
        self.stepper = stepper
        self.field = field
        self.budget = budget
        self.stats = stats
        self.n_params = n_params
        self.kept_index: list[int] = []
        self.fsal = False
        self.landed: list[bool] = []
        self.state_bytes = 0
        self.n_steps = 0
        self._pending: tuple[torch.Tensor, ...] = ()

    # -- forward -------------------------------------------------------------------------------
    def forward(self, y0: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        recorder = _Recorder(self.stepper)
        counts = Counts()
        budget = self.budget
        kept_index: list[int] = []
        kept: list[tuple[torch.Tensor, torch.Tensor]] = []  # (y_i, F(t_i, y_i)) per checkpoint
        t0s: list[torch.Tensor] = []
        t1s: list[torch.Tensor] = []
        hs: list[torch.Tensor] = []
        stride = 1
        peak_kept = 0

        def on_step(step: Step) -> None:
            nonlocal stride, peak_kept
            j = len(t0s)
            t0s.append(step.t0)
            t1s.append(step.t1)
            hs.append(recorder.h)  # the proposed size (a landing step is told apart below)
            if j % stride == 0:
                kept_index.append(j)
                kept.append((_own(step.y0), _own(recorder.f) if recorder.fsal else None))
                peak_kept = max(peak_kept, len(kept))
                if budget is not None and len(kept) > budget:
                    stride *= 2
                    keep = [i for i, index in enumerate(kept_index) if index % stride == 0]
                    kept_index[:] = [kept_index[i] for i in keep]
                    kept[:] = [kept[i] for i in keep]

        ys, _ = odeplug.integrate(recorder, y0, s, counts, on_step)
        # With first-same-as-last, each checkpoint keeps F(t_i, y_i) too (see _PrimableField).
        self.fsal = bool(recorder.fsal)
        per_checkpoint = (2 if self.fsal else 1)
        field = self.stepper.field
        self.n_steps = len(t0s)
        self.kept_index = kept_index
        self.state_bytes = y0.numel() * y0.element_size()
        self.stats.update(
            nfe=field.nfe,
            steps_accepted=counts.accepted,
            steps_rejected=counts.rejected,
            checkpoints=len(kept),
            checkpoint_bytes_peak=peak_kept * per_checkpoint * self.state_bytes
            + self.n_steps * _TIME_BYTES_PER_STEP,
        )
        tensors = [y for y, _ in kept] + ([f for _, f in kept] if self.fsal else [])
        t0, t1, h = torch.stack(t0s), torch.stack(t1s), torch.stack(hs)
        h, on_end = _step_sizes(t0, t1, h, s[-1].to(t0.dtype))
        self.landed = on_end.tolist()
        self._pending = (t0, h, t1, *tensors)
        return ys

    def take_saved(self) -> tuple[torch.Tensor, ...]:
        saved, self._pending = self._pending, ()
        return saved

    # -- backward ------------------------------------------------------------------------------
    def backward(
        self,
        grad_ys: torch.Tensor,
        s: torch.Tensor,
        params: tuple[torch.Tensor, ...],
        saved: tuple[torch.Tensor, ...],
        need_y0: bool,
        need_s: bool,
        need_params: tuple[bool, ...],
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, list[torch.Tensor | None]]:
        stepper, pfield, fsal = self.stepper, self.field, self.fsal
        field = stepper.field
        sign = field.direction  # F = sign · f(sign · s, y): a primed f-value is sign · F
        nfe_start, hits_start = field.nfe, pfield.hits
        t0s, hs, t1s, *checkpoints = saved
        kept_index, landed = self.kept_index, self.landed
        kept_y = checkpoints[: len(kept_index)]
        kept_f = checkpoints[len(kept_index):] if fsal else None
        n = self.n_steps
        after_landing = [False] * n
        for j in range(1, n):
            after_landing[j] = after_landing[j - 1] or landed[j - 1]

        # Output k >= 1 lies in the first accepted step whose end reaches s_k (as in `advance`).
        s_detached = s.detach()
        step_of = torch.searchsorted(t1s, s_detached[1:].to(t1s.dtype), side="left")
        step_of = step_of.clamp_(max=n - 1).tolist()
        outputs_of: dict[int, tuple[int, int]] = {}  # step -> its outputs' range [lo, hi)
        for k, j in enumerate(step_of, start=1):
            lo, _ = outputs_of.get(j, (k, k))
            outputs_of[j] = (lo, k + 1)

        wanted = [p for p, need in zip(params, need_params) if need]
        running = _RunningSum()
        grad_s = torch.zeros_like(s_detached) if need_s else None
        grad_t0 = torch.zeros((), dtype=s_detached.dtype, device=s_detached.device)
        a: torch.Tensor | None = None  # dL/dy at the end of the step being processed
        a_f: torch.Tensor | None = None  # dL/dF(t, y) there, when the next step was primed
        nfe_recompute = 0
        peak_extra = 0

        for segment in range(len(kept_index) - 1, -1, -1):
            first = kept_index[segment]
            end = kept_index[segment + 1] if segment + 1 < len(kept_index) else n
            # Recompute the segment's states without a graph (none when every step is kept).
            states_y = [kept_y[segment]]
            states_f = [kept_f[segment]] if fsal else None
            if end - first > 1:
                before = field.nfe - pfield.hits
                with torch.no_grad():
                    for j in range(first, end - 1):
                        if fsal:
                            pfield.prime(states_y[-1], states_f[-1] if sign > 0 else -states_f[-1])
                        step = stepper.step_from(t0s[j], states_y[-1], hs[j])
                        pfield.clear()
                        states_y.append(step.y1)
                        if fsal:
                            states_f.append(_own(step.stages[-1]))
                nfe_recompute += field.nfe - pfield.hits - before
                peak_extra = max(peak_extra, len(states_y) - 1)
            for j in range(end - 1, first - 1, -1):
                y0 = states_y.pop().detach().requires_grad_(True)
                f0 = states_f.pop() if fsal else None
                outputs_here = outputs_of.get(j, ())
                with torch.enable_grad():
                    primed = None
                    if fsal and j > 0:  # step 0's first stage is F(s_0, y_0): keep its graph
                        primed = (f0 if sign > 0 else -f0).detach().requires_grad_(True)
                        pfield.prime(y0, primed)
                    t0 = t0s[j].detach().requires_grad_(True) if need_s else t0s[j]
                    h = hs[j]
                    if need_s and landed[j]:  # h = s_end − t0, as in the forward
                        end_leaf = s_detached[-1].to(t0.dtype).clone().requires_grad_(True)
                        h = end_leaf - t0
                    step = stepper.step_from(t0, y0, h)
                    pfield.clear()
                    outs: list[torch.Tensor] = []
                    cotangents: list[torch.Tensor] = []
                    if a is not None:
                        outs.append(step.y1)
                        cotangents.append(a)
                    if a_f is not None:
                        outs.append(step.stages[-1])
                        cotangents.append(a_f)
                    time_leaves: list[torch.Tensor] = []
                    if outputs_here:  # the step's outputs s_lo, …, s_{hi−1}, read together
                        lo, hi = outputs_here
                        s_here = s_detached[lo:hi]
                        if need_s:
                            s_here = s_here.clone().requires_grad_(True)
                            time_leaves.append(s_here)
                        outs.append(stepper.interpolate(step, s_here))
                        cotangents.append(grad_ys[lo:hi])
                    if not outs:
                        continue
                    if wanted:
                        outs.append(_HandOver.apply(running, *wanted))
                        cotangents.append(torch.ones((), dtype=wanted[0].dtype, device=wanted[0].device))
                    inputs = [y0, *wanted]
                    if primed is not None:
                        inputs.append(primed)
                    if need_s:
                        inputs += [t0, *time_leaves]
                        if landed[j]:
                            inputs.append(end_leaf)
                    grads = torch.autograd.grad(outs, inputs, cotangents, allow_unused=True)
                a = grads[0] if grads[0] is not None else torch.zeros_like(y0)
                if wanted:
                    running.sums = list(grads[1 : 1 + len(wanted)])
                base = 1 + len(wanted)
                a_f = None
                if primed is not None:
                    if grads[base] is not None:
                        a_f = grads[base] if sign > 0 else -grads[base]
                    base += 1
                if need_s:
                    if grads[base] is not None:
                        # A step's start is s_0 + Σ h (constant h) until a step lands on the
                        # end time: from there on it is s_end + Σ h.
                        if after_landing[j]:
                            grad_s[-1] += grads[base]
                        else:
                            grad_t0 = grad_t0 + grads[base]
                    if time_leaves and grads[base + 1] is not None:
                        lo, hi = outputs_here
                        grad_s[lo:hi] += grads[base + 1]
                    if landed[j] and grads[-1] is not None:
                        grad_s[-1] += grads[-1]
                # Free this step's gradients (parameter-sized) and graph before the next VJP.
                del grads, outs, cotangents, step

        grad_y0 = grad_ys[0] if a is None else a + grad_ys[0]
        if need_s:
            grad_s[0] += grad_t0
        grad_params: list[torch.Tensor | None] = []
        it = iter(running.sums if running.sums is not None else [None] * len(wanted))
        for p, need in zip(params, need_params):
            if not need:
                grad_params.append(None)
                continue
            g = next(it)
            grad_params.append(torch.zeros_like(p) if g is None else g)

        stats = self.stats
        evaluated = field.nfe - nfe_start - (pfield.hits - hits_start)
        stats["nfe_backward"] = stats.get("nfe_backward", 0) + evaluated
        stats["nfe_recompute"] = stats.get("nfe_recompute", 0) + nfe_recompute
        stats["steps_backward"] = stats.get("steps_backward", 0) + n
        if peak_extra:
            per = 2 if fsal else 1
            segment_peak = (len(kept_index) + peak_extra) * per * self.state_bytes + n * _TIME_BYTES_PER_STEP
            stats["checkpoint_bytes_peak"] = max(stats["checkpoint_bytes_peak"], segment_peak)
        return (grad_y0 if need_y0 else None), grad_s, grad_params


class _ACAFunction(torch.autograd.Function):
    """Inputs: the tape, the flat y0, the solver times s and the parameters; output: the flat
    states at s, stacked."""

    @staticmethod
    def forward(ctx: Any, tape: _Tape, y0: torch.Tensor, s: torch.Tensor, *params: torch.Tensor):
        ys = tape.forward(y0, s)
        ctx.tape = tape
        ctx.save_for_backward(s, *params, *tape.take_saved())
        return ys

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_ys: torch.Tensor):
        tape: _Tape = ctx.tape
        saved = ctx.saved_tensors
        s, params, rest = saved[0], saved[1 : 1 + tape.n_params], saved[1 + tape.n_params :]
        need = ctx.needs_input_grad
        grad_y0, grad_s, grad_params = tape.backward(
            grad_ys, s, params, rest, need[1], need[2], tuple(need[3:])
        )
        return (None, grad_y0, grad_s, *grad_params)


def solve_aca(problem: ODEProblem, solver: Solver, rule: ACA, **options: Any) -> Solution:
    odeplug.reject_options("solve(ODEProblem, Solver, ACA)", options)
    pfield = _PrimableField(problem.flat_field())
    field = VectorField(pfield, problem.direction)
    stepper = odeplug.make_stepper(solver, field, problem.layout)
    s = odeplug.solver_times(problem.ts, problem.direction)
    y0 = problem.flat_y0()
    params = problem.params
    stats = Stats()
    needs_grad = torch.is_grad_enabled() and (
        y0.requires_grad or s.requires_grad or any(p.requires_grad for p in params)
    )
    if not needs_grad:
        counts = Counts()
        with torch.no_grad():
            ys, _ = odeplug.integrate(stepper, y0, s, counts)
        stats.update(nfe=field.nfe, steps_accepted=counts.accepted, steps_rejected=counts.rejected,
                     checkpoints=0, checkpoint_bytes_peak=0)
        return Solution(problem.unflatten(ys), problem.ts, stats)
    tape = _Tape(stepper, pfield, rule.max_checkpoints, stats, len(params))
    ys = _ACAFunction.apply(tape, y0, s, *params)
    return Solution(problem.unflatten(ys), problem.ts, stats)
