"""Peak bytes a computation allocates, on any device (CPU included), without changing it.

``torch.cuda.max_memory_allocated`` exists only on CUDA. On the CPU, :class:`AllocatedBytes`
replays the allocator's own record: PyTorch's profiler, with ``profile_memory=True``, logs every
allocation and free of the CPU allocator (bytes, signed, with a timestamp); the running sum of
those events in time order is the memory the computation holds, and its maximum is the peak.
Memory allocated before the context (parameters, inputs) is not counted, so the figure is the
extra memory a computation needs: the autograd graph, gradients, checkpoints, solver buffers.

Why not a ``TorchDispatchMode`` that watches tensors being created (the obvious meter): while any
Python dispatch mode is active, every tensor an operator returns gets a Python object, and the
autograd engine no longer sums a gradient's contributions in place (it only does so for a tensor
it holds the last reference to), so the meter itself adds a parameter-sized temporary to every
gradient sum and inflates the very peak it measures. The allocator's record changes nothing.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator

import torch

__all__ = ["AllocatedBytes"]


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence what the profiler's C++ side prints on start and stop (file descriptor 2)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (some embedded interpreters)
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class AllocatedBytes:
    """``with AllocatedBytes(device) as m: ...``; then ``m.peak`` and ``m.current`` (bytes).

    ``device`` is a string or :class:`torch.device`; CUDA devices use the caching allocator's
    statistics (``max_memory_allocated`` minus the allocation at entry), every other device the
    profiler's record of the CPU allocator. Not re-entrant: one meter at a time.
    """

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.peak = 0
        self.current = 0
        self._profile: Any = None
        self._base = 0

    def __enter__(self) -> AllocatedBytes:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        self._profile = torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
        )
        with _quiet_native_stderr():
            self._profile.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
            self.current = torch.cuda.memory_allocated(self.device) - self._base
            return
        with _quiet_native_stderr():
            self._profile.__exit__(*exc)
        events = [
            (event.start_ns(), event.nbytes())
            for event in self._profile.profiler.kineto_results.events()
            if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU
        ]
        events.sort(key=lambda event: event[0])
        current = peak = 0
        for _, nbytes in events:
            current += nbytes
            peak = max(peak, current)
        self.peak, self.current = peak, current
        self._profile = None
