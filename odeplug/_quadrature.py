"""Quadrature rules mapped from [-1, 1] onto an interval, cached per rule, size, dtype and device."""

from __future__ import annotations

import functools

import torch

from ._nouns import Quadrature

__all__ = ["scaled_quadrature"]


@functools.lru_cache(maxsize=2048)
def _cast(rule: Quadrature, n: int, dtype: torch.dtype, device: torch.device):
    from ._verbs import quadrature

    nodes, weights = quadrature(rule, n)
    return nodes.to(dtype=dtype, device=device), weights.to(dtype=dtype, device=device)


def scaled_quadrature(rule: Quadrature, n: int, a: float, b: float, dtype: torch.dtype,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights of the n-point ``rule`` for ∫_a^b (signed: b < a allowed):
    x = (a + b)/2 + (b − a)/2 · ξ, w = (b − a)/2 · ω for the rule's (ξ, ω) on [-1, 1]."""
    nodes, weights = _cast(rule, n, dtype, device)
    half = (b - a) / 2
    return (a + b) / 2 + half * nodes, half * weights
