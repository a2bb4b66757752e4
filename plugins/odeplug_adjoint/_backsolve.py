"""The backward solve shared by the adjoint rules: [z, a_z, (a_θ, a_t)] from t_K back to t_0.

In user time t, with a_z(t_K) = dL/dy(t_K) and a_θ(t_K) = a_t(t_K) = 0 (Chen et al., NeurIPS
2018; Pontryagin):

    dz/dt   =  f(t, z)
    da_z/dt = −a_zᵀ ∂f/∂z
    da_θ/dt = −a_zᵀ ∂f/∂θ        (integral channel: never feeds back)
    da_t/dt = −a_zᵀ ∂f/∂t        (integral channel: never feeds back)

one vector–Jacobian product of f per evaluation. At each output time t_k, a_z jumps by
dL/dy(t_k) and the time gradient dL/dt_k = dL/dy(t_k)ᵀ f(t_k, y_k) is recorded (and subtracted
from a_t, so that a_t(t_0) = dL/dt_0). The solve lands exactly on each output time and continues
with its current step size: no interval pays a new initial-step search (torchdiffeq restarts its
solver at every output time). Only the first stage changes at a jump, and since the field is
linear in a_z, that change is one VJP on the graph of the step's last evaluation (at exactly
that point), with no new evaluation of f.

Quadrature adjoints run the same solve without the a_θ and a_t channels and integrate
a_zᵀ ∂f/∂θ themselves from the dense output (``channels="state"``).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import torch

import odeplug
from odeplug import Block, Counts, Layout, ODEProblem, Step, Stepper, StepState, VectorField

__all__ = ["AdjointSystem", "backward_solver", "run_backsolve"]


class AdjointSystem:
    """The augmented vector field for one problem, and the layout of its flat state.

    ``with_integrals=True`` carries a_θ (one block per parameter tensor) and, when
    ``time_gradients``, a_t; both are marked ``role="integral"`` so a Seminorm skips them.
    """

    def __init__(self, problem: ODEProblem, with_integrals: bool, time_gradients: bool) -> None:
        self.problem = problem
        self.f = problem.flat_field()
        self.n = problem.layout.size
        self.params = tuple(p for p in problem.params if p.requires_grad)
        self.with_integrals = with_integrals
        self.time_gradients = time_gradients and with_integrals
        state_blocks = problem.layout.blocks
        suffix = (lambda b: b.name[1:]) if problem.is_tuple else (lambda b: "")
        blocks = [Block("z" + suffix(b), b.shape) for b in state_blocks]
        blocks += [Block("a_z" + suffix(b), b.shape) for b in state_blocks]
        if with_integrals:
            blocks += [
                Block(f"a_θ[{i}]", tuple(p.shape), role="integral") for i, p in enumerate(self.params)
            ]
            if self.time_gradients:
                blocks.append(Block("a_t", (1,), role="integral"))
        self.layout = Layout(tuple(blocks))
        self.param_size = sum(p.numel() for p in self.params)
        self._last: tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]] | None = None
        self.jump_vjps = 0

    def field(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """[f, −a_zᵀ∂f/∂z, −a_zᵀ∂f/∂θ, −a_zᵀ∂f/∂t] in user time; one VJP."""
        n = self.n
        z, a = y[:n], y[n : 2 * n]
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            wrt: list[torch.Tensor] = [z]
            if self.with_integrals:
                wrt += self.params
            if self.time_gradients:
                t = t.detach().requires_grad_(True)
                wrt.append(t)
            fz = self.f(t, z)
            # The graph is kept until the next evaluation, for a jump at this point (see `jump`).
            grads = torch.autograd.grad(fz, wrt, a, allow_unused=True, retain_graph=True)
        self._last = (y, fz, wrt)
        return self._assemble(fz.detach(), grads, z, t)

    def _assemble(self, fz: torch.Tensor, grads: tuple, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        parts = [fz, _or_zeros(grads[0], z)]
        if self.with_integrals:
            parts += [_or_zeros(g, p).reshape(-1) for g, p in zip(grads[1 : 1 + len(self.params)], self.params)]
            if self.time_gradients:
                parts.append(_or_zeros(grads[-1], t).reshape(1))
        out = torch.cat(parts)
        out[self.n :].neg_()  # the adjoint channels are −a_zᵀ∂f/∂(·): one pass, no extra copies
        return out

    def jump(self, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor | None:
        """How ``field(t, y)`` changes when a_z jumps by ``g`` at the point last evaluated.

        The field is linear in a_z, so the change is [0, −gᵀ∂f/∂z, −gᵀ∂f/∂θ, −gᵀ∂f/∂t]: one VJP
        on the kept graph, no new evaluation of f. ``None`` if the last evaluation was not at
        ``y`` (then the caller re-evaluates the field).
        """
        if self._last is None or self._last[0] is not y:
            return None
        _, fz, wrt = self._last
        self._last = None
        grads = torch.autograd.grad(fz, wrt, g, allow_unused=True)
        self.jump_vjps += 1
        return self._assemble(torch.zeros_like(fz), grads, wrt[0], wrt[-1])

    def initial(self, y_K: torch.Tensor, g_K: torch.Tensor) -> torch.Tensor:
        extra = (self.param_size + int(self.time_gradients)) if self.with_integrals else 0
        return torch.cat([y_K, g_K, y_K.new_zeros(extra)])

    def param_grads(self, y: torch.Tensor) -> list[torch.Tensor]:
        out, offset = [], 2 * self.n
        for p in self.params:
            out.append(y[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
        return out


def _or_zeros(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else grad


def backward_solver(
    forward: odeplug.Solver,
    override: odeplug.Solver | None,
    norm: odeplug.Norm | None,
    rtol: float | None,
    atol: float | None,
    rule_name: str,
) -> odeplug.Solver:
    """The solver of the backward solve: ``override`` or the forward one, with the rule's
    ``norm``/``rtol``/``atol`` applied (``None`` keeps the solver's own, except the norm, whose
    default on the augmented state is ``MixedNorm``: torchdiffeq's default adjoint norm)."""
    solver = override if override is not None else forward
    changes = {}
    for name, value in (("rtol", rtol), ("atol", atol), ("norm", norm)):
        if value is None:
            continue
        if not any(field.name == name for field in attrs.fields(type(solver))):
            raise odeplug.InvalidOptionError(
                f"{rule_name}({name}=...) needs a backward solver with a {name!r} option, but "
                f"{type(solver).__name__} has none (fixed-step?). Drop {name}= or pass "
                f"solver=Dopri5(...) to {rule_name}."
            )
        changes[name] = value
    return attrs.evolve(solver, **changes) if changes else solver


def run_backsolve(
    system: AdjointSystem,
    solver: odeplug.Solver,
    ys: torch.Tensor,
    grad_ys: torch.Tensor,
    ts: torch.Tensor,
    direction: float,
    time_gradients: bool,
    on_step: Callable[[Stepper, Step, int], None] | None = None,
    on_interval: Callable[[Stepper, int, StepState], None] | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor] | None, torch.Tensor | None, VectorField, Counts]:
    """Solve the adjoint system from t_K to t_0 with jumps; return the final augmented state,
    the time gradients dL/dt_k (or None), the stepper's field (its ``nfe``) and step counts.

    ``on_step(stepper, step, k)`` sees each accepted backward step inside interval
    (t_{k−1}, t_k]; ``on_interval(stepper, k, state)`` is called on reaching t_{k−1}, before the
    jump there (quadrature rules read the dense output through ``stepper``).
    """
    K = len(ts) - 1
    field = VectorField(system.field, -direction)
    stepper: Stepper = odeplug.make_stepper(solver, field, system.layout)
    counts = Counts()
    s = odeplug.solver_times(ts.detach(), -direction).flip(0)  # increasing: t_K → t_0
    state = stepper.start(s[0], system.initial(ys[K], grad_ys[K]), s[-1])
    n = system.n
    time_grads: list[torch.Tensor] | None = [ys.new_zeros(())] * (K + 1) if time_gradients else None

    def record_time_gradient(k: int, state: StepState) -> StepState:
        # F = −direction·(user-time field); its z-part gives f(t_k, y_k).
        f_user = -direction * state.f[:n]
        g = (grad_ys[k] * f_user).sum()
        time_grads[k] = g
        if system.time_gradients:
            y = state.y.clone()
            y[-1] -= g
            return StepState(state.t, y, state.f, state.h)
        return state

    if time_grads is not None:
        state = record_time_gradient(K, state)
    for k in range(K, 0, -1):
        hook = None if on_step is None else (lambda step, k=k: on_step(stepper, step, k))
        state, _ = odeplug.advance(stepper, state, s[K - k + 1], counts, on_step=hook, land=True)
        if on_interval is not None:
            on_interval(stepper, k, state)
        if k - 1 > 0:
            y = state.y.clone()
            y[n : 2 * n] += grad_ys[k - 1]
            change = system.jump(state.y, grad_ys[k - 1])
            if change is None:
                state = stepper.restart(state, y)
            else:  # the stepper's F is (−direction)·field
                state = StepState(state.t, y, state.f + (-direction) * change, state.h)
            if time_grads is not None:
                state = record_time_gradient(k - 1, state)
    if time_grads is not None:
        time_grads[0] = state.y[-1] if system.time_gradients else None
    return state.y, time_grads, field, counts
