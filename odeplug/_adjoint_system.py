"""The augmented adjoint system over named blocks (Chen, Rubanova, Bettencourt & Duvenaud,
NeurIPS 2018; Pontryagin's adjoint equations).

In user time t, with a_z(t_K) = dL/dy(t_K) and a_θ(t_K) = a_t(t_K) = 0::

    dz/dt   =  f(t, z)
    da_z/dt = −a_zᵀ ∂f/∂z
    da_θ/dt = −a_zᵀ ∂f/∂θ        (one block per tensor f depends on; integral: never feeds back)
    da_t/dt = −a_zᵀ ∂f/∂t        (integral: never feeds back)

solved from t_K back to t_0 gives a_z(t_0) = dL/dy0, a_θ(t_0) = dL/dθ. One evaluation is one
vector–Jacobian product of f. The blocks z, a_z are ``role="state"``; a_θ[i] and a_t are
``role="integral"``, so a :class:`Seminorm` leaves them out of the step-size control (Kidger,
Chen & Lyons, "Hey, that's not an ODE", ICML 2021). Quadrature adjoints carry z and a_z only
and integrate a_zᵀ ∂f/∂θ themselves (:meth:`AdjointSystem.parameter_vjp`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._layout import Block, Layout
from ._nouns import final
from ._problem import ODEProblem

__all__ = ["AdjointSystem"]


@final
class AdjointSystem:
    """The augmented vector field of one problem and the layout of its flat state.

    Args:
        problem: the forward problem (its flat field is f).
        inputs: the tensors f depends on whose gradients are integrated (``a_θ`` blocks);
            typically :attr:`odeplug.backward.Tape.inputs`.
        integrals: carry the a_θ (and a_t) channels; ``False`` for [z, a_z] only.
        time_gradients: carry a_t (only with ``integrals``).

    ``evaluations`` counts the evaluations of f made through this system (each one VJP).
    """

    __slots__ = ("f", "n", "inputs", "integrals", "time_gradients", "layout", "evaluations")

    def __init__(
        self,
        problem: ODEProblem,
        inputs: Sequence[torch.Tensor],
        *,
        integrals: bool,
        time_gradients: bool = False,
    ) -> None:
        self.f = problem.flat_field()
        self.n = problem.layout.size
        self.inputs = tuple(inputs) if integrals else ()
        self.integrals = integrals
        self.time_gradients = time_gradients and integrals
        self.evaluations = 0
        suffix = (lambda b: b.name[1:]) if problem.is_tuple else (lambda b: "")
        state_blocks = problem.layout.blocks
        blocks = [Block("z" + suffix(b), b.shape) for b in state_blocks]
        blocks += [Block("a_z" + suffix(b), b.shape) for b in state_blocks]
        blocks += [Block(f"a_θ[{i}]", tuple(p.shape), role="integral") for i, p in enumerate(self.inputs)]
        if self.time_gradients:
            blocks.append(Block("a_t", (1,), role="integral"))
        self.layout = Layout(tuple(blocks))

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """[f, −a_zᵀ∂f/∂z, −a_zᵀ∂f/∂θ, −a_zᵀ∂f/∂t] at user time ``t``: one evaluation, one VJP."""
        n = self.n
        z, a = y[:n], y[n : 2 * n]
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            t = t.detach().requires_grad_(self.time_gradients)
            wrt = [z, *self.inputs] + ([t] if self.time_gradients else [])
            fz = self.f(t, z)
            self.evaluations += 1
            if fz.requires_grad:
                grads = torch.autograd.grad(fz, wrt, a, allow_unused=True)
            else:  # f depends on neither z nor θ nor t
                grads = (None,) * len(wrt)
        parts = [fz.detach(), *(
            (torch.zeros_like(w) if g is None else g).reshape(-1) for g, w in zip(grads, wrt)
        )]
        out = torch.cat(parts)
        out[n:].neg_()  # the adjoint channels are −a_zᵀ∂f/∂(·): one pass, no extra copies
        return out

    def parameter_vjp(
        self, t: torch.Tensor, z: torch.Tensor, cotangent: torch.Tensor, inputs: Sequence[torch.Tensor],
        time_gradient: bool,
    ) -> tuple[list[torch.Tensor | None], torch.Tensor | None]:
        """cotangentᵀ ∂f/∂θ for each of ``inputs`` (and cotangentᵀ ∂f/∂t) at (t, z): one
        evaluation, one VJP. For quadrature adjoints, whose state carries no a_θ."""
        with torch.enable_grad():
            t = t.detach().requires_grad_(time_gradient)
            wrt = [*inputs] + ([t] if time_gradient else [])
            if not wrt:
                return [], None
            fz = self.f(t.to(z.dtype), z.detach())
            self.evaluations += 1
            if not fz.requires_grad:
                return [None] * len(inputs), None
            grads = torch.autograd.grad(fz, wrt, cotangent, allow_unused=True)
        return list(grads[: len(inputs)]), (grads[-1] if time_gradient else None)

    def initial(self, y_K: torch.Tensor, g_K: torch.Tensor) -> torch.Tensor:
        """The augmented state at t_K: [y(t_K), dL/dy(t_K), 0, …]."""
        return torch.cat([y_K, g_K, y_K.new_zeros(self.layout.size - 2 * self.n)])

    def input_gradients(self, y: torch.Tensor) -> list[torch.Tensor]:
        """The a_θ blocks of an augmented state, shaped like the inputs."""
        out, offset = [], 2 * self.n
        for p in self.inputs:
            out.append(y[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
        return out
