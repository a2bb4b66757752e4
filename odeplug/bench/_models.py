"""The networks of the bench tasks (after Norcliffe & Deisenroth's experiments)."""

from __future__ import annotations

import torch

__all__ = ["softplus_mlp"]


def softplus_mlp(inputs: int, width: int, outputs: int) -> torch.nn.Sequential:
    """inputs → width → width → outputs, softplus between: the papers' two-hidden-layer MLP."""
    return torch.nn.Sequential(
        torch.nn.Linear(inputs, width), torch.nn.Softplus(),
        torch.nn.Linear(width, width), torch.nn.Softplus(),
        torch.nn.Linear(width, outputs),
    )
