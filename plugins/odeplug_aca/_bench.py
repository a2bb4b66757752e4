"""Bench task ``aca``: peak memory and time per training step of ACA against the Direct rule (and
the Adjoint rule, when its plugin is loaded) on the sines task, side by side in one process.

Settings: hidden widths W = 200 and 1000 (``--widths``) at rtol = atol = 1e-5 (``--tol``) and at
the tight tolerance 1e-7, on the sines task's 15 trajectories (a batch where the parameters
dominate memory); and the smallest width at 1e-7 on a batch of 256 trajectories (where the
activations dominate). Every rule trains its own identically initialised model (same seed, same
Adam learning rate).

Time per training step (solve, loss, backward, Adam step), in rounds
(:func:`odeplug.bench.interleaved`, ``--epochs`` rounds after one untimed warm-up step each):
each round every rule takes one step and the Direct rule's model is solved once more without a
graph (``forward``), in an order rotated from round to round. Each timed figure is the median
with its min and max over the rounds (:func:`odeplug.bench.spread`):

- ``step_s``: the step's time;
- ``time_vs_Direct``: the step's time ÷ the Direct rule's step in the same round;
- ``vs_floor`` (ACA): ACA's step ÷ its **floor** in the same round, the Direct rule's step plus
  the graph-free forward solve. ACA is a graph-free forward solve and a backward that
  recomputes every accepted step with a graph and pulls the adjoint back through it: at best
  the Direct rule's work plus the extra forward. The row ``floor`` gives the floor's time
  (``step_s``) and its ratio to the Direct rule's step (``time_vs_Direct``).

Memory of the gradient computation (solve + loss + backward; the optimiser step is left out, its
state being the same for every rule), measured on the warm-up step, two figures:

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

``peak_vs_Direct`` and ``held_vs_Direct`` divide them by the Direct rule's; ``grads_floor`` is two
parameter-sized tensors ÷ the Direct rule's peak: autograd returns each weight's gradient as one
tensor and computes every contribution to it (one per evaluation of the field) as another before
adding it in, so any rule that backpropagates through the field holds at least these two.

The memory step is a separate, untimed step (the meters cost time); the timed steps run without them.
"""

from __future__ import annotations

import gc
import time
from typing import Any

import torch

import odeplug
from odeplug._memory import AllocatedBytes
from odeplug.bench import BenchOptions, gradient_rules, interleaved, spread, task
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
        """A solve of this model without a graph (what ACA adds to the Direct rule's work: its
        forward), timed into :attr:`forward_times`."""
        _sync(self.device)
        start = time.perf_counter()
        with torch.no_grad():
            odeplug.solve(odeplug.ODEProblem(self.model, self.data.y0, self.data.ts), self.solver,
                          odeplug.Direct())
        _sync(self.device)
        self.forward_times.append(time.perf_counter() - start)

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


#: The sines task's batch (15 trajectories: the parameters dominate memory) and the batch of the
#: setting where the activations dominate.
BATCH = 15
WIDE_BATCH = 256

_FORWARD = "forward"  # the name of the graph-free forward solve in the rounds


def _settings(widths: tuple[int, ...], tol: float) -> list[tuple[int, float, int]]:
    """(width, tol, batch): every width at ``tol`` and at 1e-7 on the sines batch, then the
    smallest width at 1e-7 on the wide batch."""
    settings = [(w, tol, BATCH) for w in widths]
    settings += [(w, 1e-7, BATCH) for w in widths if tol != 1e-7]
    settings.append((min(widths), 1e-7, WIDE_BATCH))
    return settings


@task("aca", "ACA vs Direct (and Adjoint): peak memory and step time against ACA's floor, sines",
      columns={
          "rule": "gradient rule measured; floor: the Direct rule's step plus a graph-free "
                  "forward solve, the least ACA can take",
          "checkpoints": "states ACA saved in the forward solve",
          "peak_vs_Direct": "peak_MB ÷ the Direct rule's",
          "held_vs_Direct": "held_MB ÷ the Direct rule's",
          "grads_floor": "two parameter-sized tensors ÷ the Direct rule's peak: the least any "
                         "rule backpropagating through the field holds",
          "time_vs_Direct": "step_s ÷ the Direct rule's, same round",
          "vs_floor": "ACA's step_s ÷ its floor's, same round",
      })
def aca_bench(options: BenchOptions) -> list[dict[str, Any]]:
    widths = options.widths or (200, 1000)
    tol = options.tol or 1e-5
    epochs = options.epochs or 12
    settings = _settings(widths, tol)
    rules = _rules() if options.rules is None else list(gradient_rules(options.rules).items())
    rows: list[dict[str, Any]] = []
    with progress(total=len(settings) * (len(rules) + 1) * (epochs + 1), enabled=options.progress,
                  desc="aca") as bar:
        for width, setting_tol, batch in settings:
            data = SinesData(trajectories=batch, seed=options.seed, device=options.device)
            trainers = {name: _Trainer(rule, width, setting_tol, data, options.seed, options.device)
                        for name, rule in rules}
            reference = trainers.get("Direct")
            memory = {}
            for name, trainer in trainers.items():  # first step: memory (also the warm-up)
                memory[name] = trainer.memory_step()
                bar.update(1)
            names = list(trainers)
            if reference is not None:  # the floor's forward solve, timed in the same rounds
                reference.timed_forward()
                reference.forward_times.clear()
                names.append(_FORWARD)
            bar.update(1)
            for _, name in interleaved(names, epochs):
                if name == _FORWARD:
                    reference.timed_forward()
                else:
                    trainers[name].timed_step()
                bar.update(1)
            setting = {"width": width, "batch": batch, "tol": setting_tol}
            floor_times = None
            if reference is not None:
                floor_times = [d + f for d, f in zip(reference.times, reference.forward_times)]
            for name, trainer in trainers.items():
                row = {
                    "rule": name, **setting,
                    "steps": trainer.stats.get("steps_accepted"),
                    "nfe_fwd": trainer.stats.get("nfe"),
                    "nfe_bwd": trainer.stats.get("nfe_backward"),
                    "checkpoints": trainer.stats.get("checkpoints"),
                    "peak_MB": memory[name][0] / 2**20,
                    "held_MB": memory[name][1] / 2**20,
                }
                if reference is not None:
                    row["peak_vs_Direct"] = memory[name][0] / memory["Direct"][0]
                    row["held_vs_Direct"] = memory[name][1] / memory["Direct"][1]
                    # Two parameter-sized tensors (the gradient being summed, one contribution):
                    # the least any rule that backpropagates through the field holds.
                    param_bytes = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
                    row["grads_floor"] = (2 * param_bytes / memory["Direct"][0]
                                          if trainer is not reference else None)
                row.update(spread("step_s", trainer.times))
                if reference is not None:
                    row.update(spread("time_vs_Direct",
                                      (mine / theirs for mine, theirs in zip(trainer.times, reference.times))))
                    row["vs_floor"] = None
                    if isinstance(trainer.rule, ACA):
                        row.update(spread("vs_floor",
                                          (mine / floor for mine, floor in zip(trainer.times, floor_times))))
                row["final_loss"] = trainer.loss
                rows.append(row)
            if reference is not None:
                rows.append({
                    "rule": "floor", **setting,
                    **spread("step_s", floor_times),
                    **spread("time_vs_Direct", (f / d for f, d in zip(floor_times, reference.times))),
                })
    return rows
