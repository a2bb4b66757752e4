"""Augmentation: solve on a state with extra channels (Dupont, Doucet & Teh, "Augmented Neural
ODEs", NeurIPS 2019).

The flow of an ODE is a homeomorphism, so a neural ODE on R^d cannot represent maps that change
the topology of its input (two nested annuli cannot be pulled apart in the plane). Appending p
channels that start at zero and letting f act on R^{d+p} lifts that restriction and, in
practice, gives smoother fields that take fewer function evaluations.
"""

from __future__ import annotations

import abc

import attrs
import torch

from odeplug import InvalidArgumentError, InvalidOptionError, configuration
from odeplug._nouns import Noun  # the abstract root (not re-exported by the core)

__all__ = ["Augmentation", "ZeroAugmentation"]


class Augmentation(Noun):
    """Abstract: how :func:`odeplug.augment` widens a problem's state, and how to undo it.

    1. Subclass ``Augmentation`` with a :func:`odeplug.configuration` class; 2. register
    :func:`odeplug.augment` for ``(ProblemType, YourAugmentation)``; 3. implement ``project``.
    """

    __slots__ = ()

    @abc.abstractmethod
    def project(self, ys: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Outputs of the augmented problem (a tensor or a tuple) back in the original channels."""


def _positive_int(instance, attribute, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidOptionError(
            f"ZeroAugmentation: dims must be a positive int (the number p of zero channels "
            f"appended), got {value!r}."
        )


@configuration
class ZeroAugmentation(Augmentation):
    """ANODE's augmentation: append ``dims`` = p zero channels to the last dimension of the state
    (of every tensor of a tuple state), y0 ↦ [y0, 0]; f is then called on, and must return, the
    widened state: dz/dt = f(t, z), z = [y, a] ∈ R^{d+p}, a(t0) = 0 (Dupont et al. 2019, eq. 5).

    Applies to :class:`odeplug.ODEProblem` (the same f on the widened state),
    :class:`SecondOrderProblem` (positions and velocities widened, the second-order ANODE of
    Norcliffe et al. 2020), :class:`CDEProblem` (the hidden state widened) and
    :class:`odeplug.SDEProblem` (drift and diffusion on the widened state; with
    ``noise="general"`` the Brownian motion keeps its shape). ``project(ys)`` drops the added
    channels of a solution's outputs.
    """

    positional_options = ("dims",)

    dims: int = attrs.field(validator=_positive_int)

    def pad(self, y: torch.Tensor) -> torch.Tensor:
        """[y, 0]: ``dims`` zeros appended to the last dimension (differentiable in y)."""
        if y.ndim == 0:
            raise InvalidArgumentError(
                "augment(..., ZeroAugmentation): the state must have a channel dimension to append to, got a "
                "0-d tensor; use y0.reshape(1)."
            )
        return torch.cat([y, y.new_zeros((*y.shape[:-1], self.dims))], dim=-1)

    def project(self, ys: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The outputs without the ``dims`` appended channels (of every tensor of a tuple)."""
        if isinstance(ys, tuple):
            return tuple(y[..., : -self.dims] for y in ys)
        return ys[..., : -self.dims]
