"""Hypothesis strategies for :class:`odeplug.Layout` and the flat scaled errors a norm receives.

A solver hands a :class:`odeplug.Norm` one flat vector and the layout naming its blocks. The
layouts a norm meets in practice are drawn here, each with the block names and roles odeplug
itself uses:

- :func:`state_layouts`: a plain tensor state, one block ``y`` (``Layout.of(y0)``);
- :func:`tuple_state_layouts`: a tuple state, one block ``y[i]`` per tensor;
- :func:`adjoint_layouts`: the adjoint's augmented state — ``z`` and ``a_z`` (per tuple element
  when the state is a tuple) as ``state`` blocks, then ``a_θ[i]`` and ``a_t`` as ``integral``
  blocks (odeplug/_adjoint_system.py);
- :func:`mixed_role_layouts`: any names and roles in any order (integral blocks in the middle, or
  only integral blocks), which no built-in produces but a norm must still accept;
- :func:`layouts`: any of these.

:func:`scaled_errors` draws a flat vector matching a layout, in float32 or float64, with
magnitudes spread log-uniformly over 10⁻⁶…10³ (and exact zeros): the range of ``err / (atol +
rtol·|y|)`` in a solve, kept where squares neither overflow nor underflow float32, so that a
sum-of-squares norm is exact to round-off on every draw.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from .._layout import Block, Layout

__all__ = [
    "FLOAT_DTYPES", "float_dtypes", "block_shapes", "state_layouts", "tuple_state_layouts",
    "adjoint_layouts", "mixed_role_layouts", "layouts", "integral_mask", "signed_magnitudes",
    "scaled_errors",
    "layouts_and_errors",
]

FLOAT_DTYPES = (torch.float32, torch.float64)

SMALLEST_MAGNITUDE_EXPONENT = -6
LARGEST_MAGNITUDE_EXPONENT = 3


def float_dtypes() -> st.SearchStrategy[torch.dtype]:
    """float32 or float64: the dtypes a solve runs in."""
    return st.sampled_from(FLOAT_DTYPES)


def block_shapes(max_dims: int = 2, max_side: int = 3) -> st.SearchStrategy[tuple[int, ...]]:
    """The shape of one block: ``()`` (a scalar) up to ``max_dims`` sides of 1…``max_side``.
    Sides are never 0: an empty state has no error to measure."""
    return st.lists(st.integers(1, max_side), min_size=0, max_size=max_dims).map(tuple)


def state_layouts() -> st.SearchStrategy[Layout]:
    """The layout of a plain tensor state: ``Layout.of(y0)``, one block named ``y``."""
    return block_shapes().map(lambda shape: Layout.of(torch.empty(shape)))


def tuple_state_layouts(min_parts: int = 2, max_parts: int = 3) -> st.SearchStrategy[Layout]:
    """The layout of a tuple state: ``Layout.of((y0_0, y0_1, …))``, blocks ``y[0]``, ``y[1]``, …"""
    return st.lists(block_shapes(), min_size=min_parts, max_size=max_parts).map(
        lambda shapes: Layout.of(tuple(torch.empty(shape) for shape in shapes))
    )


@st.composite
def adjoint_layouts(draw: st.DrawFn, max_parameters: int = 2) -> Layout:
    """The adjoint's augmented state [z, a_z, a_θ, a_t] for a plain or tuple state: z and a_z
    are ``state`` blocks of the state's shapes, a_θ (one block per parameter tensor, possibly
    none) and a_t (when time gradients are asked for) are ``integral`` blocks."""
    state = draw(st.one_of(state_layouts(), tuple_state_layouts()))
    # Names as odeplug's adjoint system gives them: "z" for a plain state, "z[i]" for a tuple.
    suffixes = [block.name[1:] for block in state.blocks]
    blocks = [Block("z" + s, b.shape) for s, b in zip(suffixes, state.blocks)]
    blocks += [Block("a_z" + s, b.shape) for s, b in zip(suffixes, state.blocks)]
    parameter_shapes = draw(st.lists(block_shapes(), max_size=max_parameters))
    blocks += [Block(f"a_θ[{i}]", shape, role="integral") for i, shape in enumerate(parameter_shapes)]
    if draw(st.booleans()):
        blocks.append(Block("a_t", (1,), role="integral"))
    return Layout(tuple(blocks))


@st.composite
def mixed_role_layouts(draw: st.DrawFn, max_blocks: int = 4) -> Layout:
    """1…``max_blocks`` blocks named ``b0``, ``b1``, …, each ``state`` or ``integral`` at random
    (integral blocks between state blocks, or no state block at all)."""
    count = draw(st.integers(1, max_blocks))
    roles = draw(st.lists(st.sampled_from(["state", "integral"]), min_size=count, max_size=count))
    return Layout(tuple(Block(f"b{i}", draw(block_shapes()), role) for i, role in enumerate(roles)))


def layouts() -> st.SearchStrategy[Layout]:
    """Any layout a norm may be given: plain, tuple, adjoint or mixed-role."""
    return st.one_of(state_layouts(), tuple_state_layouts(), adjoint_layouts(), mixed_role_layouts())


def integral_mask(layout: Layout) -> torch.Tensor:
    """For each flat element, whether its block has ``role="integral"`` (computed from the
    blocks here, not with the layout's own helpers, so a check does not trust what it checks)."""
    return torch.cat([torch.full((block.size,), block.role == "integral") for block in layout.blocks])


def signed_magnitudes() -> st.SearchStrategy[float]:
    """0, or ±10^e with e uniform in [−6, 3]: one scaled error, or a factor to scale errors by."""
    magnitude = st.one_of(
        st.just(0.0),
        st.floats(SMALLEST_MAGNITUDE_EXPONENT, LARGEST_MAGNITUDE_EXPONENT).map(lambda e: 10.0**e),
    )
    return st.tuples(st.sampled_from([-1.0, 1.0]), magnitude).map(lambda pair: pair[0] * pair[1])


def scaled_errors(layout: Layout, dtype: torch.dtype = torch.float64) -> st.SearchStrategy[torch.Tensor]:
    """A flat vector of ``layout.size`` scaled errors of ``dtype``: zeros and ±10⁻⁶…10³."""
    return st.lists(signed_magnitudes(), min_size=layout.size, max_size=layout.size).map(
        lambda values: torch.tensor(values, dtype=dtype)
    )


@st.composite
def layouts_and_errors(
    draw: st.DrawFn,
    count: int = 1,
    layout: st.SearchStrategy[Layout] | None = None,
    dtype: st.SearchStrategy[torch.dtype] | None = None,
) -> tuple:
    """``(layout, x_1, …, x_count)``: a layout and ``count`` scaled-error vectors for it, all of
    one dtype (drawn from ``layout`` and ``dtype``, by default :func:`layouts` and
    :func:`float_dtypes`)."""
    drawn_layout = draw(layout if layout is not None else layouts())
    drawn_dtype = draw(dtype if dtype is not None else float_dtypes())
    return (drawn_layout, *[draw(scaled_errors(drawn_layout, drawn_dtype)) for _ in range(count)])
