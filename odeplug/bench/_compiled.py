"""The compiled path against eager PyTorch and against compiled JAX, on the sines task.

Every row trains the sines model of :mod:`odeplug.bench._sines` (W = 200 by default, float32,
Dopri5 at tol 1e-3, 50 output times) from the same initial weights:

- each selected rule (default Direct and ACA) eagerly and with ``Dopri5(compile=True)``;
- diffrax (JAX, ``equinox.filter_jit`` of the whole training step: ``diffeqsolve`` with
  ``Dopri5``, a ``PIDController`` at the same tolerances, ``SaveAt(ts=...)``, its default
  ``RecursiveCheckpointAdjoint``, which gives the discretise-then-optimise gradients of Direct
  and ACA, and optax's Adam at the same learning rate) when jax, diffrax, equinox and optax are
  installed; the row says why when they are not.

The variants take turns step by step (:func:`odeplug.bench.interleaved`); ``step_s`` is the
median with min and max over the timed steps, ``vs_diffrax`` the median of the per-round ratios
to diffrax's step. The first step of each variant is a warm-up: for the compiled variants and
diffrax it is the compilation, reported as ``first_step_s``, never folded into ``step_s``.
JAX runs with as many intra-op threads as torch (XLA's flags are set before jax is first
imported; ``jax_threads`` says what was set, ``None`` when jax was imported earlier).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import torch

from . import BenchOptions, gradient_rules, interleaved, spread, task
from ._progress import progress
from ._sines import SecondOrderField, SinesData, SinesTrainer, learning_rate

__all__ = ["DiffraxSinesTrainer", "diffrax_missing"]

_DEFAULT_RULES = ("Direct", "ACA")
_DIFFRAX = "diffrax"


def diffrax_missing() -> str | None:
    """Why the diffrax row cannot run (a missing package), or ``None`` when it can."""
    import importlib.util

    for name in ("jax", "diffrax", "equinox", "optax"):
        if importlib.util.find_spec(name) is None:
            return f"{name} is not installed (pip install jax diffrax equinox optax)"
    return None


def _import_jax(threads: int) -> int | None:
    """Import jax with XLA limited to ``threads`` intra-op threads, when jax is not imported yet
    (XLA reads its flags once); the thread count set, or ``None`` if it was too late."""
    if "jax" in sys.modules:
        return None
    flags = os.environ.get("XLA_FLAGS", "")
    if "intra_op_parallelism_threads" not in flags:
        eigen = "true" if threads > 1 else "false"
        os.environ["XLA_FLAGS"] = (f"{flags} --xla_cpu_multi_thread_eigen={eigen} "
                                   f"intra_op_parallelism_threads={threads}").strip()
    import jax

    jax.config.update("jax_platform_name", "cpu")
    return threads


class DiffraxSinesTrainer:
    """The sines training step in diffrax, from a :class:`SecondOrderField`'s weights: the
    interface of :class:`SinesTrainer` (``step``, ``result``), so the two interleave."""

    def __init__(self, model: SecondOrderField, data: SinesData, tol: float, width: int) -> None:
        import diffrax
        import equinox
        import jax
        import jax.numpy as jnp
        import optax

        self._jax = jax
        weights = [jnp.asarray(p.detach().cpu().numpy()) for p in model.acceleration.parameters()]
        y0, ts, x = (jnp.asarray(v.detach().cpu().numpy()) for v in (data.y0, data.ts, data.x))
        optimiser = optax.adam(learning_rate(width))

        def field(t: Any, y: Any, params: Any) -> Any:
            w1, b1, w2, b2, w3, b3 = params
            hidden = jax.nn.softplus(jax.nn.softplus(y @ w1.T + b1) @ w2.T + b2)
            return jnp.concatenate([y[:, 1:], hidden @ w3.T + b3], axis=-1)

        def loss(params: Any) -> Any:
            solution = diffrax.diffeqsolve(
                diffrax.ODETerm(field), diffrax.Dopri5(), ts[0], ts[-1], None, y0, args=params,
                saveat=diffrax.SaveAt(ts=ts), stepsize_controller=diffrax.PIDController(rtol=tol, atol=tol),
            )
            return jnp.mean((solution.ys[..., 0] - x) ** 2), solution.stats["num_steps"]

        @equinox.filter_jit
        def train_step(params: Any, state: Any) -> Any:
            (value, steps), grads = jax.value_and_grad(loss, has_aux=True)(params)
            updates, state = optimiser.update(grads, state)
            return optax.apply_updates(params, updates), state, value, steps

        self._train_step = train_step
        self._params, self._state = weights, optimiser.init(weights)
        self.step_times: list[float] = []
        self.first_step_s: float | None = None
        self.loss = float("nan")
        self.steps = 0

    def step(self, timed: bool = True) -> None:
        start = time.perf_counter()
        params, state, value, steps = self._train_step(self._params, self._state)
        self._jax.block_until_ready(params)
        elapsed = time.perf_counter() - start
        self._params, self._state = params, state
        if timed:
            self.step_times.append(elapsed)
        elif self.first_step_s is None:
            self.first_step_s = elapsed
        self.loss, self.steps = float(value), int(steps)

    def result(self) -> dict[str, Any]:
        return {**spread("step_s", self.step_times), "steps": self.steps, "final_loss": self.loss}


@task("compiled", "sines with and without compile=True, beside diffrax (JAX) when installed",
      columns={"first_step_s": "the first (untimed) step, s: the compilation for compiled rows and diffrax",
               "vs_diffrax": "step time / diffrax's, median (min–max) of the per-round ratios",
               "jax_threads": "XLA intra-op threads set for the diffrax row",
               "steps": "diffrax's steps (accepted and rejected) in its last training step"})
def compiled(options: BenchOptions) -> list[dict[str, Any]]:
    widths = options.widths or (200,)
    epochs = max(options.epochs or 15, 2)
    tol = options.tol or 1e-3
    rules = gradient_rules(options.rules or _DEFAULT_RULES)
    missing = diffrax_missing() if options.device == "cpu" else "diffrax runs on the CPU here"
    jax_threads = None if missing else _import_jax(torch.get_num_threads())
    rows = []
    variants = len(rules) * 2 + (missing is None)
    with progress(total=len(widths) * variants * epochs, enabled=options.progress, desc="compiled") as bar:
        for width in widths:
            data = SinesData(seed=options.seed, device=options.device)
            trainers: dict[str, Any] = {}
            for name, rule in rules.items():
                for label, compile_ in ((name, False), (f"{name} compiled", True)):
                    trainers[label] = SinesTrainer(rule, width, tol, options.seed, device=options.device,
                                                   data=data, compile=compile_)
            if missing is None:
                torch.manual_seed(options.seed)  # the weights every SinesTrainer starts from
                trainers[_DIFFRAX] = DiffraxSinesTrainer(SecondOrderField(width), data, tol, width)
            for epoch, label in interleaved(list(trainers), epochs):
                trainers[label].step(timed=epoch > 0)
                bar.update(1)
            for label, trainer in trainers.items():
                row = {"rule": label, "width": width, **trainer.result(),
                       "first_step_s": trainer.first_step_s}
                if missing is None:
                    reference = trainers[_DIFFRAX].step_times
                    row.update(spread("vs_diffrax", (a / b for a, b in zip(trainer.step_times, reference))))
                    row["jax_threads"] = jax_threads
                rows.append(row)
            if missing is not None:
                rows.append({"rule": _DIFFRAX, "width": width, "skipped": missing})
    return rows

