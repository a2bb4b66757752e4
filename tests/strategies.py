"""Hypothesis strategies shared by the tests (after attrs' tests/strategies.py)."""

from __future__ import annotations

import torch
from hypothesis import strategies as st


class Linear(torch.nn.Module):
    """dz/dt = a z: the analytic problem (L = z(T)² has closed-form gradients in z0, a, t0, T)."""

    def __init__(self, a: float = 0.2) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(a, dtype=torch.float64))

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.a * z


class MLPField(torch.nn.Module):
    """A random smooth vector field f(t, y) = W2 tanh(W1 y + b1 + c t) (+ time dependence)."""

    def __init__(self, dim: int, width: int, seed: int, dtype: torch.dtype = torch.float64,
                 scale: float = 1.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.nn.Parameter(torch.randn(width, dim, generator=g, dtype=dtype) * scale / dim**0.5)
        self.b1 = torch.nn.Parameter(torch.randn(width, generator=g, dtype=dtype) * 0.5)
        self.c = torch.nn.Parameter(torch.randn(width, generator=g, dtype=dtype) * 0.5)
        self.w2 = torch.nn.Parameter(torch.randn(dim, width, generator=g, dtype=dtype) * scale / width**0.5)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.tanh(y @ self.w1.T + self.b1 + t * self.c) @ self.w2.T


class TupleMLPField(torch.nn.Module):
    """The same field on a state split as a tuple (a, b)."""

    def __init__(self, dims: tuple[int, int], width: int, seed: int) -> None:
        super().__init__()
        self.dims = dims
        self.inner = MLPField(sum(dims), width, seed)

    def forward(self, t: torch.Tensor, y: tuple[torch.Tensor, torch.Tensor]):
        out = self.inner(t, torch.cat(y, dim=-1))
        return tuple(out.split(self.dims, dim=-1))


@st.composite
def time_grids(draw, min_points: int = 2, max_points: int = 6, allow_decreasing: bool = True):
    """Strictly monotone float64 output times, spans 0.3–3, increasing or decreasing."""
    n = draw(st.integers(min_points, max_points))
    t0 = draw(st.floats(-1.0, 1.0))
    gaps = draw(st.lists(st.floats(0.05, 1.0), min_size=n - 1, max_size=n - 1))
    ts = torch.tensor([t0] + [t0 + sum(gaps[: i + 1]) for i in range(n - 1)], dtype=torch.float64)
    if allow_decreasing and draw(st.booleans()):
        ts = ts.flip(0)
    return ts


@st.composite
def mlp_problems(draw, tuple_state: bool | None = None):
    """(field, y0, ts): a random MLP field, a batch of initial states, a time grid."""
    seed = draw(st.integers(0, 10_000))
    batch = draw(st.integers(1, 3))
    width = draw(st.integers(4, 16))
    ts = draw(time_grids())
    use_tuple = draw(st.booleans()) if tuple_state is None else tuple_state
    g = torch.Generator().manual_seed(seed + 1)
    if use_tuple:
        dims = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        field = TupleMLPField(dims, width, seed)
        y0 = tuple(torch.randn(batch, d, generator=g, dtype=torch.float64) for d in dims)
    else:
        dim = draw(st.integers(1, 4))
        field = MLPField(dim, width, seed)
        y0 = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    return field, y0, ts
