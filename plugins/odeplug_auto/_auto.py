"""``Auto``: a gradient rule that picks the gradient rule, once per solve.

For a solve, Auto

1. *measures* what decides the choice (:class:`Measurements`): the state's size S, the bytes P
   of the tensors f depends on (found as the backward kit finds them, by watching one
   evaluation), the number K of output times, the saved-for-backward bytes of one evaluation of
   f and of one solver step with a graph (``torch.autograd.graph.saved_tensors_hooks``), and the
   forward's accepted steps n and NFE N. The first solve of a field measures them with a probe
   (one evaluation and one step with a graph, one graph-free forward); later solves of the same
   field (same state shape, dtype, device, solver, output times) reuse them, with n and N taken
   from the previous solve's own forward, so that no solve is spent on deciding;
2. *estimates* each candidate's peak memory and cost (:func:`estimate`; the model and its
   figures are in docs/methods/auto.md);
3. *chooses* the cheapest candidate whose memory fits the budget (``memory=`` bytes, or the
   device's free memory), and
4. *delegates* the whole solve, forward and backward, to it; ``Solution.stats`` carries the
   chosen rule's counts and ``auto_rule``, ``auto_reason``, ``auto_budget``, ``auto_estimates``,
   ``auto_probe_nfe``.

Auto promises first derivatives: it refuses randomness in f and second derivatives with an error
naming Direct and ACA, which support both, so that what works does not depend on the budget.
"""

from __future__ import annotations

import inspect
import time
import math
import numbers
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import attrs
import torch

import odeplug
from odeplug import GradientRule, ODEProblem, Solution, Solver, configuration, final
from odeplug.backward import RNGState, backward_solver, field_inputs

__all__ = ["Auto", "Estimate", "Measurements", "available_memory", "estimate", "measure", "solve_auto"]


def _memory(instance: Any, attribute: Any, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise odeplug.InvalidOptionError(
            f"Auto: memory must be a number of bytes, e.g. Auto(memory=2 * 2**30) for 2 GiB, or "
            f"None for the free memory of the device, got {value!r}."
        )
    if not math.isfinite(value) or value <= 0:
        raise odeplug.InvalidOptionError(
            f"Auto: memory must be a positive, finite number of bytes (e.g. Auto(memory=2**30) "
            f"for 1 GiB), or None for the free memory of the device, got {value!r}."
        )


@configuration
class Auto(GradientRule):
    """Picks a gradient rule per solve: the fastest of Direct, ACA, GQAdjoint, GaussAdjoint and
    Adjoint(norm=Seminorm()) whose estimated peak memory fits the budget, then hands it the
    whole solve (forward and backward).

    Options:
        memory: the budget in bytes; ``None`` (default): the device's free memory
            (``torch.cuda.mem_get_info`` plus the blocks PyTorch's allocator holds free, on
            CUDA; ``MemAvailable`` of /proc/meminfo, or psutil, on the CPU). With an explicit
            budget that no candidate fits, the solve raises :class:`odeplug.SolveError` listing
            the estimates; with ``None`` the least-memory candidate runs, with a
            ``ResourceWarning``.

    Stats: the chosen rule's, plus ``auto_rule`` (its label), ``auto_reason`` (why, in words),
    ``auto_budget`` (bytes), ``auto_estimates`` ({label: {"memory": bytes, "cost": evaluations
    of f, "fits": bool}}) and ``auto_probe_nfe`` (evaluations of f Auto spent measuring: 0 when
    the field's measurements were reused). Randomness in f and second derivatives are refused
    with an error naming Direct and ACA (see docs/methods/auto.md).
    """

    memory: int | float | None = attrs.field(default=None, validator=_memory)


# --------------------------------------------------------------------------------------------
# Measuring


@final
@attrs.frozen
class Measurements:
    """What the choice is made from (bytes, counts).

    ``state_bytes`` S and ``state_numel``; ``param_bytes`` P and ``param_numel`` (the tensors f
    depends on that require grad); ``outputs`` K; ``evaluation_bytes`` (saved for backward by one
    evaluation of f with a graph); ``step_bytes`` (by one solver step, ``Stepper.step_from``)
    and ``stages`` (the evaluations of that step); ``steps`` n and ``nfe`` N (accepted steps and
    evaluations of the latest forward solve); ``uses_rng``: f drew random numbers when the
    probe evaluated it; ``inapplicable``: the candidates the solver cannot serve (ACA needs
    steps that can be recomputed from (t_i, y_i, h_i), the backsolve rules a stepper,
    Adjoint(Seminorm) a backward solver with a ``norm`` option)."""

    state_bytes: int
    state_numel: int
    param_bytes: int
    param_numel: int
    outputs: int
    evaluation_bytes: int
    step_bytes: int
    stages: int
    steps: int
    nfe: int
    uses_rng: bool = False
    inapplicable: tuple[str, ...] = ()


class _SavedBytes:
    """Bytes of the distinct storages autograd saves for backward while active (``total``),
    except those in ``exclude`` (the parameters' storages, which exist anyway)."""

    def __init__(self, exclude: set[int]) -> None:
        self.exclude = exclude
        self.seen: set[int] = set()
        self.total = 0
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key and key not in self.exclude and key not in self.seen:
            self.seen.add(key)
            self.total += storage.nbytes()
        return tensor

    def __enter__(self) -> _SavedBytes:
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.hooks.__exit__(*exc)


def _nbytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def measure(problem: ODEProblem, solver: Solver) -> tuple[Measurements, int]:
    """Measure ``problem`` with a probe: one evaluation and one step of ``solver`` with a graph
    (their saved bytes), and one graph-free forward solve (its steps and NFE). Returns the
    measurements and the evaluations of f the probe made. The random number generators are
    left as they were, and the probe's warnings are not shown (the solve repeats them)."""
    y0 = problem.flat_y0().detach()
    s = odeplug.solver_times(problem.ts.detach(), problem.direction)
    t0 = s[0].to(y0.dtype)
    field = odeplug.VectorField(problem.flat_field(), problem.direction)
    # The solve that follows warns about the field as it sees fit; the probe does not repeat it.
    with RNGState.capture(y0).fork(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = field_inputs(field, t0, y0, problem.params)
        inputs = found.tensors
        exclude = {t.untyped_storage().data_ptr() for t in inputs}
        z = y0.clone().requires_grad_(True)
        with torch.enable_grad(), _SavedBytes(exclude) as one:
            value = field(t0, z)
        evaluation = one.total
        del value
        stages, step, inapplicable = 0, 0, []
        try:
            stepper = odeplug.make_stepper(solver, field, problem.layout)
        except Exception:  # noqa: BLE001 — a solver that runs its own loop (a bridge)
            stepper = None
            inapplicable += ["ACA", "GQAdjoint", "GaussAdjoint", "Adjoint(Seminorm)"]
        if stepper is not None:
            h = ((s[-1] - s[0]) / 8).to(s.dtype)
            before = field.nfe
            try:
                with torch.enable_grad(), _SavedBytes(exclude) as one_step:
                    taken = stepper.step_from(s[0], z, h)
                del taken
                step, stages = one_step.total, field.nfe - before
            except Exception:  # noqa: BLE001 — steps that need the ones before them (Adams)
                inapplicable.append("ACA")
            try:
                backward_solver(solver, odeplug.Adjoint(norm=odeplug.Seminorm()))
            except Exception:  # noqa: BLE001 — no norm option (a fixed-step solver)
                inapplicable.append("Adjoint(Seminorm)")
        with torch.no_grad():
            counted = odeplug.solve(problem, solver, odeplug.Direct()).stats
    if stages <= 0:  # from the forward's own count: evaluations per accepted step
        stages = max(1, round(counted["nfe"] / max(1, counted["steps_accepted"])))
        step = stages * (evaluation + _nbytes([y0]))
    measurements = Measurements(
        state_bytes=_nbytes([y0]), state_numel=y0.numel(),
        param_bytes=_nbytes(inputs), param_numel=sum(t.numel() for t in inputs),
        outputs=len(problem.ts), evaluation_bytes=evaluation, step_bytes=step, stages=stages,
        steps=int(counted["steps_accepted"]), nfe=int(counted["nfe"]), uses_rng=found.uses_rng,
        inapplicable=tuple(inapplicable),
    )
    return measurements, field.nfe + int(counted["nfe"])


# Measurements of the fields seen, by owner (the module, or the function), then by what else
# they depend on; a field no longer referenced is forgotten with it.
_SEEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_PER_OWNER = 8


def _cache_slot(problem: ODEProblem, solver: Solver) -> tuple[Any, Any] | None:
    f = problem.f
    owner, part = (f.__self__, f.__func__) if inspect.ismethod(f) else (f, None)
    try:
        ts, shapes = problem.ts, tuple(block.shape for block in problem.layout.blocks)
        # A module's train/eval mode decides whether f draws random numbers (Dropout).
        key = (part, getattr(owner, "training", None), shapes, problem.dtype, problem.device, solver,
               len(ts), float(ts[0].detach()), float(ts[-1].detach()), len(problem.params))
        hash(key)
        weakref.ref(owner)
    except TypeError:  # an unhashable solver, an owner that takes no weak reference
        return None
    return owner, key


_last_estimates: tuple[Any, Measurements, dict[str, Estimate]] | None = None


def _estimates(measured: Measurements) -> dict[str, Estimate]:
    """:func:`estimate`, remembered for the latest measurements (a training loop repeats them)."""
    global _last_estimates
    known = _last_estimates
    if known is not None and known[0] is estimate and known[1] == measured:
        return known[2]
    result = estimate(measured)
    _last_estimates = (estimate, measured, result)
    return result


def _measurements(problem: ODEProblem, solver: Solver) -> tuple[Measurements, int, Any]:
    slot = _cache_slot(problem, solver)
    if slot is not None:
        known = _SEEN.get(slot[0], {}).get(slot[1])
        if known is not None:
            return known, 0, slot
    measured, probe_nfe = measure(problem, solver)
    _remember(slot, measured)
    return measured, probe_nfe, slot


def _remember(slot: Any, measured: Measurements) -> None:
    if slot is None:
        return
    owner, key = slot
    entries = _SEEN.setdefault(owner, {})
    entries[key] = measured
    while len(entries) > _PER_OWNER:
        entries.pop(next(iter(entries)))


# --------------------------------------------------------------------------------------------
# The cost model


@final
@attrs.frozen
class Estimate:
    """One candidate's estimated peak memory (bytes, beyond what exists before the solve) and
    cost (in evaluations of f, forward and backward)."""

    memory: int
    cost: float


#: Headroom on the step count for memory: the count of the previous solve may grow by the next.
STEP_HEADROOM = 1.25
#: Buffers of a backward solve, in augmented states: the stages, y, the error estimate, the
#: dense output and scratch, fitted to measured peaks (docs/methods/auto.md).
BACKWARD_BUFFERS = 20
#: Backward steps GQAdjoint keeps the dense output of (a panel of its error-controlled nodes).
PANEL_STEPS = 16
#: Nodes whose parameter VJPs the quadrature rules take together (their ``vjp_batch`` default).
VJP_BATCH = 16
#: Bytes of node states held for one batched VJP, at most (QuadratureSum's cap).
BATCH_BYTES = 1 << 26


def estimate(m: Measurements) -> dict[str, Estimate]:
    """Each candidate's :class:`Estimate` (docs/methods/auto.md explains every term)."""
    S, P, K, A, G = m.state_bytes, m.param_bytes, m.outputs, m.evaluation_bytes, m.step_bytes
    n, N, e = max(1, m.steps), max(1, m.nfe), max(1, m.stages)
    # Evaluations whose graph Direct keeps (ACA recomputes them): the accepted steps' stages,
    # at most the forward's NFE (a first-same-as-last step reuses the previous step's last).
    kept = min(n * e, N)
    per_step = kept / n
    step_graph = G * per_step / e
    n_memory = math.ceil(STEP_HEADROOM * n)
    w = m.param_numel / max(1, m.param_numel + m.state_numel)  # share of a VJP that is parameter work
    n_back = n + max(0, K - 2)  # backward steps: the forward's, plus one per further output interval
    N_back = per_step * n_back + (K - 1)  # ... and one evaluation per reset of z at an output time
    outputs = K * S
    grads = 2 * P  # the parameters' gradients and one parameter-sized temporary of the backward

    def quadrature(nodes_per_step: int) -> tuple[int, float]:
        # Memory: the backward solve of [z, a_z], and one batch of nodes (states, and the graph
        # of the vectorised evaluation their parameter VJP is taken through).
        batch = max(1, min(VJP_BATCH, nodes_per_step * n_back, BATCH_BYTES // max(1, 2 * S)))
        # A node's share of the vectorised VJP: its activations and their gradients (2A).
        memory = BACKWARD_BUFFERS * 2 * S + batch * (2 * A + 3 * S) + outputs + grads + P
        # Cost: per backward evaluation f and a VJP for z only (a little cheaper than a full
        # one when f is mostly parameters), and one evaluation-sized VJP per node.
        return memory, N + N_back * (3 - w / 8) + nodes_per_step * n_back

    gq_memory, gq_cost = quadrature(1)
    gauss_memory, gauss_cost = quadrature(3)
    return {
        "Direct": Estimate(int(n_memory * step_graph + outputs + grads + A), N + 2 * kept),
        "ACA": Estimate(n_memory * (2 * S + 25) + G + A + outputs + grads, N + 3 * kept),
        "GQAdjoint": Estimate(gq_memory + PANEL_STEPS * 7 * 2 * S, gq_cost),
        "GaussAdjoint": Estimate(gauss_memory, gauss_cost),
        # The a_θ channel: every buffer of the backward solve is parameter-sized too.
        "Adjoint(Seminorm)": Estimate(BACKWARD_BUFFERS * (2 * S + P) + 2 * A + outputs + grads + P,
                                      N + N_back * (3 + 0.8 * w)),
    }


_CANDIDATE_NAMES = (
    ("Direct", ("Direct",), lambda d: d["Direct"]()),
    ("ACA", ("ACA",), lambda d: d["ACA"]()),
    ("GQAdjoint", ("GQAdjoint",), lambda d: d["GQAdjoint"]()),
    ("GaussAdjoint", ("GaussAdjoint",), lambda d: d["GaussAdjoint"]()),
    ("Adjoint(Seminorm)", ("Adjoint", "Seminorm"), lambda d: d["Adjoint"](norm=d["Seminorm"]())),
)
_candidates_found: dict[str, Callable[[], GradientRule]] | None = None


def _candidates() -> dict[str, Callable[[], GradientRule]]:
    """The candidate rules whose plugins loaded, in order of preference on a tie (looked up
    once: plugins load once per process, before the first solve)."""
    global _candidates_found
    if _candidates_found is not None:
        return _candidates_found

    def named(name: str) -> Any:
        try:
            return getattr(odeplug, name)
        except AttributeError:
            return None

    makers: dict[str, Callable[[], GradientRule]] = {}
    for label, names, make in _CANDIDATE_NAMES:
        found = {name: named(name) for name in names}
        if all(v is not None for v in found.values()):
            makers[label] = lambda make=make, found=found: make(found)
    _candidates_found = makers
    return makers


# --------------------------------------------------------------------------------------------
# The budget


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", "rb") as info:
            head = info.read(512)  # MemAvailable is the third line
        for line in head.split(b"\n"):
            if line.startswith(b"MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_memory(device: torch.device | str) -> int | None:
    """The memory a solve on ``device`` may still allocate, in bytes, or ``None`` if unknown.

    CUDA: ``torch.cuda.mem_get_info``'s free memory plus the blocks PyTorch's caching
    allocator holds unused (reserved but not allocated). Other devices: the machine's
    available RAM (psutil's ``virtual_memory().available`` if installed, else ``MemAvailable``
    of /proc/meminfo)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    try:
        import psutil  # noqa: PLC0415
    except ImportError:
        return _meminfo_available()
    return int(psutil.virtual_memory().available)


#: Seconds a reading of the free memory is reused for (a training step takes milliseconds; the
#: reading costs a system call or a /proc read, a few hundred microseconds under load).
FREE_MEMORY_TTL = 1.0
_free_readings: dict[Any, tuple[float, int | None, Any]] = {}


def _free_memory(device: torch.device) -> int | None:
    now = time.monotonic()
    known = _free_readings.get(device)
    if known is not None and now - known[0] < FREE_MEMORY_TTL and known[2] is available_memory:
        return known[1]
    free = available_memory(device)
    _free_readings[device] = (now, free, available_memory)
    return free


def _budget(rule: Auto, device: torch.device) -> tuple[float, str]:
    if rule.memory is not None:
        return float(rule.memory), "memory="
    free = _free_memory(device)
    if free is None:
        return math.inf, f"the free memory of {device.type} (unknown: no limit)"
    return float(free), f"the free memory of {device.type}"


def _size(nbytes: float) -> str:
    if not math.isfinite(nbytes):
        return "unlimited"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{int(nbytes)} B"


# --------------------------------------------------------------------------------------------
# Choosing and delegating


def choose(estimates: dict[str, Estimate], budget: float, source: str,
           explicit: bool) -> tuple[str, str]:
    """(label, reason): the cheapest candidate whose memory fits ``budget``. When none fits, an
    explicit budget raises :class:`odeplug.SolveError`; otherwise the least-memory candidate is
    taken, with a ``ResourceWarning``."""
    table = ", ".join(f"{label} {_size(e.memory)} / {e.cost:.0f} evaluations"
                      for label, e in estimates.items())
    fitting = [label for label, e in estimates.items() if e.memory <= budget]
    if not fitting:
        least = min(estimates, key=lambda label: estimates[label].memory)
        message = (f"no candidate's estimated memory fits the budget {_size(budget)} ({source}); "
                   f"estimated memory / cost: {table}.")
        if explicit:
            raise odeplug.SolveError(
                f"Auto: {message} Give a budget of at least {_size(estimates[least].memory)} "
                f"(Auto(memory={estimates[least].memory})), or a rule with less memory such as "
                "ACA(max_checkpoints=...) explicitly."
            )
        warnings.warn(f"Auto: {message} Running the least-memory rule, {least}.", ResourceWarning,
                      stacklevel=4)
        return least, f"{least}: the least memory; {message}"
    best = min(fitting, key=lambda label: estimates[label].cost)  # first of equals: preference order
    faster = [label for label in estimates if label not in fitting
              and estimates[label].cost < estimates[best].cost]
    reason = (f"{best}: the lowest estimated cost ({estimates[best].cost:.0f} evaluations of f) of "
              f"the rules whose estimated memory fits the budget {_size(budget)} ({source})")
    if faster:
        reason += "; ruled out by memory: " + ", ".join(
            f"{label} ({_size(estimates[label].memory)})" for label in faster)
    return best, reason + f". Estimated memory / cost: {table}."


def _first_order_only(grad: torch.Tensor) -> None:
    """A hook on the outputs of a rule that could give second derivatives: Auto promises first
    derivatives whichever rule it picks, so that what works does not depend on the budget.
    (Autograd runs hooks with grad mode on exactly when ``create_graph=True``.)"""
    if torch.is_grad_enabled():
        raise odeplug.UnsupportedCombinationError(
            "Auto cannot give second derivatives (backward with create_graph=True): whether "
            "the rule it picks can depends on the memory budget. Use Direct() or ACA() "
            "explicitly, which compute them exactly."
        )


def _refuse_randomness() -> None:
    raise odeplug.UnsupportedCombinationError(
        "Auto: f draws random numbers (Dropout in train mode, noise sampled inside f), and only "
        "some of the rules Auto picks from can differentiate that (the backsolve rules "
        "re-evaluate f at other points). Use ACA() (replays the random numbers) or Direct() "
        "explicitly, or make f deterministic (model.eval())."
    )


def solve_auto(problem: ODEProblem, solver: Solver, rule: Auto, **options: Any) -> Solution:
    odeplug.reject_options("solve(ODEProblem, Solver, Auto)", options)
    makers = _candidates()
    if not torch.is_grad_enabled():
        label = "Direct" if "Direct" in makers else next(iter(makers))
        solution = odeplug.solve(problem, solver, makers[label]())
        solution.stats.update(auto_rule=label, auto_probe_nfe=0, auto_budget=None, auto_estimates={},
                              auto_reason=f"{label}: grad mode is off, so no backward will run and "
                                          "the plain forward is the cheapest.")
        return solution
    measured, probe_nfe, slot = _measurements(problem, solver)
    if measured.uses_rng:
        _refuse_randomness()
    estimates = {label: e for label, e in _estimates(measured).items()
                 if label in makers and label not in measured.inapplicable}
    budget, source = _budget(rule, problem.device)
    label, reason = choose(estimates, budget, source, explicit=rule.memory is not None)
    if measured.inapplicable:
        reason += (f" Not applicable with {type(solver).__name__}: "
                   f"{', '.join(measured.inapplicable)}.")
    solution = odeplug.solve(problem, solver, makers[label]())
    if label in ("Direct", "ACA"):  # rules that would give second derivatives: refuse them
        for y in solution.ys if isinstance(solution.ys, tuple) else (solution.ys,):
            if y.requires_grad:
                y.register_hook(_first_order_only)
    stats = solution.stats
    stats.update(
        auto_rule=label, auto_reason=reason, auto_budget=None if math.isinf(budget) else int(budget),
        auto_estimates={k: {"memory": e.memory, "cost": e.cost, "fits": e.memory <= budget}
                        for k, e in estimates.items()},
        auto_probe_nfe=probe_nfe,
    )
    # The next solve of this field decides from this one's forward counts.
    if isinstance(stats.get("steps_accepted"), int) and isinstance(stats.get("nfe"), int):
        _remember(slot, attrs.evolve(measured, steps=stats["steps_accepted"], nfe=stats["nfe"]))
    return solution

