"""Bench task ``aca``: peak memory and time per training step of ACA against the Direct rule (and
the Adjoint rule, when its plugin is loaded) on the sines task, side by side in one process.

Settings (issue 5): hidden widths W = 200 and 1000 at rtol = atol = 1e-5, and the tight tolerance
1e-7 at both widths. Every rule trains its own identically initialised model (same seed, same
Adam learning rate); the rules take turns step by step, so they see the same machine state.

Memory of the gradient computation (solve + loss + backward; the optimiser step is left out, its
state being the same for every rule), two figures:

- ``peak_MB``: the peak of the memory allocated by it, measured by
  :class:`odeplug._memory.AllocatedBytes`: on CUDA ``torch.cuda.max_memory_allocated()`` minus
  the allocation at the start; on CPU (PyTorch keeps no allocator statistics there) the peak of
  the running sum of the CPU allocator's allocations and frees as PyTorch's profiler records
  them. It includes the parameter gradients and autograd's buffers for summing them: two or
  three parameter-sized tensors in any backward over a weight used several times.
- ``held_MB``: the peak bytes held *for backward*: the distinct storages of the tensors autograd
  saves (the Direct rule's graph; ACA's checkpoints, saved with ``save_for_backward``, and the
  one-step graph of its backward; the Adjoint rule's saved outputs and VJP graphs), counted
  through ``torch.autograd.graph.saved_tensors_hooks`` while autograd holds them; parameters
  excluded. This is what the gradient rules differ in.

Time per training step (solve, loss, backward, Adam step): ``step_s`` is the median over the
timed steps, ``time_vs_Direct`` the median of the ratios of steps taken back to back.

Floors, beside each rule compared with Direct (what no implementation of the method can beat on
this machine and model, measured in the same run):

- ``grads_floor``: two parameter-sized tensors ÷ the Direct rule's peak. Autograd returns each
  weight's gradient as one tensor and computes every contribution to it (one per evaluation
  of the field) as another before adding it in; so any rule that backpropagates through the
  field holds at least these two.
- ``direct_plus_fwd``: (Direct's step + one forward solve without a graph) ÷ Direct's step.
- ``redo_floor``: (Direct's step + ``nfe_backward`` evaluations of the field with a graph) ÷
  Direct's step. A rule that recomputes the steps instead of storing their graphs re-evaluates
  the field at every stage of every step once more (and does everything Direct does).

The memory step is a separate, untimed step (the meters cost time); the timed steps run without them.
"""

from __future__ import annotations

import gc
import statistics
import time
from typing import Any

import torch

import odeplug
from odeplug._memory import AllocatedBytes
from odeplug.bench import BenchOptions, gradient_rules, task
from odeplug.bench._progress import progress
from odeplug.bench._sines import SecondOrderField, SinesData, learning_rate

from ._aca import ACA

__all__ = ["SavedTensorBytes", "aca_bench"]


class _Held:
    __slots__ = ("counter", "key", "tensor")

    def __init__(self, counter: SavedTensorBytes, key: int, nbytes: int, tensor: torch.Tensor) -> None:
        self.counter, self.key, self.tensor = counter, key, tensor
        counter._acquire(key, nbytes)

    def __del__(self) -> None:
        self.counter._release(self.key)


class SavedTensorBytes:
    """Peak bytes of the distinct storages autograd holds for backward while active
    (``with SavedTensorBytes(exclude=model.parameters()) as m``; then ``m.peak``)."""

    def __init__(self, exclude: Any = ()) -> None:
        self._exclude = {t.untyped_storage().data_ptr() for t in exclude}
        self._refs: dict[int, list[int]] = {}
        self.current = 0
        self.peak = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _acquire(self, key: int, nbytes: int) -> None:
        entry = self._refs.get(key)
        if entry is None:
            self._refs[key] = [1, nbytes]
            self.current += nbytes
            self.peak = max(self.peak, self.current)
        else:
            entry[0] += 1

    def _release(self, key: int) -> None:
        entry = self._refs[key]
        entry[0] -= 1
        if entry[0] == 0:
            del self._refs[key]
            self.current -= entry[1]

    def _pack(self, tensor: torch.Tensor) -> Any:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self._exclude or key == 0:
            return tensor
        return _Held(self, key, storage.nbytes(), tensor)

    @staticmethod
    def _unpack(packed: Any) -> torch.Tensor:
        return packed.tensor if isinstance(packed, _Held) else packed

    def __enter__(self) -> SavedTensorBytes:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)


class _Trainer:
    """One rule training its own model on the sines data."""

    def __init__(self, rule: Any, width: int, tol: float, data: SinesData, seed: int, device: str) -> None:
        torch.manual_seed(seed)
        self.rule = rule
        self.data = data
        self.model = SecondOrderField(width).to(device)
        self.optimiser = torch.optim.Adam(self.model.parameters(), lr=learning_rate(width))
        self.solver = odeplug.Dopri5(rtol=tol, atol=tol)
        self.device = device
        self.times: list[float] = []
        self.forward_times: list[float] = []
        self.eval_times: list[float] = []
        self.stats: dict[str, Any] = {}
        self.loss = float("nan")

    def gradient(self) -> None:
        self.optimiser.zero_grad()
        sol = odeplug.solve(odeplug.ODEProblem(self.model, self.data.y0, self.data.ts), self.solver,
                            self.rule)
        loss = torch.mean((sol.ys[..., 0] - self.data.x) ** 2)
        loss.backward()
        self.stats = dict(sol.stats)
        self.loss = float(loss.detach())

    def step(self) -> None:
        self.gradient()
        self.optimiser.step()

    def timed_step(self) -> None:
        _sync(self.device)
        start = time.perf_counter()
        self.step()
        _sync(self.device)
        self.times.append(time.perf_counter() - start)

    def timed_forward(self) -> None:
        """A solve without a graph (what ACA adds to the Direct rule's work: its forward)."""
        _sync(self.device)
        start = time.perf_counter()
        with torch.no_grad():
            odeplug.solve(odeplug.ODEProblem(self.model, self.data.y0, self.data.ts), self.solver,
                          odeplug.Direct())
        _sync(self.device)
        self.forward_times.append(time.perf_counter() - start)

    def timed_evaluation(self, repeats: int = 20) -> None:
        """One evaluation of the vector field with a graph (what ACA's backward must redo for
        every stage of every accepted step), averaged over ``repeats``."""
        t = torch.zeros((), device=self.data.y0.device)
        _sync(self.device)
        start = time.perf_counter()
        for _ in range(repeats):
            self.model(t, self.data.y0).sum()
        _sync(self.device)
        self.eval_times.append((time.perf_counter() - start) / repeats)

    def memory_step(self) -> tuple[int, int]:
        """(peak bytes allocated, peak bytes held for backward) of one gradient computation."""
        gc.collect()
        held = SavedTensorBytes(exclude=self.model.parameters())
        with AllocatedBytes(self.device) as meter, held:
            self.gradient()
        self.optimiser.step()
        gc.collect()
        return meter.peak, held.peak


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _rules() -> list[tuple[str, Any]]:
    rules = [("Direct", odeplug.Direct()), ("ACA", odeplug.ACA())]
    try:
        rules.append(("Adjoint", odeplug.Adjoint()))
    except AttributeError:  # the Adjoint plugin is not installed or not loaded
        pass
    return rules


@task("aca", "ACA vs Direct (and Adjoint): peak memory and time per training step on sines")
def aca_bench(options: BenchOptions) -> list[dict[str, Any]]:
    widths = options.widths or (200, 1000)
    tol = options.tol or 1e-5
    epochs = options.epochs or 4
    settings = [(w, tol) for w in widths] + [(w, 1e-7) for w in widths if tol != 1e-7]
    data = SinesData(seed=options.seed, device=options.device)
    rules = _rules() if options.rules is None else list(gradient_rules(options.rules).items())
    rows: list[dict[str, Any]] = []
    with progress(total=len(settings) * len(rules) * (epochs + 1), enabled=options.progress,
                  desc="aca") as bar:
        for width, setting_tol in settings:
            trainers = [(name, _Trainer(rule, width, setting_tol, data, options.seed, options.device))
                        for name, rule in rules]
            memory = {}
            for name, trainer in trainers:  # first step: memory (also the warm-up)
                memory[name] = trainer.memory_step()
                bar.update(1)
            reference = dict(trainers).get("Direct")
            for _ in range(epochs):
                for name, trainer in trainers:
                    trainer.timed_step()
                    bar.update(1)
                if reference is not None:
                    reference.timed_forward()
                    reference.timed_evaluation()
            for name, trainer in trainers:
                step_s = statistics.median(trainer.times)
                row = {
                    "rule": name, "width": width, "tol": setting_tol,
                    "steps": trainer.stats.get("steps_accepted"),
                    "nfe_fwd": trainer.stats.get("nfe"),
                    "nfe_bwd": trainer.stats.get("nfe_backward"),
                    "checkpoints": trainer.stats.get("checkpoints"),
                    "peak_MB": memory[name][0] / 2**20,
                    "held_MB": memory[name][1] / 2**20,
                    "step_s": step_s,
                }
                if reference is not None:
                    row["peak_vs_Direct"] = memory[name][0] / memory["Direct"][0]
                    row["held_vs_Direct"] = memory[name][1] / memory["Direct"][1]
                    direct_s = statistics.median(reference.times)
                    row["time_vs_Direct"] = statistics.median(
                        mine / theirs for mine, theirs in zip(trainer.times, reference.times)
                    )
                if reference is not None and trainer is not reference:
                    # The Direct rule's work plus one forward solve without a graph ...
                    if isinstance(trainer.rule, ACA):
                        forward_s = statistics.median(reference.forward_times)
                        row["direct_plus_fwd"] = 1 + forward_s / direct_s
                    # ... and plus re-evaluating the field, with a graph, as often as this rule's
                    # backward does: a floor for any rule that recomputes instead of storing.
                    # Two parameter-sized tensors (the gradient being summed, one contribution)
                    # are the least any rule that backpropagates through the field holds.
                    param_bytes = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
                    row["grads_floor"] = 2 * param_bytes / memory["Direct"][0]
                    redo = trainer.stats.get("nfe_backward")
                    if redo and isinstance(trainer.rule, ACA):
                        eval_s = statistics.median(reference.eval_times)
                        row["redo_floor"] = 1 + redo * eval_s / direct_s
                row["final_loss"] = trainer.loss
                rows.append(row)
    return rows
