"""The layout of a flat state: which named blocks it holds, where, and what role each plays.

Solvers see one flat 1-D buffer (flattened once, before the loop). A :class:`Layout` remembers
how it was assembled, so a norm can look at blocks separately (``MixedNorm``), or skip blocks
that are integrals only and never feed back into the dynamics (``Seminorm``, after Kidger, Chen
& Lyons, ICML 2021, sec. 2.2), without knowing how the state was flattened.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import attrs
import torch

from ._nouns import final

__all__ = ["Block", "Layout"]

Role = Literal["state", "integral"]


@final
@attrs.frozen
class Block:
    """One named block of a flat state.

    ``role="integral"`` marks a channel that is only integrated alongside the state and never
    feeds back into the vector field (the adjoint's a_θ and a_t).
    """

    name: str
    shape: tuple[int, ...]
    role: Role = "state"

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@final
@attrs.frozen
class Layout:
    """An ordered tuple of blocks laid end to end in a flat buffer.

    ``Layout.of(y0)`` builds the layout of a user's state (one block per tensor). Cached derived
    index tensors make block reductions tensor-only in the hot loop.
    """

    blocks: tuple[Block, ...]
    _cache: dict = attrs.field(factory=dict, eq=False, repr=False, hash=False)

    @staticmethod
    def of(y0: torch.Tensor | Sequence[torch.Tensor]) -> Layout:
        if isinstance(y0, torch.Tensor):
            return Layout((Block("y", tuple(y0.shape)),))
        return Layout(tuple(Block(f"y[{i}]", tuple(t.shape)) for i, t in enumerate(y0)))

    @property
    def size(self) -> int:
        return sum(block.size for block in self.blocks)

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(block.size for block in self.blocks)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(block.name for block in self.blocks)

    def offset(self, name: str) -> slice:
        """The slice of the flat buffer holding block ``name``."""
        start = 0
        for block in self.blocks:
            if block.name == name:
                return slice(start, start + block.size)
            start += block.size
        raise KeyError(f"layout has no block {name!r}; blocks are {self.names}")

    @property
    def has_integral_blocks(self) -> bool:
        return any(block.role == "integral" for block in self.blocks)

    def state_part(self) -> tuple[Layout, slice | torch.Tensor]:
        """The sub-layout of the ``state`` blocks and how to pick them from the flat buffer.

        Returns a slice when they are contiguous (the usual case: integral channels come last),
        otherwise an index tensor.
        """
        key = ("state_part",)
        if key not in self._cache:
            kept = tuple(b for b in self.blocks if b.role == "state")
            starts, stop, picks = 0, 0, []
            for block in self.blocks:
                if block.role == "state":
                    picks.append((starts, starts + block.size))
                starts += block.size
            contiguous = all(picks[i][1] == picks[i + 1][0] for i in range(len(picks) - 1))
            if contiguous and picks:
                stop = picks[-1][1]
                selector: slice | torch.Tensor = slice(picks[0][0], stop)
            else:
                selector = torch.cat([torch.arange(a, b) for a, b in picks]) if picks else (
                    torch.zeros(0, dtype=torch.long)
                )
            self._cache[key] = (Layout(kept), selector)
        return self._cache[key]

    def block_ids(self, device: torch.device) -> torch.Tensor:
        """For each flat element, the index of its block (for segment reductions)."""
        key = ("block_ids", device)
        if key not in self._cache:
            ids = torch.repeat_interleave(
                torch.arange(len(self.blocks)), torch.tensor(self.sizes, dtype=torch.long)
            )
            self._cache[key] = ids.to(device)
        return self._cache[key]

    def flatten(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """Concatenate one tensor per block into a flat buffer."""
        return torch.cat([p.reshape(-1) for p in parts])

    def unflatten(self, flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Split a flat buffer (or a stack of them, leading dims kept) into block-shaped views."""
        lead = flat.shape[:-1]
        return tuple(
            part.reshape((*lead, *block.shape))
            for part, block in zip(flat.split(self.sizes, dim=-1), self.blocks)
        )
