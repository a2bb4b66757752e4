"""The backward kit: everything a gradient rule with its own backward needs, in one place.

A rule is a short policy over these pieces (as diffrax's adjoints are over ``diffeqsolve``, and
SciMLSensitivity's over ``adjoint_common.jl``):

- :func:`differentiate` — the autograd shell: finds the tensors f depends on, runs the rule's
  forward and backward, catches in-place changes, refuses what the rule cannot do (randomness in
  f, second derivatives) with an error naming a rule that can, and fills ``Solution.stats``.
- :class:`Tape` — one solve as the rule sees it; :class:`Needs`, :class:`Gradients`.
- :func:`forward_outputs` — the plain graph-free forward.
- :class:`AdjointSystem` — the augmented system [z, a_z, a_θ…, a_t] over named blocks.
- :func:`backsolve` — the backward solve with a reset of z and a jump of a_z at every output
  time, and hooks for rules that read it as it goes (quadrature).
- :class:`BacksolveRule` — the abstract rule with the backward options ``solver``, ``norm``,
  ``rtol``, ``atol``; :func:`backward_solver` derives the backward solver from them.
- :func:`field_inputs` — what f depends on, found by watching one evaluation;
  :class:`RNGState` — the random number generators' state, for rules that replay f's draws.

See docs/plugins.md for a complete rule built on the kit.
"""

from ._adjoint_system import AdjointSystem
from ._backsolve import Backsolve, BacksolveRule, backsolve, backward_solver
from ._differentiate import Gradients, Needs, Tape, differentiate, forward_outputs
from ._inputs import FieldInputs, RNGState, field_inputs

__all__ = [
    "differentiate", "Tape", "Needs", "Gradients", "forward_outputs",
    "AdjointSystem", "backsolve", "Backsolve", "BacksolveRule", "backward_solver",
    "field_inputs", "FieldInputs", "RNGState",
]
