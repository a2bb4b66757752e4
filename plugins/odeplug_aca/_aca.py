"""The adaptive checkpoint adjoint: checkpoint every accepted step, backpropagate one step at a time.

Zhuang, Dvornek, Li, Tatikonda, Papademetris & Duncan, "Adaptive Checkpoint Adjoint Method for
Gradient Estimation in Neural ODE", ICML 2020.

The rule is a forward and a backward run by the autograd shell of :mod:`odeplug.backward`
(which finds the tensors f depends on, saves what the forward keeps, keeps module buffers as the
forward left them).

Forward (no graph): the solver runs as usual; for every accepted step i (from s_i to
s_i + h_i) the record (s_i, h_i, s_{i+1}, landed_i) and the checkpoint y_i are kept, and nothing
else (not the stages, not the rejected attempts). Each step is computed once. For solvers whose
steps compute F(s_{i+1}, y_{i+1}) (``Step.f1``: first-same-as-last tableaus, fixed-step
solvers), the checkpoint also keeps F(s_i, y_i), the previous step's ``f1``, which the
recomputation is handed (:meth:`odeplug.VectorField.prime`) instead of evaluating it.

Backward: for i = n−1, …, 0 the step is recomputed from its checkpoint with a graph,
``step_from(s_i, y_i, h_i)``, which reproduces the forward's y_{i+1} bit for bit, and one
vector–Jacobian product pulls the adjoint back through it:

    a_i = (∂y_{i+1}/∂y_i)ᵀ a_{i+1} + Σ_{k in step i} (∂ŷ(s_k)/∂y_i)ᵀ ∂L/∂y(s_k),

with the same product giving the step's contribution to dL/dθ, to dL/ds_k through the dense
output ŷ, and to dL/ds_0 through the step's start time s_i = s_0 + Σ_{j<i} h_j (the h_j are
constants, as in the Direct rule, except a fixed-step solver's step landing on the end time,
h = s_end − s_i, differentiated as there). The gradients are therefore those of the Direct rule
(the exact derivative of the computed solution), with the memory of one step's graph plus the
checkpoints. They are returned for what the shell differentiates: y0, the tensors f depends on,
and the output times in user time t, where s = direction · t gives dL/dt = direction · dL/ds.

With ``max_checkpoints = B`` only every k-th checkpoint is kept (k doubles whenever more than B
would be stored); the backward recomputes the states of a segment without a graph from its
kept checkpoint and the recorded step sizes, then backpropagates through it step by step.

Random numbers drawn inside f (Dropout in train mode) are replayed as ``torch.utils.checkpoint``
replays them: the forward records the generators' state at the start of each accepted step's
attempt, and every recomputation of that step starts from it. Under ``create_graph=True`` the
backward rebuilds the whole trajectory with a graph instead, so that second derivatives are the
Direct rule's.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
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
    Step,
    Stepper,
    StepState,
    configuration,
    final,
)
from odeplug._integrate import forward_stats
from odeplug.backward import Gradients, Needs, RNGState, Tape, differentiate, forward_outputs

__all__ = ["ACA", "solve_aca"]

# Per accepted step ACA also keeps three float64 scalars (start time, step size, end time) and
# the one-byte flag saying whether the step landed on the end time.
_RECORD_BYTES_PER_STEP = 3 * 8 + 1


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
    the checkpoints, for about one extra forward solve of work. Random numbers drawn inside f
    (Dropout) are replayed step by step, and second derivatives (``create_graph=True``) are
    the Direct rule's, computed by rebuilding the trajectory's graph in backward.

    Options:
        max_checkpoints: at most this many state checkpoints are stored (default ``None``: one
            per accepted step). Fewer are kept by storing every k-th one (k = 1, 2, 4, …); the
            backward then recomputes the k − 1 states between two checkpoints (counted in
            ``stats["nfe_recompute"]``).

    Stats: ``nfe``, ``steps_accepted``, ``steps_rejected``, ``checkpoints`` (stored states),
    ``checkpoint_bytes_peak`` (state checkpoints, with F(t_i, y_i) where the previous step
    computed it, plus three float64 times and a flag per step, plus the random number
    generators' state per step when f draws random numbers; after backward also the states of
    a recomputed segment), and after ``backward()``: ``nfe_backward`` (all evaluations of the
    backward, recomputation included), ``nfe_recompute`` and ``steps_backward``.
    """

    max_checkpoints: int | None = attrs.field(default=None, validator=_budget)


def _own(t: torch.Tensor) -> torch.Tensor:
    """``t``, copied if it is a view into a larger buffer (a solver's stage buffer, say), so a
    checkpoint keeps alive only its own bytes."""
    if t.untyped_storage().nbytes() != t.numel() * t.element_size():
        return t.clone()
    return t


def _nbytes(*tensors: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


@final
class _AttemptStates(Stepper):
    """The solver's stepper, capturing the random number generators' state before each attempt.

    A step's random draws start where its *accepted* attempt started: rejected attempts draw
    numbers too, so the state must be taken before every attempt, and the one before the
    accepted attempt kept (:attr:`rng_state` when ``on_step`` sees the step).
    """

    __slots__ = ("inner", "field", "max_steps", "order", "rng_state")

    def __init__(self, inner: Stepper) -> None:
        self.inner = inner
        self.field = inner.field
        self.max_steps = inner.max_steps
        self.order = inner.order
        self.rng_state: RNGState | None = None

    def start(self, t0: torch.Tensor, y0: torch.Tensor, t_end: torch.Tensor) -> StepState:
        return self.inner.start(t0, y0, t_end)

    def attempt(self, state: StepState, t_target: torch.Tensor, land: bool = False):
        self.rng_state = RNGState.capture(state.y)
        return self.inner.attempt(state, t_target, land)

    def interpolate(self, step: Step, t: torch.Tensor) -> torch.Tensor:
        return self.inner.interpolate(step, t)

    def restart(self, state: StepState, y: torch.Tensor) -> StepState:
        return self.inner.restart(state, y)

    def step_from(self, t0: torch.Tensor, y0: torch.Tensor, h: torch.Tensor) -> Step:
        return self.inner.step_from(t0, y0, h)


@final
class _Recording:
    """What the forward keeps, built step by step by :meth:`on_step`.

    Per accepted step: its start, size, end and landing flag, and (when f draws random numbers)
    the generators' state at the start of its accepted attempt. Every ``stride``-th step also
    keeps a checkpoint: y_i, and F(t_i, y_i) when the previous step computed it (``Step.f1``).
    """

    __slots__ = ("budget", "attempts", "solver", "t0s", "hs", "t1s", "landed", "rng_states",
                 "kept", "stride", "kept_bytes", "peak_kept_bytes", "f1")

    def __init__(self, budget: int | None, attempts: _AttemptStates | None, solver: Solver) -> None:
        self.budget = budget
        self.attempts = attempts
        self.solver = solver
        self.t0s: list[torch.Tensor] = []
        self.hs: list[torch.Tensor] = []
        self.t1s: list[torch.Tensor] = []
        self.landed: list[torch.Tensor] = []
        self.rng_states: list[RNGState] = []
        self.kept: list[tuple[int, torch.Tensor, torch.Tensor | None]] = []  # (i, y_i, F(t_i, y_i))
        self.stride = 1
        self.kept_bytes = 0
        self.peak_kept_bytes = 0
        self.f1: torch.Tensor | None = None  # the previous step's F(t_{i+1}, y_{i+1}), if any

    def on_step(self, step: Step) -> None:
        i = len(self.t0s)
        self.t0s.append(step.t0)
        self.hs.append(step.h)
        self.t1s.append(step.t1)
        self.landed.append(step.landed)
        if self.attempts is not None:
            if step.f1 is None:
                raise odeplug.UnsupportedCombinationError(
                    f"ACA with {type(self.solver).__name__}: f draws random numbers, and this "
                    "solver's steps do not return F(t1, y1) (Step.f1), so ACA cannot replay the "
                    "draws of each step's first stage. Use a first-same-as-last or fixed-step "
                    "solver (Dopri5, Tsit5, Bosh3, RK4), Direct(), or make f deterministic "
                    "(model.eval())."
                )
            self.rng_states.append(self.attempts.rng_state)
        if i % self.stride == 0:
            y, f = _own(step.y0), None if self.f1 is None else _own(self.f1)
            self.kept.append((i, y, f))
            self.kept_bytes += _nbytes(y, f)
            self.peak_kept_bytes = max(self.peak_kept_bytes, self.kept_bytes)
            if self.budget is not None and len(self.kept) > self.budget:
                self.stride *= 2
                self.kept = [c for c in self.kept if c[0] % self.stride == 0]
                self.kept_bytes = sum(_nbytes(y, f) for _, y, f in self.kept)
        self.f1 = step.f1

    def save(self, tape: Tape) -> None:
        """Hand the record to the shell (``tape.saved``, freed with the graph) and the Python
        values to ``tape.memo``."""
        kept_y = [y for _, y, _ in self.kept]
        kept_f = [f for _, _, f in self.kept]
        # One tensor per generator and step, not stacked: torch.set_rng_state mishandles a state
        # that is a view into a larger tensor (it ignores the view's storage offset).
        rng = [t for r in self.rng_states for t in (r.cpu, *r.device_states)]
        if self.rng_states:
            first = self.rng_states[0]
            tape.memo["rng_devices"] = (first.device_type, first.devices)
        record = (torch.stack(self.t0s), torch.stack(self.hs), torch.stack(self.t1s),
                  torch.stack(self.landed))
        tape.saved = (*record, *kept_y, *kept_f, *rng)
        tape.memo["kept_index"] = [i for i, _, _ in self.kept]
        tape.memo["record_bytes"] = len(self.t0s) * _RECORD_BYTES_PER_STEP + _nbytes(*rng)


def _forward(tape: Tape) -> torch.Tensor:
    if not tape.differentiated:
        ys = forward_outputs(tape)
        tape.stats.update(checkpoints=0, checkpoint_bytes_peak=0)
        return ys
    stepper = odeplug.make_stepper(tape.solver, tape.field, tape.problem.layout)
    tape.memo["stepper"] = stepper
    counts = Counts()
    attempts = _AttemptStates(stepper) if tape.uses_rng else None
    recording = _Recording(tape.rule.max_checkpoints, attempts, tape.solver)
    loop = stepper if attempts is None else attempts
    ys, _ = odeplug.integrate(loop, tape.y0, tape.s, counts, recording.on_step)
    recording.save(tape)
    tape.stats.update(
        forward_stats(tape.field, counts, stepper),
        checkpoints=len(recording.kept),
        checkpoint_bytes_peak=recording.peak_kept_bytes + tape.memo["record_bytes"],
    )
    return ys


@final
class _Steps:
    """The forward's record as the backward reads it, and the exact recomputation of a step.

    :meth:`replay` recomputes step i as the forward took it: ``step_from(t_i, y_i, h_i)`` with
    the first stage F(t_i, y_i) handed over when known, and, when f draws random numbers, from
    the generators' state recorded at the start of the step's accepted attempt (F(t_0, y_0), the
    one stage no step computed, from the state before f's first evaluation), all inside one
    :meth:`forked` context so that the generators are left as they were found.
    """

    __slots__ = ("stepper", "field", "n", "t0s", "hs", "t1s", "landed", "kept_index", "kept_y",
                 "kept_f", "rng_initial", "rng_devices", "rng_states")

    def __init__(self, tape: Tape) -> None:
        self.stepper: Stepper = tape.memo["stepper"]
        self.field = tape.field
        self.t0s, self.hs, self.t1s, self.landed, *rest = tape.saved
        self.n = len(self.t0s)
        self.kept_index: list[int] = tape.memo["kept_index"]
        k = len(self.kept_index)
        self.kept_y, self.kept_f = rest[:k], rest[k : 2 * k]
        self.rng_initial = tape.rng_state if tape.uses_rng else None
        if self.rng_initial is not None:
            self.rng_devices = tape.memo["rng_devices"]
            self.rng_states = rest[2 * k :]

    def forked(self) -> AbstractContextManager[Any]:
        return self.rng_initial.fork() if self.rng_initial is not None else nullcontext()

    def replay(self, i: int, t0: torch.Tensor, y0: torch.Tensor, h: torch.Tensor,
               f0: torch.Tensor | None) -> Step:
        """Step ``i`` from (t0, y0, h), handed ``f0`` = F(t0, y0) unless ``None``."""
        if self.rng_initial is not None:
            if f0 is None:  # step 0 (the forward refuses other steps without a known F(t_i, y_i))
                self.rng_initial.restore()
                f0 = self.field(t0.to(y0.dtype), y0)
            self._rng_state(i).restore()
        if f0 is not None:
            self.field.prime(y0, f0)
        return self.stepper.step_from(t0, y0, h)

    def _rng_state(self, i: int) -> RNGState:
        """The generators' state at the start of step ``i``'s accepted attempt."""
        device_type, devices = self.rng_devices
        per_step = 1 + len(devices)  # the CPU generator's state, then each device's
        cpu, *on_devices = self.rng_states[i * per_step : (i + 1) * per_step]
        return RNGState(cpu, device_type, devices, tuple(on_devices))

    def outputs_by_step(self, s: torch.Tensor) -> dict[int, tuple[int, int]]:
        """Step i → the range [lo, hi) of the outputs read from its dense output: output k ≥ 1
        lies in the first accepted step whose end reaches s_k (as the forward reads it)."""
        step_of = torch.searchsorted(self.t1s, s[1:].to(self.t1s.dtype), side="left")
        ranges: dict[int, tuple[int, int]] = {}
        for k, i in enumerate(step_of.clamp_(max=self.n - 1).tolist(), start=1):
            lo, _ = ranges.get(i, (k, k))
            ranges[i] = (lo, k + 1)
        return ranges

    def landings(self) -> list[str | None]:
        """For each step, where it was shortened to end: ``"stop"`` (on one of the problem's
        stop or jump times, a constant: its size is stop − t_i), ``"end"`` (a fixed-step
        solver's last step: end − t_i), or ``None``. One synchronisation."""
        stops = self.field.stops
        at_stop = torch.zeros_like(self.landed) if stops is None else torch.isin(self.t1s, stops)
        kinds = torch.where(self.landed, torch.where(at_stop, 2, 1), 0).tolist()
        return [(None, "end", "stop")[k] for k in kinds]

    def starts(self, landings: list[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """For each step, whether its start is s_0 + Σ h or s_end + Σ h (constant h): masks
        (follows s_0, follows s_end). After a step that landed on a stop, starts are
        constants (stop + Σ h) and follow neither."""
        follows_start, follows_end, last = [], [], None
        for kind in landings:
            follows_start.append(last is None)
            follows_end.append(last == "end")
            if kind is not None:
                last = kind
        device = self.landed.device
        return torch.tensor(follows_start, device=device), torch.tensor(follows_end, device=device)

    def size(self, i: int, t0: torch.Tensor, end: torch.Tensor, landing: str | None) -> torch.Tensor:
        """Step i's size as the forward differentiated it: constant, end − t_i for a step that
        landed on the end, and for one that landed on a stop the recorded size (so that
        t_i + h is the stop exactly) with the derivative of stop − t_i."""
        if landing == "stop":
            gap = self.t1s[i] - t0
            return self.hs[i] + (gap - gap.detach())
        if landing == "end":
            return end - t0
        return self.hs[i]


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


def _backward(tape: Tape, grad_ys: torch.Tensor, needs: Needs) -> Gradients:
    steps = _Steps(tape)
    start = tape.field.nfe
    if torch.is_grad_enabled():  # backward(create_graph=True)
        grads = _differentiable_gradients(tape, steps, grad_ys, needs)
    else:
        grads = _step_by_step_gradients(tape, steps, grad_ys, needs)
    stats = tape.stats
    stats["nfe_backward"] = stats.get("nfe_backward", 0) + tape.field.nfe - start
    stats["steps_backward"] = stats.get("steps_backward", 0) + steps.n
    stats.setdefault("nfe_recompute", 0)
    return grads


def _step_by_step_gradients(tape: Tape, steps: _Steps, grad_ys: torch.Tensor, needs: Needs) -> Gradients:
    """First derivatives: the steps in reverse, each recomputed with a graph and pulled back
    with one VJP (see the module docstring)."""
    field, stepper, n = tape.field, steps.stepper, steps.n
    s = tape.s.detach()
    outputs_of = steps.outputs_by_step(s)
    landings = steps.landings() if needs.ts else None
    wanted = [p for p, need in zip(tape.inputs, needs.inputs) if need]
    running = _RunningSum()
    grad_s = torch.zeros_like(s) if needs.ts else None
    # ∂L/∂s_i through each step's own start time, attributed to s_0 or s_end at the end.
    start_grads = s.new_zeros(n) if needs.ts else None
    a: torch.Tensor | None = None  # dL/dy at the end of the step being processed
    a_f: torch.Tensor | None = None  # dL/dF(t, y) there, when the next step was handed it
    nfe_recompute = 0
    segment_peak_bytes = 0
    # Each step's start and size as 0-d tensors, split once (not one indexing op per step
    # of the backward).
    t0s, hs = steps.t0s.unbind(), steps.hs.unbind()
    one = wanted[0].new_ones(()) if wanted else None  # the cotangent of _HandOver's output

    with steps.forked():
        for segment in range(len(steps.kept_index) - 1, -1, -1):
            first = steps.kept_index[segment]
            end = steps.kept_index[segment + 1] if segment + 1 < len(steps.kept_index) else n
            # Recompute the segment's states without a graph (none when every step is kept).
            states = [(steps.kept_y[segment], steps.kept_f[segment])]
            if end - first > 1:
                before = field.nfe
                with torch.no_grad():
                    for i in range(first, end - 1):
                        y_i, f_i = states[-1]
                        step = steps.replay(i, steps.t0s[i], y_i, steps.hs[i], f_i)
                        states.append((step.y1, None if step.f1 is None else _own(step.f1)))
                nfe_recompute += field.nfe - before
                segment_peak_bytes = max(segment_peak_bytes, sum(_nbytes(*c) for c in states[1:]))
            for i in range(end - 1, first - 1, -1):
                y_i, f_i = states.pop()
                outputs_here = outputs_of.get(i)
                with torch.enable_grad():
                    y0 = y_i.detach().requires_grad_(True)
                    f0 = None if f_i is None else f_i.detach().requires_grad_(True)
                    t0, h = t0s[i], hs[i]
                    if needs.ts:
                        t0 = t0.detach().requires_grad_(True)
                        # A landing step's size is s_end − s_i, as in the forward.
                        end_leaf = s[-1].to(t0.dtype).clone().requires_grad_(True)
                        h = steps.size(i, t0, end_leaf, landings[i])
                    step = steps.replay(i, t0, y0, h, f0)
                    outs: list[torch.Tensor] = []
                    cotangents: list[torch.Tensor] = []
                    if a is not None:
                        outs.append(step.y1)
                        cotangents.append(a)
                    if a_f is not None:
                        outs.append(step.f1)
                        cotangents.append(a_f)
                    if outputs_here is not None:  # the step's outputs s_lo, …, s_{hi−1}, read together
                        lo, hi = outputs_here
                        s_here = s[lo:hi].clone().requires_grad_(True) if needs.ts else s[lo:hi]
                        outs.append(stepper.interpolate(step, s_here))
                        cotangents.append(grad_ys[lo:hi])
                    if not outs:
                        continue
                    if wanted:
                        outs.append(_HandOver.apply(running, *wanted))
                        cotangents.append(one)
                    wrt = [y0, *wanted]
                    if f0 is not None:
                        wrt.append(f0)
                    if needs.ts:
                        wrt += [t0, end_leaf] + ([s_here] if outputs_here is not None else [])
                    grads = list(torch.autograd.grad(outs, wrt, cotangents, allow_unused=True))
                a = grads[0] if grads[0] is not None else torch.zeros_like(y0)
                if wanted:
                    running.sums = grads[1 : 1 + len(wanted)]
                rest = grads[1 + len(wanted) :]
                a_f = rest.pop(0) if f0 is not None else None
                if needs.ts:
                    g_start, g_end, *g_outputs = rest
                    if g_start is not None:
                        start_grads[i] = g_start
                    if g_end is not None:
                        grad_s[-1] += g_end
                    if g_outputs and g_outputs[0] is not None:
                        grad_s[lo:hi] += g_outputs[0]
                # Free this step's gradients (parameter-sized) and graph before the next VJP.
                del grads, rest, outs, cotangents, step

    grad_ts = None
    if needs.ts:
        follows_start, follows_end = steps.starts(landings)
        grad_s[0] += torch.where(follows_start, start_grads, 0.0).sum()
        grad_s[-1] += torch.where(follows_end, start_grads, 0.0).sum()
        grad_ts = (tape.direction * grad_s).to(tape.problem.ts.dtype)  # s = direction · t
    sums = iter(running.sums if running.sums is not None else [None] * len(wanted))
    grad_inputs = []
    for p, need in zip(tape.inputs, needs.inputs):
        g = next(sums) if need else None
        grad_inputs.append(torch.zeros_like(p) if need and g is None else g)

    stats = tape.stats
    stats["nfe_recompute"] = stats.get("nfe_recompute", 0) + nfe_recompute
    if segment_peak_bytes:
        kept = sum(_nbytes(y, f) for y, f in zip(steps.kept_y, steps.kept_f))
        peak = kept + segment_peak_bytes + tape.memo["record_bytes"]
        stats["checkpoint_bytes_peak"] = max(stats["checkpoint_bytes_peak"], peak)
    grad_y0 = grad_ys[0] if a is None else a + grad_ys[0]
    return Gradients(grad_y0, grad_ts, tuple(grad_inputs))


def _differentiable_gradients(tape: Tape, steps: _Steps, grad_ys: torch.Tensor, needs: Needs) -> Gradients:
    """Gradients that are themselves differentiable (``create_graph=True``): the trajectory is
    recomputed with a graph from y0, step by step with the recorded sizes (and random draws), in
    the very structure of the Direct rule's forward — step starts s_0 + Σ h, a landing step's
    h = s_end − s_i, each step's first stage the previous step's F(t_{i+1}, y_{i+1}) — and
    differentiated with ``create_graph=True``. So second derivatives are the Direct rule's, at
    the Direct rule's memory for the duration of this backward."""
    problem = tape.problem
    s = odeplug.solver_times(problem.ts, tape.direction)  # on the graph of ts
    outputs_of = steps.outputs_by_step(s.detach())
    y, t0, f0 = tape.y0, s[0], None
    rows = [y.unsqueeze(0)]
    landings = steps.landings()
    with steps.forked():
        for i in range(steps.n):
            h = steps.size(i, t0, s[-1], landings[i])
            step = steps.replay(i, t0, y, h, f0)
            if i in outputs_of:
                lo, hi = outputs_of[i]
                rows.append(steps.stepper.interpolate(step, s[lo:hi]))
            y, t0, f0 = step.y1, step.t1, step.f1
    wanted = [p for p, need in zip(tape.inputs, needs.inputs) if need]
    wrt = [x for x, need in ((tape.y0, needs.y0), (problem.ts, needs.ts)) if need] + wanted
    grads = iter(torch.autograd.grad(torch.cat(rows), wrt, grad_ys, create_graph=True, allow_unused=True))
    grad_y0 = next(grads) if needs.y0 else None
    grad_ts = next(grads) if needs.ts else None
    return Gradients(grad_y0, grad_ts, tuple(next(grads) if need else None for need in needs.inputs))


def solve_aca(problem: ODEProblem, solver: Solver, rule: ACA, **options: Any) -> Solution:
    odeplug.reject_options("solve(ODEProblem, Solver, ACA)", options)
    return differentiate(problem, solver, rule, _forward, _backward,
                         replays_randomness=True, second_derivatives=True)
