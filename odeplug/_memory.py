"""Peak bytes of live tensors, measured on any device (CPU included).

``torch.cuda.max_memory_allocated`` exists only on CUDA. :class:`LiveTensorBytes` is a
``TorchDispatchMode`` that sees every tensor an operator creates while it is active, adds its
storage size when it appears and subtracts it when the storage is freed (weakref finalizer), and
keeps the peak. Tensors created before the context (parameters, inputs) are not counted, so the
figure is the extra memory a computation needs: the autograd graph's saved tensors, checkpoints,
solver buffers. Views share storage and are counted once.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

__all__ = ["LiveTensorBytes"]


class LiveTensorBytes(TorchDispatchMode):
    """``with LiveTensorBytes() as m: ...``; then ``m.peak`` (bytes) and ``m.current``."""

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _track(self, value: Any, inputs: set[int]) -> Any:
        if isinstance(value, torch.Tensor) and not isinstance(value, torch.nn.Parameter):
            storage = value.untyped_storage()
            key = storage.data_ptr()
            # A view of an input (a parameter's transpose, say) allocates nothing.
            if key and key not in self._seen and key not in inputs:
                size = storage.nbytes()
                self._seen.add(key)
                self.current += size
                self.peak = max(self.peak, self.current)
                weakref.finalize(storage, self._release, key, size)
        return value

    def _release(self, key: int, size: int) -> None:
        self._seen.discard(key)
        self.current -= size

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs: set[int] = set()
        tree_map(lambda a: inputs.add(a.untyped_storage().data_ptr()) if isinstance(a, torch.Tensor) else None,
                 (args, kwargs or {}))
        tree_map(lambda v: self._track(v, inputs), out)
        return out
