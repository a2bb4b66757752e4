"""Hypothesis strategies for testing solvers, gradient rules and anything else that solves ODEs.

*Problems with known solutions.* Each draws a :class:`KnownSolution`: an :class:`ODEProblem`
together with its exact solution, so an error can be measured rather than compared with another
solver. Three families, all linear in y (so the exact solution is closed-form) but exercising
different code paths:

- :func:`linear_systems`: y' = A y, y(t) = exp(A (t − t₀)) y₀ (the matrix exponential), with A
  similar to a block-diagonal matrix of eigenvalues α ± iβ: moduli in [0.3, 1.5], real parts
  in [−1, 0.4] (mildly stable or mildly growing, oscillating or not), conjugated by a
  well-conditioned (not necessarily orthogonal) matrix, so A need not be normal. The field reads
  A as a module's parameter, as a closure's tensor, or as A = W − diag(softplus(r)) computed
  outside f from two leaves (a tensor computed from parameters, whose graph f shares).
- :func:`scalar_exponentials`: y' = (a + b cos ωt) y, y(t) = y₀ exp(a(t − t₀) + (b/ω)(sin ωt −
  sin ωt₀)): a rate that depends on time, so a method's time nodes c matter.
- :func:`harmonic_oscillators`: x'' + 2ζω x' + ω² x = 0 as the state (x, v), written as an
  oscillator rather than as a matrix product; exact through the matrix exponential of
  [[0, 1], [−ω², −2ζω]].

Each comes in either time direction, with a tensor state or a tuple state (the same components
split in two), in float32 or float64. The exact solution is computed in float64 from the
problem's own tensors, so it is differentiable in y₀, the times and the parameters: autograd
through it gives the exact gradient of a loss (the truth for any gradient rule, independent of
every solver). :func:`known_solutions` draws from all three.

*Other strategies.* :func:`time_grids` (strictly monotone output times), :func:`tolerances`
(rtol, atol pairs), :func:`mlp_problems` (random smooth MLP fields, tensor or tuple state, whose
solution is not known: for comparisons between rules) with the fields :class:`MLPField`,
:class:`TupleMLPField` and :class:`Linear`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs
import torch
from hypothesis import strategies as st

from .._nouns import final
from .._problem import ODEProblem, State

__all__ = [
    "KnownSolution", "known_solutions", "linear_systems", "scalar_exponentials",
    "harmonic_oscillators", "time_grids", "tolerances", "mlp_problems", "Linear", "MLPField",
    "TupleMLPField",
]

F64 = torch.float64
FIELD_FORMS = ("module", "closure", "derived")


@final
@attrs.frozen(repr=False, eq=False)
class KnownSolution:
    """An initial-value problem and its exact solution.

    Attributes:
        equation: the equation and its coefficients, in words (shown in counterexamples).
        problem: the :class:`odeplug.ODEProblem` (y₀ at ``problem.ts[0]``).
        exact: ``exact(times)`` is the exact solution at a 1-D tensor of times, stacked like
            ``Solution.ys`` (a tuple of stacks for a tuple state), in float64, differentiable in
            ``inputs``. Any time is allowed, before or after ``ts[0]``.
        rate: a bound on how fast the solution changes (‖∂f/∂y‖ and the frequencies of f in t):
            a step h with h · rate ≲ 1 resolves it.
        inputs: the leaf tensors the problem is built from: y₀ (each part of a tuple state),
            the output times, then the parameters f reads.
        rebuild: ``rebuild(inputs)`` builds the same problem from other leaf tensors (perturbed,
            or requiring grad); tensors computed from parameters are recomputed, as a training
            step does.
    """

    equation: str
    problem: ODEProblem
    exact: Callable[[torch.Tensor], State]
    rate: float
    inputs: tuple[torch.Tensor, ...]
    rebuild: Callable[[tuple[torch.Tensor, ...]], KnownSolution]

    @property
    def dtype(self) -> torch.dtype:
        return self.problem.dtype

    def fresh(self, requires_grad: bool = False) -> KnownSolution:
        """The same problem built from copies of its inputs, which require grad if asked."""
        return self.rebuild(tuple(x.detach().clone().requires_grad_(requires_grad) for x in self.inputs))

    def reversed(self) -> KnownSolution:
        """The same trajectory traced the other way: the output times in reverse order, starting
        from the exact solution at the last of them."""
        ts = self.problem.ts.detach().flip(0)
        start = self.exact(ts[:1])
        parts = start if isinstance(start, tuple) else (start,)
        y0 = tuple(part[0].to(self.dtype).detach() for part in parts)
        count = len(parts)
        return self.rebuild((*y0, ts, *self.inputs[count + 1:]))

    def __repr__(self) -> str:
        y0 = self.problem.y0
        state = (
            "tuple state of shapes " + ", ".join(str(tuple(p.shape)) for p in y0)
            if isinstance(y0, tuple) else f"state of shape {tuple(y0.shape)}"
        )
        times = ", ".join(f"{float(t):.4g}" for t in self.problem.ts)
        return f"KnownSolution({self.equation}; {state}, {self.dtype}; ts=[{times}])"


def _flat_parts(y: State) -> tuple[torch.Tensor, ...]:
    return y if isinstance(y, tuple) else (y,)


def _join(y0_parts: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return torch.cat([p.to(F64) for p in y0_parts], dim=-1)


def _split(stacked: torch.Tensor, split: tuple[int, ...] | None) -> State:
    return stacked if split is None else tuple(stacked.split(split, dim=-1))


def _state(y0: torch.Tensor, split: tuple[int, ...] | None, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    y0 = y0.to(dtype)
    return (y0,) if split is None else tuple(y0.split(split, dim=-1))


def _flow(matrix: torch.Tensor, y0: torch.Tensor, t0: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """exp(A (t − t₀)) y₀ for each time (rows of y₀ are independent initial states)."""
    propagators = torch.linalg.matrix_exp(matrix.to(F64) * (times.to(F64) - t0.to(F64)).view(-1, 1, 1))
    return torch.einsum("kij,...j->k...i", propagators, y0)


class _LinearModule(torch.nn.Module):
    def __init__(self, matrix: torch.Tensor, split: tuple[int, ...] | None) -> None:
        super().__init__()
        self.matrix = torch.nn.Parameter(matrix.detach(), requires_grad=matrix.requires_grad)
        self.split = split

    def forward(self, t: torch.Tensor, y: State) -> State:
        return _split(_linear_apply(self.matrix, y), self.split)


def _linear_apply(matrix: torch.Tensor, y: State) -> torch.Tensor:
    joined = torch.cat(y, dim=-1) if isinstance(y, tuple) else y
    return joined @ matrix.T


def _linear_system(
    matrix: torch.Tensor, y0: torch.Tensor, ts: torch.Tensor, form: str,
    split: tuple[int, ...] | None, dtype: torch.dtype,
) -> KnownSolution:
    """y' = A y with A read by f in the given ``form``; ``matrix`` is A in float64."""
    dim = matrix.shape[0]
    # For the derived form, A = W − diag(softplus(r)) with softplus(r) = 1 on the diagonal.
    leaves_of = {
        "module": lambda: (matrix.to(dtype),),
        "closure": lambda: (matrix.to(dtype),),
        "derived": lambda: ((matrix + torch.eye(dim, dtype=F64)).to(dtype),
                            torch.full((dim,), math.log(math.e - 1), dtype=dtype)),
    }
    rate = float(torch.linalg.matrix_norm(matrix, 2))
    words = {"module": "A a module's parameter", "closure": "A a closure's tensor",
             "derived": "A = W − diag(softplus(r)) computed outside f"}[form]
    rows = "; ".join(" ".join(f"{v:+.3f}" for v in row) for row in matrix.tolist())
    equation = f"y' = A y, A = [{rows}], {words}"

    def rebuild(inputs: tuple[torch.Tensor, ...]) -> KnownSolution:
        count = 1 if split is None else len(split)
        y0_parts, times, params = inputs[:count], inputs[count], inputs[count + 1:]
        if form == "module":
            field = _LinearModule(params[0], split)
            # The module's parameter is the leaf: gradients are taken with respect to it.
            inputs = (*y0_parts, times, field.matrix)
            current = lambda: field.matrix  # noqa: E731
        elif form == "closure":
            a = params[0]

            def field(t, y):  # noqa: ANN001, ANN202
                return _split(_linear_apply(a, y), split)

            current = lambda: a  # noqa: E731
        else:
            w, raw = params
            a = w - torch.diag(torch.nn.functional.softplus(raw))

            def field(t, y):  # noqa: ANN001, ANN202
                return _split(_linear_apply(a, y), split)

            current = lambda: w - torch.diag(torch.nn.functional.softplus(raw))  # noqa: E731
        state = y0_parts if split is not None else y0_parts[0]
        problem = ODEProblem(field, state, times)

        def exact(at: torch.Tensor) -> State:
            return _split(_flow(current(), _join(y0_parts), times[0], at), split)

        return KnownSolution(equation, problem, exact, rate, inputs, rebuild)

    return rebuild((*_state(y0, split, dtype), ts.to(dtype), *leaves_of[form]()))


@st.composite
def _monotone_times(draw, rate: float, dtype: torch.dtype, direction: int | None) -> torch.Tensor:
    """2–5 strictly monotone times spanning 0.5/rate to 3/rate, starting in [−1, 1], no gap
    shorter than a twentieth of the span (so that perturbing a time keeps them monotone)."""
    count = draw(st.integers(2, 5))
    span = draw(st.floats(0.5, 3.0)) / rate
    gaps = draw(st.lists(st.floats(0.2, 1.0), min_size=count - 1, max_size=count - 1))
    # Subnormal times make the fixed-step solvers' gradients NaN (reported, not theirs to test here).
    start = draw(st.floats(-1.0, 1.0, allow_subnormal=False))
    offsets = [sum(gaps[:i]) / sum(gaps) for i in range(count)]
    if direction is None:
        direction = draw(st.sampled_from((1, -1)))
    return torch.tensor([start + direction * span * u for u in offsets], dtype=dtype)


def _dtypes(dtype: torch.dtype | None) -> st.SearchStrategy[torch.dtype]:
    return st.just(dtype) if dtype is not None else st.sampled_from((torch.float64, torch.float32))


def _split_of(draw, dim: int, tuple_state: bool | None) -> tuple[int, ...] | None:
    use_tuple = draw(st.booleans()) if tuple_state is None else tuple_state
    if not use_tuple or dim < 2:
        return None
    first = draw(st.integers(1, dim - 1))
    return (first, dim - first)


@st.composite
def _eigenvalue_blocks(draw, dim: int) -> torch.Tensor:
    """A block-diagonal real matrix with eigenvalue moduli in [0.3, 1.5], real parts in
    [−1, 0.4]: 2×2 blocks [[α, β], [−β, α]] (α ± iβ) and 1×1 blocks [α]."""
    blocks = torch.zeros(dim, dim, dtype=F64)
    i = 0
    while i < dim:
        if dim - i >= 2 and draw(st.booleans()):
            alpha = draw(st.floats(-0.6, 0.2))
            beta = draw(st.floats(0.4, 1.3))
            blocks[i:i + 2, i:i + 2] = torch.tensor([[alpha, beta], [-beta, alpha]], dtype=F64)
            i += 2
        else:
            blocks[i, i] = draw(st.one_of(st.floats(-1.0, -0.3), st.floats(0.3, 0.4)))
            i += 1
    return blocks


@st.composite
def linear_systems(
    draw, dtype: torch.dtype | None = None, tuple_state: bool | None = None,
    direction: int | None = None, forms: tuple[str, ...] = FIELD_FORMS, max_dim: int = 3,
) -> KnownSolution:
    """y' = A y, y(t) = exp(A (t − t₀)) y₀, with A's spectrum bounded (moduli in [0.3, 1.5],
    real parts in [−1, 0.4]) and A not necessarily normal.

    ``dtype`` (float32 or float64; default either), ``tuple_state`` (default either: the
    components split in two tensors), ``direction`` (+1 increasing, −1 decreasing output
    times; default either), ``forms``: how f reads A (``"module"``: a module's parameter,
    ``"closure"``: a closure's leaf tensor, ``"derived"``: A = W − diag(softplus(r)) computed
    outside f from leaves W and r).
    """
    dim = draw(st.integers(1, max_dim))
    batch = draw(st.integers(1, 2))
    blocks = draw(_eigenvalue_blocks(dim))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=F64))
    shear = torch.eye(dim, dtype=F64) + 0.3 * torch.triu(
        torch.rand(dim, dim, generator=g, dtype=F64) * 2 - 1, 1)
    similarity = rotation @ shear
    matrix = similarity @ blocks @ torch.linalg.inv(similarity)
    y0 = torch.randn(batch, dim, generator=g, dtype=F64)
    chosen = draw(_dtypes(dtype))
    ts = draw(_monotone_times(float(torch.linalg.matrix_norm(matrix, 2)), F64, direction))
    split = _split_of(draw, dim, tuple_state)
    return _linear_system(matrix, y0, ts, draw(st.sampled_from(forms)), split, chosen)


@st.composite
def harmonic_oscillators(
    draw, dtype: torch.dtype | None = None, tuple_state: bool | None = None,
    direction: int | None = None,
) -> KnownSolution:
    """x'' + 2ζω x' + ω² x = 0 with ω in [0.5, 1.5], damping ζ in [0, 0.3], as the first-order
    system (x, v)' = (v, −ω² x − 2ζω v); a tuple state is (x, v). Exact: the matrix exponential
    of [[0, 1], [−ω², −2ζω]]. f reads ω and ζ as closure tensors, in oscillator form."""
    omega = draw(st.floats(0.5, 1.5))
    damping = draw(st.floats(0.0, 0.3))
    batch = draw(st.integers(1, 2))
    start = torch.tensor([[draw(st.floats(-1.0, 1.0)), draw(st.floats(-1.0, 1.0))] for _ in range(batch)],
                         dtype=F64)
    if float(start.abs().max()) < 0.1:
        start = start + 0.5
    chosen = draw(_dtypes(dtype))
    use_tuple = draw(st.booleans()) if tuple_state is None else tuple_state
    split = (1, 1) if use_tuple else None
    rate = max(omega**2, 1.0) + 2 * damping * omega
    ts = draw(_monotone_times(rate, F64, direction))
    equation = f"x'' + 2ζω x' + ω² x = 0, ω = {omega:.3f}, ζ = {damping:.3f}"

    def rebuild(inputs: tuple[torch.Tensor, ...]) -> KnownSolution:
        count = 1 if split is None else 2
        y0_parts, times, (w, z) = inputs[:count], inputs[count], inputs[count + 1:]

        def field(t, y):  # noqa: ANN001, ANN202
            x, v = y if split is not None else (y[..., :1], y[..., 1:])
            dv = -w**2 * x - 2 * z * w * v
            return (v, dv) if split is not None else torch.cat([v, dv], dim=-1)

        def exact(at: torch.Tensor) -> State:
            w64, z64 = w.to(F64), z.to(F64)
            zero, one = torch.zeros((), dtype=F64), torch.ones((), dtype=F64)
            matrix = torch.stack([torch.stack([zero, one]), torch.stack([-w64**2, -2 * z64 * w64])])
            return _split(_flow(matrix, _join(y0_parts), times[0], at), split)

        state = y0_parts if split is not None else y0_parts[0]
        return KnownSolution(equation, ODEProblem(field, state, times), exact, rate, inputs, rebuild)

    omega_t, damping_t = torch.tensor(omega, dtype=chosen), torch.tensor(damping, dtype=chosen)
    return rebuild((*_state(start, split, chosen), ts.to(chosen), omega_t, damping_t))


@st.composite
def scalar_exponentials(
    draw, dtype: torch.dtype | None = None, tuple_state: bool | None = None,
    direction: int | None = None,
) -> KnownSolution:
    """y' = (a + b cos ωt) y elementwise, y(t) = y₀ exp(a(t − t₀) + (b/ω)(sin ωt − sin ωt₀)):
    a in [−1, 0.3], b in [0.2, 1], ω in [0.5, 2]. A rate that varies in time, so the time
    nodes of a method matter. f reads a and b as closure tensors."""
    a = draw(st.floats(-1.0, 0.3))
    b = draw(st.floats(0.2, 1.0))
    omega = draw(st.floats(0.5, 2.0))
    size = draw(st.integers(1, 3))
    batch = draw(st.integers(1, 2))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    start = torch.rand(batch, size, generator=g, dtype=F64) + 0.5
    chosen = draw(_dtypes(dtype))
    split = _split_of(draw, size, tuple_state)
    rate = abs(a) + b + omega
    ts = draw(_monotone_times(rate, F64, direction))
    equation = f"y' = (a + b cos ωt) y, a = {a:.3f}, b = {b:.3f}, ω = {omega:.3f}"

    def rebuild(inputs: tuple[torch.Tensor, ...]) -> KnownSolution:
        count = 1 if split is None else len(split)
        y0_parts, times, (ra, rb) = inputs[:count], inputs[count], inputs[count + 1:]

        def field(t, y):  # noqa: ANN001, ANN202
            growth = ra + rb * torch.cos(omega * t)
            return tuple(growth * part for part in y) if split is not None else growth * y

        def exact(at: torch.Tensor) -> State:
            at64, t0 = at.to(F64), times[0].to(F64)
            swing = torch.sin(omega * at64) - torch.sin(omega * t0)
            exponent = ra.to(F64) * (at64 - t0) + rb.to(F64) / omega * swing
            return _split(torch.exp(exponent).view(-1, 1, 1) * _join(y0_parts), split)

        state = y0_parts if split is not None else y0_parts[0]
        return KnownSolution(equation, ODEProblem(field, state, times), exact, rate, inputs, rebuild)

    return rebuild((*_state(start, split, chosen), ts.to(chosen), torch.tensor(a, dtype=chosen),
                    torch.tensor(b, dtype=chosen)))


def known_solutions(
    dtype: torch.dtype | None = None, tuple_state: bool | None = None, direction: int | None = None,
) -> st.SearchStrategy[KnownSolution]:
    """Any of :func:`linear_systems`, :func:`scalar_exponentials`, :func:`harmonic_oscillators`,
    with the given ``dtype``, ``tuple_state`` and ``direction`` (each drawn when ``None``)."""
    options = {"dtype": dtype, "tuple_state": tuple_state, "direction": direction}
    return st.one_of(linear_systems(**options), scalar_exponentials(**options),
                     harmonic_oscillators(**options))


def tolerances(min_rtol: float = 1e-10, max_rtol: float = 1e-3) -> st.SearchStrategy[tuple[float, float]]:
    """``(rtol, atol)`` with rtol log-uniform in [min_rtol, max_rtol] and atol between
    rtol/1000 and rtol (the scale of a solution of size about one)."""

    @st.composite
    def draw_pair(draw) -> tuple[float, float]:
        rtol = 10.0 ** draw(st.floats(math.log10(min_rtol), math.log10(max_rtol)))
        return rtol, rtol * 10.0 ** draw(st.floats(-3.0, 0.0))

    return draw_pair()


class Linear(torch.nn.Module):
    """dz/dt = a z: the analytic problem (L = z(T)² has closed-form gradients in z0, a, t0, T)."""

    def __init__(self, a: float = 0.2) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(a, dtype=torch.float64))

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.a * z


class MLPField(torch.nn.Module):
    """A random smooth vector field f(t, y) = W2 tanh(W1 y + b1 + c t)."""

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
    """Strictly monotone float64 output times: t₀ in [−1, 1], gaps in [0.05, 1], increasing or
    (if ``allow_decreasing``) decreasing."""
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
