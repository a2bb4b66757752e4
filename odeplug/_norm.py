"""Resolving a :class:`Norm` once per solve, with its result checked once."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._dispatch import register, resolve
from ._errors import InvalidOptionError
from ._layout import Layout
from ._nouns import Norm

__all__ = ["resolve_norm"]


def resolve_norm(norm: Norm, like: torch.Tensor, layout: Layout) -> Callable[[torch.Tensor], torch.Tensor]:
    """The function x ↦ ‖x‖ a solve calls at every step, for errors like ``like`` with
    ``layout``: :func:`odeplug.bind_norm`, so every dispatch happens here, once per solve.

    It also evaluates the norm once on ``like`` and checks that it returns a 0-d tensor, so that
    a norm returning a Python float (which would make the step loop synchronise and break on
    devices) or a vector (which would make the accept/reject test ambiguous) fails here, naming
    the norm, and not deep inside a step."""
    from ._verbs import bind_norm as bind

    function = bind(norm, like, layout)
    with torch.no_grad():
        value = function(like.detach().abs())
    if not isinstance(value, torch.Tensor) or value.ndim != 0:
        what = (f"a {type(value).__name__}" if not isinstance(value, torch.Tensor)
                else f"a tensor of shape {tuple(value.shape)}")
        raise InvalidOptionError(
            f"norm({type(norm).__name__}, ...) returned {what}; a norm must return a 0-d tensor "
            "(e.g. x.abs().pow(2).mean().sqrt(), not float(...) or a per-element result)."
        )
    return function


@register
def bind_norm(norm: Norm, like: torch.Tensor, layout: Layout):
    from ._verbs import norm as norm_verb

    function = resolve(norm_verb, norm, like, layout)

    def bound(x: torch.Tensor) -> torch.Tensor:
        return function(norm, x, layout)

    return bound
