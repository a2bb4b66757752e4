"""Newton's linear algebra for implicit Runge–Kutta stages: the Jacobian of F, the Newton matrix
and its solves, dense (LU) or matrix-free (GMRES on Jacobian-vector products).

A step solves stage equations of the form G(Y) = Y − r − (hD ⊗ I) F(Y) = 0 for m stacked stage
values Y (m = 1 per ESDIRK stage with D = [γ]; m = 3 for Radau IIA with D its Butcher matrix).
Simplified Newton iterates with a Jacobian J of F frozen at one point (t*, y*):

    (I − hD ⊗ J) ΔY = −G(Y),   Y ← Y + ΔY.

**Dense.** J is computed by ``torch.func.jacrev`` (vmapped vector–Jacobian products, one
counted evaluation of f), or, for a field that function transforms cannot see through (a field
that calls ``torch.autograd.grad`` itself, such as an adjoint system), by forward differences,
one evaluation per column. Columns of blocks with ``role="integral"`` in the layout are zero by
definition (an integral channel never feeds back into F), so they are not computed and the
Newton matrix is block lower triangular: only its state part is LU-factorised
(``torch.linalg.lu_factor``), and the integral part follows by one product,

    x_S = (I − hD ⊗ J_SS)⁻¹ b_S,   x_I = b_I + (hD ⊗ J_IS) x_S,

so an adjoint state with thousands of parameter channels factorises a 2n × 2n matrix, not one of
its full size.

**Krylov.** The product (I − hD ⊗ J)v needs J v only: a forward difference at the frozen
point (one evaluation of F), and GMRES (Saad & Schultz, SIAM J.
Sci. Stat. Comput. 7, 1986; Arnoldi with modified Gram–Schmidt, the small least-squares problem
solved directly) on tensors. No n × n matrix is ever formed. Under autograd the solve is a
linear map of its right-hand side with the transposed solve as its derivative (GMRES on the
transposed operator, J^T w by a vector–Jacobian product at the frozen point).

The solve objects are immutable once built and are kept by the stepper for the steps that used
them, so that ``step_from`` replays a step with the very same matrix (bit-identical results).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from odeplug import final

__all__ = ["state_columns", "BlockJacobian", "BlockSolve", "DenseJacobian", "FrozenPoint", "DenseSolve", "KrylovSolve", "gmres", "Work"]


@final
class Work:
    """What Newton's linear algebra cost in one solve direction: Jacobian evaluations,
    LU factorisations, Newton iterations, Newton solves that failed (each followed by a retry
    with a fresh Jacobian or a rejected step) and (Krylov) GMRES iterations."""

    __slots__ = ("jacobians", "factorisations", "newton_iterations", "newton_failures", "krylov_iterations",
                 "krylov")

    def __init__(self, krylov: bool) -> None:
        self.jacobians = 0
        self.factorisations = 0
        self.newton_iterations = 0
        self.newton_failures = 0
        self.krylov_iterations = 0
        self.krylov = krylov

    def as_stats(self) -> dict[str, int]:
        """The counts under their ``Solution.stats`` names (scipy's ``njev``, ``nlu``)."""
        out = {"njev": self.jacobians, "nlu": self.factorisations,
               "newton_iterations": self.newton_iterations, "newton_failures": self.newton_failures}
        if self.krylov:
            out["krylov_iterations"] = self.krylov_iterations
        return out


def state_columns(state: slice | torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor | None:
    """The indices of the state (non-integral) elements, or None when every element is one."""
    if state is None:
        return None
    if isinstance(state, slice):
        start, stop = state.start or 0, n if state.stop is None else state.stop
        if start == 0 and stop == n:
            return None
        return torch.arange(start, stop, device=device)
    return state.to(device)


@final
class DenseJacobian:
    """J = ∂F/∂y at one point, as an n × n tensor (integral columns zero), computed by
    ``jacrev`` or, where function transforms do not apply to the field, by forward differences
    over the state columns. ``columns``: the state indices (None: all)."""

    __slots__ = ("matrix", "columns")

    def __init__(self, matrix: torch.Tensor, columns: torch.Tensor | None) -> None:
        self.matrix = matrix
        self.columns = columns

    @staticmethod
    def evaluate(fn: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor, columns: torch.Tensor | None,
                 transforms: list[bool]) -> DenseJacobian:
        """``transforms`` is a one-element flag list, cleared the first time ``jacrev`` fails
        (then every later Jacobian of this stepper is by differences)."""
        y = y.detach()
        if transforms[0]:
            try:
                with torch.no_grad():
                    matrix = torch.func.jacrev(fn)(y).detach()
                return DenseJacobian(matrix, columns)
            except Exception:  # noqa: BLE001 - any field function transforms cannot trace
                transforms[0] = False
        with torch.no_grad():
            base = fn(y)
            n = y.shape[0]
            matrix = y.new_zeros(n, n)
            picks = range(n) if columns is None else columns.tolist()
            root = math.sqrt(torch.finfo(y.dtype).eps)
            for j in picks:
                step = root * max(1.0, abs(float(y[j])))
                shifted = y.clone()
                shifted[j] += step
                matrix[:, j] = (fn(shifted) - base) / step
        return DenseJacobian(matrix, columns)


@final
class BlockJacobian:
    """J = blockdiag(J_1, …, J_B) for a state of B rows of d elements that evolve independently
    (a mini-batch: f couples no two rows), as a (B, d, d) tensor. Row j of every block at once
    is one vector–Jacobian product with the cotangent e_j in every row, so the whole Jacobian
    costs d products (vmapped with ``jacrev``'s machinery: one counted evaluation of f), not
    B·d; by forward differences (where function transforms do not apply), d evaluations."""

    __slots__ = ("blocks",)

    def __init__(self, blocks: torch.Tensor) -> None:
        self.blocks = blocks

    @staticmethod
    def evaluate(fn: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor, rows: int,
                 transforms: list[bool]) -> BlockJacobian:
        y = y.detach()
        width = y.shape[0] // rows
        eye = torch.eye(width, dtype=y.dtype, device=y.device)
        cotangents = eye.unsqueeze(1).expand(width, rows, width).reshape(width, -1)  # e_j in every row
        if transforms[0]:
            try:
                with torch.no_grad():
                    _, pullback = torch.func.vjp(fn, y)
                    picked = torch.func.vmap(pullback)(cotangents)[0]  # (j, B·d): row j of each block
                blocks = picked.reshape(width, rows, width).transpose(0, 1).detach()
                return BlockJacobian(blocks.contiguous())
            except Exception:  # noqa: BLE001 - any field function transforms cannot trace
                transforms[0] = False
        with torch.no_grad():
            base = fn(y)
            blocks = y.new_zeros(rows, width, width)
            root = math.sqrt(torch.finfo(y.dtype).eps)
            grid = y.view(rows, width)
            for j in range(width):
                step = root * grid[:, j].abs().clamp_min(1.0)  # per row: rows do not interact
                shifted = grid.clone()
                shifted[:, j] += step
                blocks[:, :, j] = (fn(shifted.reshape(-1)) - base).view(rows, width) / step.unsqueeze(-1)
        return BlockJacobian(blocks)


@final
class BlockSolve:
    """x = (I − hD ⊗ J)⁻¹ b for a block-diagonal J: B independent (m·d)-systems, factorised
    together (one batched ``lu_factor``, counted once)."""

    __slots__ = ("jacobian", "lu", "pivots", "m", "rows", "width")

    def __init__(self, jacobian: BlockJacobian, hd: torch.Tensor, work: Work) -> None:
        self.jacobian = jacobian
        blocks = jacobian.blocks
        self.rows, self.width = blocks.shape[0], blocks.shape[1]
        self.m = hd.shape[0]
        size = self.m * self.width
        kron = (hd[None, :, None, :, None] * blocks[:, None, :, None, :]).reshape(self.rows, size, size)
        matrix = torch.eye(size, dtype=blocks.dtype, device=blocks.device) - kron
        self.lu, self.pivots = torch.linalg.lu_factor(matrix)
        work.factorisations += 1

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        m, rows, width = self.m, self.rows, self.width
        per_row = b.reshape(m, rows, width).transpose(0, 1).reshape(rows, m * width, 1)
        x = torch.linalg.lu_solve(self.lu, self.pivots, per_row)
        return x.reshape(rows, m, width).transpose(0, 1).reshape(m, rows * width)


@final
class FrozenPoint:
    """The point (F, t*, y*) a matrix-free Jacobian is frozen at: J v by a forward difference
    there, Jᵀw (for the backward pass of a differentiated solve) by autograd."""

    __slots__ = ("fn", "y", "f", "transforms")

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor, transforms: list[bool]) -> None:
        self.fn = fn
        self.y = y.detach()
        self.transforms = transforms
        with torch.no_grad():
            self.f = fn(self.y)

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        """J v by a forward difference, (F(y* + εv) − F(y*))/ε with ε = √eps·max(1, ‖y*‖∞)/‖v‖∞:
        one evaluation, for any field (as SUNDIALS' matrix-free Newton–Krylov does; an exact
        ``torch.func.jvp`` costs several times more per product on small states, and Newton
        needs J only approximately)."""
        with torch.no_grad():
            size = float(v.abs().max())
            if size == 0.0:
                return torch.zeros_like(v)
            step = math.sqrt(torch.finfo(v.dtype).eps) * max(1.0, float(self.y.abs().max())) / size
            return (self.fn(self.y + step * v) - self.f) / step

    def vjp(self, w: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            y = self.y.detach().requires_grad_(True)
            out = self.fn(y)
            (grad,) = torch.autograd.grad(out, y, w, allow_unused=True)
        return torch.zeros_like(w) if grad is None else grad


@final
class DenseSolve:
    """x = (I − hD ⊗ J)⁻¹ b for b of shape (m, n), with the state part LU-factorised once."""

    __slots__ = ("jacobian", "lu", "pivots", "hd", "columns", "coupling", "integral", "m", "n")

    def __init__(self, jacobian: DenseJacobian, hd: torch.Tensor, work: Work) -> None:
        self.jacobian = jacobian
        J, columns = jacobian.matrix, jacobian.columns
        self.hd, self.columns = hd, columns
        self.m, self.n = hd.shape[0], J.shape[0]
        if columns is None:
            block, self.coupling, self.integral = J, None, None
        else:
            mask = torch.ones(self.n, dtype=torch.bool, device=J.device)
            mask[columns] = False
            self.integral = mask.nonzero().reshape(-1)
            block = J[columns][:, columns]
            self.coupling = J[self.integral][:, columns]  # (integral rows, state columns)
        size = block.shape[0] * self.m
        matrix = torch.eye(size, dtype=J.dtype, device=J.device) - torch.kron(hd.contiguous(), block.contiguous())
        self.lu, self.pivots = torch.linalg.lu_factor(matrix)
        work.factorisations += 1

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        if self.columns is None:
            x = torch.linalg.lu_solve(self.lu, self.pivots, b.reshape(-1, 1))
            return x.reshape(self.m, self.n)
        state = b[:, self.columns]
        x_state = torch.linalg.lu_solve(self.lu, self.pivots, state.reshape(-1, 1)).reshape(self.m, -1)
        x_integral = b[:, self.integral] + self.hd @ (x_state @ self.coupling.t())
        x = torch.zeros_like(b).index_copy(1, self.columns, x_state)
        return x.index_copy(1, self.integral, x_integral)


@final
class KrylovSolve:
    """x = (I − hD ⊗ J)⁻¹ b by GMRES, J v by Jacobian-vector products at a :class:`FrozenPoint`."""

    __slots__ = ("point", "hd", "tol", "max_iterations", "work")

    def __init__(self, point: FrozenPoint, hd: torch.Tensor, tol: float, max_iterations: int, work: Work) -> None:
        self.point, self.hd, self.tol, self.max_iterations, self.work = point, hd, tol, max_iterations, work

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        """(I − hD ⊗ J) v, v of shape (m, n)."""
        jv = torch.stack([self.point.jvp(row) for row in v])
        return v - self.hd @ jv

    def apply_transposed(self, w: torch.Tensor) -> torch.Tensor:
        """(I − hD ⊗ J)ᵀ w = w − (I ⊗ Jᵀ)(hDᵀ ⊗ I) w."""
        mixed = self.hd.t() @ w
        return w - torch.stack([self.point.vjp(row) for row in mixed])

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and b.requires_grad:
            return _KrylovFunction.apply(b, self)
        with torch.no_grad():
            return self._forward(b)

    def _forward(self, b: torch.Tensor) -> torch.Tensor:
        x, iterations = gmres(lambda v: self.apply(v.view_as(b)).reshape(-1), b.reshape(-1),
                              self.tol, self.max_iterations)
        self.work.krylov_iterations += iterations
        return x.view_as(b)


@final
class _KrylovFunction(torch.autograd.Function):
    """The GMRES solve as the linear map it approximates: backward solves the transpose."""

    @staticmethod
    def forward(ctx, b: torch.Tensor, solver: KrylovSolve) -> torch.Tensor:  # noqa: ANN001
        ctx.solver = solver
        ctx.shape = b.shape
        return solver._forward(b)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        solver = ctx.solver
        x, _ = gmres(lambda w: solver.apply_transposed(w.view(ctx.shape)).reshape(-1), grad.reshape(-1),
                     solver.tol, solver.max_iterations)
        return x.view(ctx.shape), None


def gmres(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, tol: float,
          max_iterations: int) -> tuple[torch.Tensor, int]:
    """GMRES from x₀ = 0 until ‖b − Ax‖ ≤ tol·‖b‖ (or ``max_iterations``): (x, iterations).
    Arnoldi with modified Gram–Schmidt; the (j + 1) × j least-squares problem is solved
    directly each iteration (its size is the iteration count). One read of the residual per
    iteration decides whether to go on."""
    beta = torch.linalg.vector_norm(b)
    if float(beta) == 0.0:
        return torch.zeros_like(b), 0
    basis = [b / beta]
    hessenberg = b.new_zeros(max_iterations + 1, max_iterations)
    y = b.new_zeros(1)
    iterations = 0
    for j in range(max_iterations):
        w = matvec(basis[j])
        for i in range(j + 1):
            hessenberg[i, j] = torch.dot(w, basis[i])
            w = w - hessenberg[i, j] * basis[i]
        hessenberg[j + 1, j] = torch.linalg.vector_norm(w)
        rhs = b.new_zeros(j + 2)
        rhs[0] = beta
        small = hessenberg[: j + 2, : j + 1]
        y = torch.linalg.lstsq(small, rhs.unsqueeze(-1)).solution.reshape(-1)
        residual = torch.linalg.vector_norm(rhs - small @ y)
        iterations = j + 1
        breakdown = hessenberg[j + 1, j] <= 1e-14 * beta
        if bool((residual <= tol * beta) | breakdown):
            break
        basis.append(w / hessenberg[j + 1, j])
    return torch.stack(basis[:iterations], dim=1) @ y, iterations
