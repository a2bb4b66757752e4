"""Bench task ``guide``: which rule when — time and memory of every gradient rule as the width
and the number of output times grow, on the sines task (docs/which-rule.md is made from it).

For each (width, output times) every registered rule trains its own copy of the same model
(:class:`SinesTrainer`, seeded alike), the rules taking turns step by step
(:func:`interleaved`); a first step per rule is an untimed warm-up, and one more step per rule is
run under :class:`odeplug._memory.AllocatedBytes` for its peak memory over what existed before
it (the graph, checkpoints, gradients). Each row: step time median (min–max), its ratio to the
fastest rule of the same setting, the peak, its ratio to Direct's, and the backward NFE.
"""

from __future__ import annotations

from typing import Any

from .._memory import AllocatedBytes
from . import BenchOptions, gradient_rules, interleaved, task
from ._progress import progress
from ._sines import SinesData, SinesTrainer

_OUTPUTS = (2, 50)


@task("guide", "which rule when: step time and peak memory of every rule as width and output "
      "count grow (sines)")
def guide(options: BenchOptions) -> list[dict[str, Any]]:
    rules = gradient_rules(options.rules)
    widths = options.widths or (50, 200, 1000)
    steps = max(options.epochs or 4, 2)
    tol = options.tol or 1e-3
    rows: list[dict[str, Any]] = []
    settings = [(w, k) for w in widths for k in _OUTPUTS]
    with progress(total=len(settings) * len(rules) * (steps + 1), enabled=options.progress,
                  desc="guide") as bar:
        for width, outputs in settings:
            data = SinesData(times=outputs, seed=options.seed, device=options.device)
            trainers = {label: SinesTrainer(rule, width, tol, options.seed, outputs, options.device, data)
                        for label, rule in rules.items()}
            for trainer in trainers.values():  # warm-up, untimed
                trainer.step(timed=False)
                bar.update(1)
            for _, label in interleaved(list(trainers), steps - 1):
                trainers[label].step()
                bar.update(1)
            peaks = {}
            for label, trainer in trainers.items():
                with AllocatedBytes(options.device) as meter:
                    trainer.step(timed=False)
                peaks[label] = meter.peak
                bar.update(1)
            results = {label: trainer.result() for label, trainer in trainers.items()}
            fastest = min(result["step_s"] for result in results.values())
            direct = peaks.get("Direct")
            for label, result in results.items():
                rows.append({
                    "rule": label, "width": width, "outputs": outputs,
                    "step_s": result["step_s"], "step_s_min": result["step_s_min"],
                    "step_s_max": result["step_s_max"],
                    "vs_fastest": result["step_s"] / fastest,
                    "peak_MB": peaks[label] / 2**20,
                    "vs_Direct_memory": None if not direct else peaks[label] / direct,
                    "nfe_backward": result["nfe_backward"],
                })
    return rows
