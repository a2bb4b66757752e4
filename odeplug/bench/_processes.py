"""``odeplug bench TASK --processes N``: a task's training step, data-parallel over N processes.

Each of N processes (gloo on this machine's CPU, ``--threads`` intra-op threads each, default 1)
trains every rule's model on its share of the task's batch with PyTorch's
``DistributedDataParallel``, the rules taking turns step by step as in the one-process tasks
(round 0 an untimed warm-up). A step's time is the slowest process's (the processes start each
step together, after a barrier, and DDP's gradient all-reduce makes them wait for each other
anyway). The same steps run first in this process, on the full batch, without DDP, with the same
thread count: that is T₁. Rows report both and

    speedup = T₁ / T_N,   efficiency = T₁ / (N · T_N)

(strong scaling: the fixed batch spread over N processes; 1 is perfect, equivalently the
throughput of N processes over N times one process's). Medians over the timed steps; ``step_s``
is T_N with its min and max.

A task takes part by registering a *step builder* under its name with
:func:`data_parallel_task` and calling :func:`run_data_parallel` when ``options.processes > 1``.
A builder ``build(rule, width, options, rank, world)`` returns a zero-argument training step
(returning the process's loss, weighted so that the losses' mean over processes is the full
batch's loss). The builder is pickled by reference into the processes, so it must be a
module-level function of an importable module. :func:`shard`, :class:`SolveModule` and
:func:`distributed` are the pieces a builder needs.
"""

from __future__ import annotations

import os
import pathlib
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import attrs
import torch

from . import BenchOptions, interleaved, spread

__all__ = ["SolveModule", "check_processes", "data_parallel_task", "data_parallel_tasks", "distributed",
           "run_data_parallel", "shard"]

StepBuilder = Callable[[Any, int, BenchOptions, int, int], Callable[[], float]]
_BUILDERS: dict[str, StepBuilder] = {}


def data_parallel_task(name: str) -> Callable[[StepBuilder], StepBuilder]:
    """Register ``build`` as task ``name``'s data-parallel training step (see the module doc)."""

    def decorate(build: StepBuilder) -> StepBuilder:
        _BUILDERS[name] = build
        return build

    return decorate


def data_parallel_tasks() -> list[str]:
    """The tasks that run with ``--processes N``."""
    return sorted(_BUILDERS)


def check_processes(task: str, processes: int, device: str) -> None:
    """ValueError, one line naming ``--processes`` and the fix, unless task ``task`` can run on
    ``processes`` processes here (the task list is complete once ``odeplug.bench.tasks()`` ran)."""
    if processes == 1:
        return
    if task not in _BUILDERS:
        raise ValueError(f"--processes {processes}: the {task} task runs in one process; "
                         f"--processes applies to {', '.join(data_parallel_tasks())}")
    if device != "cpu":
        raise ValueError(f"--processes {processes}: data-parallel runs use gloo on the CPU; "
                         f"drop --device {device}")
    cores = os.cpu_count() or 1
    if processes > cores:
        raise ValueError(f"--processes {processes}: this machine has {cores} CPU core(s); use "
                         f"--processes {cores} or fewer (more processes than cores time the "
                         "operating system's scheduler, not the training)")


def shard(count: int, rank: int, world: int) -> tuple[slice, float]:
    """Process ``rank``'s rows of a batch of ``count`` (contiguous, sizes differing by at most
    one) and the weight of its mean loss: DDP averages gradients over processes, so a process
    with ``n`` rows scales its mean by ``n · world / count`` to make that average the gradient
    of the full batch's mean."""
    if count < world:
        raise ValueError(f"a batch of {count} rows cannot be shared by {world} processes")
    start, stop = rank * count // world, (rank + 1) * count // world
    return slice(start, stop), (stop - start) * world / count


class SolveModule(torch.nn.Module):
    """The module DDP wraps: its forward is the whole solve (DDP prepares its gradient hooks in
    its own forward, so the rule's backward must come from inside it). Returns the outputs
    ``ys``, or ``readout(ys[-1])`` when a read-out is given."""

    def __init__(self, field: torch.nn.Module, rule: Any, solver: Any, ts: torch.Tensor,
                 readout: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.field, self.readout = field, readout
        self.rule, self.solver, self.ts = rule, solver, ts

    def forward(self, y0: torch.Tensor) -> torch.Tensor:
        import odeplug

        ys = odeplug.solve(odeplug.ODEProblem(self.field, y0, self.ts), self.solver, self.rule).ys
        return ys if self.readout is None else self.readout(ys[-1])


def distributed(module: torch.nn.Module, world: int) -> torch.nn.Module:
    """``module`` wrapped in DDP when there are several processes; as it is for one."""
    if world == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module)


@attrs.frozen
class _Run:
    """What every process needs: the task's step builder (pickled by reference: the process
    imports its module), the rules (pickled), the widths, the options."""

    build: StepBuilder
    rules: dict[str, Any]
    widths: tuple[int, ...]
    epochs: int
    threads: int
    options: BenchOptions


def _train(run: _Run, rank: int, world: int) -> dict[tuple[int, str], dict[str, Any]]:
    """Every (width, rule): its step times (the slowest process's) and final loss (the full
    batch's), the rules taking turns step by step, round 0 untimed when there are two or more."""
    import torch.distributed as dist

    build = run.build
    results = {}
    for width in run.widths:
        steps = {name: build(rule, width, run.options, rank, world) for name, rule in run.rules.items()}
        times: dict[str, list[float]] = {name: [] for name in steps}
        losses = dict.fromkeys(steps, float("nan"))
        for epoch, name in interleaved(list(steps), run.epochs):
            if world > 1:
                dist.barrier()
            start = time.perf_counter()
            losses[name] = steps[name]()
            elapsed = time.perf_counter() - start
            if run.epochs == 1 or epoch > 0:
                times[name].append(elapsed)
        names = list(steps)
        if world > 1:  # the slowest process's time of each step; the full batch's loss
            slowest = torch.tensor([times[n] for n in names], dtype=torch.float64)
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
            mean_loss = torch.tensor([losses[n] for n in names], dtype=torch.float64)
            dist.all_reduce(mean_loss)
            times = {n: slowest[i].tolist() for i, n in enumerate(names)}
            losses = {n: float(mean_loss[i]) / world for i, n in enumerate(names)}
        for name in names:
            results[(width, name)] = {"times": times[name], "loss": losses[name]}
    return results


def _process(rank: int, world: int, store: str, run: _Run, out: str) -> None:
    """One process of the group (``torch.multiprocessing.spawn`` calls it with its rank)."""
    import torch.distributed as dist

    torch.set_num_threads(run.threads)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        results = _train(run, rank, world)
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def run_data_parallel(task: str, options: BenchOptions, rules: dict[str, Any], widths: tuple[int, ...],
                      epochs: int) -> list[dict[str, Any]]:
    """Task ``task``'s rows for ``options.processes`` processes: per width and rule, T_N
    (``step_s``, median with min and max), T₁ (``step_s_1proc``, this process on the full
    batch), ``speedup`` = T₁ / T_N, ``efficiency`` = T₁ / (N · T_N), the final loss of the N
    processes' training, and the thread count of each process."""
    import torch.multiprocessing as mp

    processes = options.processes
    check_processes(task, processes, options.device)
    threads = options.threads or 1
    run = _Run(_BUILDERS[task], dict(rules), tuple(widths), epochs, threads, attrs.evolve(options, progress=False))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        single = _train(run, 0, 1)
    finally:
        torch.set_num_threads(previous)
    with tempfile.TemporaryDirectory(prefix="odeplug-bench-") as folder:
        store, out = str(pathlib.Path(folder) / "store"), str(pathlib.Path(folder) / "results.pt")
        mp.spawn(_process, args=(processes, store, run, out), nprocs=processes, join=True)
        parallel = torch.load(out)
    rows = []
    for (width, name), got in parallel.items():
        t1 = statistics.median(single[(width, name)]["times"])
        tn = statistics.median(got["times"])
        rows.append({"rule": name, "width": width, "processes": processes, "threads_per_process": threads,
                     **spread("step_s", got["times"]), "step_s_1proc": t1, "speedup": t1 / tn,
                     "efficiency": t1 / (processes * tn), "final_loss": got["loss"]})
    return rows


# -- the sines task's step (the one-process task is odeplug.bench._sines) ------------------------


@data_parallel_task("sines")
def sines_step(rule: Any, width: int, options: BenchOptions, rank: int, world: int) -> Callable[[], float]:
    """One Adam step of the sines task on this process's trajectories (of the 15)."""
    import odeplug

    from ._sines import SecondOrderField, SinesData, learning_rate

    data = SinesData(seed=options.seed)
    torch.manual_seed(options.seed)  # the model every rule and process starts from
    module = SolveModule(SecondOrderField(width), rule, odeplug.Dopri5(rtol=options.tol or 1e-3,
                                                                        atol=options.tol or 1e-3), data.ts)
    net = distributed(module, world)
    optimiser = torch.optim.Adam(net.parameters(), lr=learning_rate(width))
    rows, weight = shard(data.y0.shape[0], rank, world)
    y0, x = data.y0[rows], data.x[:, rows]

    def step() -> float:
        optimiser.zero_grad()
        loss = torch.mean((net(y0)[..., 0] - x) ** 2) * weight
        loss.backward()
        optimiser.step()
        return float(loss.detach())

    return step
