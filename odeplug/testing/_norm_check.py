"""``check_norm``: what every :class:`odeplug.Norm` promises a step-size controller.

A solver accepts a step when ‖err / (atol + rtol·|y|)‖ ≤ 1. For that test to mean "the error is
within tolerance", ‖·‖ must be a seminorm on the flat scaled error x, for every :class:`Layout`
the solver can hand it:

- it accepts every layout (plain, tuple and adjoint states, integral blocks anywhere) and
  returns a finite 0-d floating tensor, resolved and called as a solve does
  (:func:`odeplug.resolve_norm`);
- it reads only x (a norm that reads past its input sees NaN guards placed around it) and
  leaves x unchanged;
- ‖x‖ ≥ 0 and ‖0‖ = 0;
- ‖c·x‖ = |c|·‖x‖ (absolute homogeneity: scaling both tolerances by 1/c scales the verdict);
- ‖x + y‖ ≤ ‖x‖ + ‖y‖ (subadditivity), tried on independent, disjointly supported and parallel
  pairs — disjoint supports are where p < 1 "norms" such as (Σ √|xᵢ|)² break it.

Definiteness (‖x‖ = 0 only for x = 0) is not required: a seminorm may ignore part of the state.

A norm may read the blocks and their roles as it likes (``MixedNorm`` takes one RMS per block);
the check cannot know what a block-aware norm should compute, so it checks only the promises
above. A norm that *declares* itself the seminorm of a base norm — ``seminorm_of=base``, the
default for the built-in ``Seminorm`` (its ``base``) — is further checked against the definition
of Kidger, Chen & Lyons, "Hey, that's not an ODE" (ICML 2021, sec. 2.2):

- blind to integral blocks: changing the ``role="integral"`` blocks (the adjoint's a_θ, a_t)
  leaves it unchanged, exactly;
- at most its base: ‖x‖ ≤ base(x) wherever the base is monotone (zeroing the integral blocks
  does not raise it) and unchanged by zero blocks (dropping them does not raise it either) —
  true of max-type bases (MaxNorm, MixedNorm). An averaging base (RMSNorm) takes its mean over
  fewer elements once the integral blocks are dropped, and then the seminorm can exceed it;
- its base on the state blocks: ‖x‖ = base(x restricted to the state blocks, as a layout of its
  own), and 0 when there is no state block.

Tolerances are relative, 8·(N + 1)·ε for N elements of dtype ε: the worst-case rounding of a
sum of N terms (Higham, *Accuracy and Stability*, §4.2), with room for a square root and for
rounding c·x.
"""

from __future__ import annotations

import math

import torch
from hypothesis import settings as Settings
from hypothesis import strategies as st

from .._layout import Layout
from .._norm import resolve_norm
from .._nouns import Norm
from .._plugins import exported
from ._layouts import (
    adjoint_layouts,
    integral_mask,
    layouts_and_errors,
    mixed_role_layouts,
    signed_magnitudes,
)
from ._properties import Property, enforce, hypothesis_property

__all__ = ["norm_properties", "check_norm"]

ACCEPTS_EVERY_LAYOUT = "accepts every layout, returning a finite 0-d tensor"
READS_ONLY_ITS_INPUT = "reads only its input and leaves it unchanged"
NON_NEGATIVE = "non-negative, and zero at zero"
HOMOGENEOUS = "absolutely homogeneous"
SUBADDITIVE = "subadditive"
BLIND_TO_INTEGRAL_BLOCKS = "blind to integral blocks"
BASE_ON_STATE_BLOCKS = "its base on the state blocks"
AT_MOST_ITS_BASE = "at most its base, where the base is monotone"

# NaN guards either side of the input in "reads only its input": a read past either end poisons
# any reduction, so the result is NaN instead of a plausible number.
GUARD = 3


def relative_tolerance(dtype: torch.dtype, size: int) -> float:
    """8·(size + 1)·ε: rounding of a sum of ``size`` terms, a square root, and of c·x."""
    return 8 * (size + 1) * torch.finfo(dtype).eps


def norm_properties(norm: Norm, *, seminorm_of: Norm | None = None,
                    settings: Settings | None = None) -> list[Property]:
    """The properties :func:`check_norm` runs on ``norm``, in order (see the module docstring).

    ``seminorm_of=base`` declares ``norm`` to be ``base`` on the state blocks only and adds the
    three seminorm properties; for the built-in ``Seminorm`` it defaults to its ``base``.
    """
    subject = repr(norm)
    base = seminorm_of if seminorm_of is not None else _builtin_seminorm_base(norm)

    def prop(name, strategy, holds):  # noqa: ANN001, ANN202
        return hypothesis_property(subject, name, strategy, holds, settings)

    properties = [
        prop(ACCEPTS_EVERY_LAYOUT, layouts_and_errors(), lambda case: _accepts(norm, *case)),
        prop(READS_ONLY_ITS_INPUT, layouts_and_errors(), lambda case: _reads_only_input(norm, *case)),
        prop(NON_NEGATIVE, layouts_and_errors(), lambda case: _non_negative(norm, *case)),
        prop(HOMOGENEOUS, st.tuples(layouts_and_errors(), signed_magnitudes()),
             lambda case: _homogeneous(norm, *case[0], case[1])),
        prop(SUBADDITIVE, _pairs(), lambda case: _subadditive(norm, *case)),
    ]
    if base is not None:
        with_integral_blocks = st.one_of(adjoint_layouts(), mixed_role_layouts())
        properties += [
            prop(BLIND_TO_INTEGRAL_BLOCKS, layouts_and_errors(count=2, layout=with_integral_blocks),
                 lambda case: _blind_to_integral_blocks(norm, *case)),
            # Before the definition, which implies it for a monotone base: a seminorm larger
            # than its base is then named for that.
            prop(AT_MOST_ITS_BASE, layouts_and_errors(layout=with_integral_blocks),
                 lambda case: _at_most_its_base(norm, base, *case)),
            prop(BASE_ON_STATE_BLOCKS, layouts_and_errors(),
                 lambda case: _base_on_state_blocks(norm, base, *case)),
        ]
    return properties


def check_norm(norm: Norm, *, seminorm_of: Norm | None = None,
               settings: Settings | None = None) -> None:
    """Raise :class:`CheckFailed` naming the first property ``norm`` breaks, with the shrunk
    counterexample ``(layout, x, …)``; return if it keeps them all (see the module docstring)."""
    enforce(norm_properties(norm, seminorm_of=seminorm_of, settings=settings))


def _builtin_seminorm_base(norm: Norm) -> Norm | None:
    seminorm = exported().get("Seminorm")
    return norm.base if isinstance(seminorm, type) and isinstance(norm, seminorm) else None


def _measure(norm: Norm, x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """‖x‖ as a solve gets it: resolved once for (norm, x, layout), then called. Any error, or a
    result that is not a 0-d floating tensor on x's device, fails the property being checked."""
    try:
        value = resolve_norm(norm, x, layout)(x)
    except Exception as exc:  # noqa: BLE001 - a crash on an allowed input is the failure
        raise AssertionError(f"norm({type(norm).__name__}, x, layout) raised "
                             f"{type(exc).__name__}: {exc}") from exc
    assert isinstance(value, torch.Tensor) and value.ndim == 0, (
        f"returned {value!r}; a norm returns a 0-d tensor")
    assert torch.is_floating_point(value), f"returned a tensor of dtype {value.dtype}"
    assert value.device == x.device, f"returned a tensor on {value.device}, x is on {x.device}"
    return value


def _accepts(norm: Norm, layout: Layout, x: torch.Tensor) -> None:
    value = _measure(norm, x, layout)
    assert torch.isfinite(value), f"‖x‖ = {float(value)} for finite x"


def _reads_only_input(norm: Norm, layout: Layout, x: torch.Tensor) -> None:
    guarded = torch.full((x.numel() + 2 * GUARD,), math.nan, dtype=x.dtype)
    guarded[GUARD:-GUARD] = x
    original = guarded.clone()
    inside = guarded[GUARD:-GUARD]  # x again, as a view with NaN either side in its storage
    value = float(_measure(norm, inside, layout))
    assert torch.equal(guarded[GUARD:-GUARD], original[GUARD:-GUARD]), "the norm changed its input"
    assert guarded[:GUARD].isnan().all() and guarded[-GUARD:].isnan().all(), (
        "the norm wrote outside its input")
    expected = float(_measure(norm, x.clone(), layout))
    assert math.isclose(value, expected, rel_tol=relative_tolerance(x.dtype, x.numel()), abs_tol=0.0), (
        f"‖x‖ = {expected} for x alone but {value} for x inside a larger buffer: the norm reads "
        "memory outside x (use x and the layout's sizes only)")


def _non_negative(norm: Norm, layout: Layout, x: torch.Tensor) -> None:
    value = float(_measure(norm, x, layout))
    assert value >= 0, f"‖x‖ = {value} < 0"
    zero = float(_measure(norm, torch.zeros_like(x), layout))
    assert zero == 0, f"‖0‖ = {zero}"


def _homogeneous(norm: Norm, layout: Layout, x: torch.Tensor, c: float) -> None:
    nx = float(_measure(norm, x, layout))
    ncx = float(_measure(norm, c * x, layout))
    expected = abs(c) * nx
    tolerance = relative_tolerance(x.dtype, x.numel()) * expected
    assert abs(ncx - expected) <= tolerance, (
        f"‖c·x‖ = {ncx!r} but |c|·‖x‖ = {expected!r} (c = {c!r}, ‖x‖ = {nx!r})")


@st.composite
def _pairs(draw: st.DrawFn) -> tuple[Layout, torch.Tensor, torch.Tensor]:
    """(layout, x, y): y independent of x, or x and y on complementary elements, or y = c·x with
    c > 0 (where the inequality is an equality)."""
    layout, x, y = draw(layouts_and_errors(count=2))
    kind = draw(st.sampled_from(["independent", "disjoint", "parallel"]))
    if kind == "disjoint":
        mask = torch.tensor(draw(st.lists(st.booleans(), min_size=x.numel(), max_size=x.numel())),
                            dtype=torch.bool)
        x, y = torch.where(mask, x, 0), torch.where(mask, 0, y)
    elif kind == "parallel":
        y = x * draw(st.floats(1e-3, 1e3))
    return layout, x, y


def _subadditive(norm: Norm, layout: Layout, x: torch.Tensor, y: torch.Tensor) -> None:
    nx, ny = float(_measure(norm, x, layout)), float(_measure(norm, y, layout))
    nxy = float(_measure(norm, x + y, layout))
    bound = (nx + ny) * (1 + relative_tolerance(x.dtype, x.numel()))
    assert nxy <= bound, f"‖x + y‖ = {nxy!r} > ‖x‖ + ‖y‖ = {nx!r} + {ny!r}"


def _blind_to_integral_blocks(norm: Norm, layout: Layout, x: torch.Tensor, other: torch.Tensor) -> None:
    changed = torch.where(integral_mask(layout), other, x)
    before, after = float(_measure(norm, x, layout)), float(_measure(norm, changed, layout))
    assert before == after, (
        f"‖x‖ = {before!r} changes to {after!r} when only the integral blocks change "
        f"(to {changed.tolist()}): a seminorm must not read them")


def _state_part(layout: Layout, x: torch.Tensor) -> tuple[Layout, torch.Tensor]:
    kept = Layout(tuple(block for block in layout.blocks if block.role == "state"))
    return kept, x[~integral_mask(layout)]


def _base_on_state_blocks(norm: Norm, base: Norm, layout: Layout, x: torch.Tensor) -> None:
    value = float(_measure(norm, x, layout))
    kept, state = _state_part(layout, x)
    if not kept.blocks:
        assert value == 0, f"‖x‖ = {value!r} with no state block (nothing feeds back: 0)"
        return
    expected = float(_measure(base, state, kept))
    assert math.isclose(value, expected, rel_tol=relative_tolerance(x.dtype, x.numel()), abs_tol=0.0), (
        f"‖x‖ = {value!r} but the base on the state blocks {kept.names} gives {expected!r}")


def _at_most_its_base(norm: Norm, base: Norm, layout: Layout, x: torch.Tensor) -> None:
    kept, state = _state_part(layout, x)
    if not kept.blocks:
        return  # then the seminorm is 0 ≤ base(x) by "non-negative" and the definition
    rtol = relative_tolerance(x.dtype, x.numel())
    whole = float(_measure(base, x, layout))
    zeroed = float(_measure(base, torch.where(integral_mask(layout), 0, x), layout))
    dropped = float(_measure(base, state, kept))
    base_is_monotone_here = zeroed <= whole * (1 + rtol) and dropped <= zeroed * (1 + rtol)
    if base_is_monotone_here:
        value = float(_measure(norm, x, layout))
        assert value <= whole * (1 + rtol), f"‖x‖ = {value!r} > base(x) = {whole!r}"
