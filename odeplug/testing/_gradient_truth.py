"""The gradient-truth matrix: every gradient rule against Direct on the cases where a rule that
re-evaluates f in its own backward can go silently wrong.

Each :class:`GradientCase` builds its problem afresh on every run (as a training step does: a
tensor computed from a parameter is recomputed, and its graph is new), solves it with a rule,
and differentiates a loss with respect to the tensors it names. :func:`check_gradient_case`
compares a rule's gradients with Direct's (backpropagation through the same solver, the exact
derivative of the computed solution) at a tight tolerance, where a continuous adjoint's
gradient differs from Direct's only by the solver's error. Cases that a rule may refuse
(randomness in f, second derivatives, parameters changed in place) accept a clear
:class:`odeplug.OdeplugError` instead — never a wrong number.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import attrs
import torch

from .._errors import OdeplugError, UnsupportedCombinationError
from .._nouns import GradientRule, Solver, final
from .._problem import ODEProblem
from ._properties import CheckFailed, Property

__all__ = [
    "GradientCase", "gradient_cases", "check_gradient_case", "check_gradient_rule",
    "gradient_rule_properties",
]

F64 = torch.float64


@final
@attrs.frozen
class GradientCase:
    """One cell row of the matrix.

    Attributes:
        name: what the case exercises.
        build: ``build() -> (problem, wrt, loss)``: a fresh problem, the tensors to
            differentiate with respect to, and ``loss(solution) -> scalar``.
        solver: the solver both runs use.
        outcome: ``"gradients"`` (every rule must give Direct's gradients), ``"randomness"``
            (f draws random numbers: Direct's gradients with the same seed, or a refusal),
            ``"second"`` (second derivatives: Direct's, or a refusal), ``"inplace"`` (a
            parameter changed between forward and backward: every rule must raise).
        seed: the global seed set before each run.
    """

    name: str
    build: Callable[[], tuple[ODEProblem, Sequence[torch.Tensor], Callable]]
    solver: Solver
    outcome: str = "gradients"
    seed: int = 0


def _squares(sol) -> torch.Tensor:  # noqa: ANN001
    ys = sol.ys if isinstance(sol.ys, tuple) else (sol.ys,)
    return sum((y**2 * torch.linspace(0.5, 1.5, y.numel(), dtype=y.dtype).view_as(y)).sum() for y in ys)


def _y0(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=F64).requires_grad_(True)


def _ts(*times: float) -> torch.Tensor:
    return torch.tensor(times, dtype=F64, requires_grad=True)


def _weights(*shape: int, seed: int = 1, scale: float = 0.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=F64) * scale).requires_grad_(True)


class _Mlp(torch.nn.Module):
    def __init__(self, dim: int, width: int, seed: int, dropout: float = 0.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.nn.Parameter(torch.randn(width, dim, generator=g, dtype=F64) / dim**0.5)
        self.w2 = torch.nn.Parameter(torch.randn(dim, width, generator=g, dtype=F64) / width**0.5)
        self.drop = torch.nn.Dropout(dropout)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.drop(torch.tanh(y @ self.w1.T + t)) @ self.w2.T - 0.2 * y


def _closure_over_leaf():
    w, y0, ts = _weights(3, 3), _y0(2, 3), _ts(0.0, 0.5, 1.2)

    def f(t, y):
        return torch.tanh(y @ w.T) * torch.cos(t) - 0.1 * y

    return ODEProblem(f, y0, ts), (y0, ts, w), _squares


class _Switching(torch.nn.Module):
    """Reads its second weight only after t = 0.6: watching f's first evaluation misses it."""

    def __init__(self) -> None:
        super().__init__()
        self.before = torch.nn.Parameter(_weights(3, 3, seed=7).detach())
        self.after = torch.nn.Parameter(_weights(3, 3, seed=8).detach())

    def forward(self, t, y):  # noqa: ANN001, ANN201
        w = self.before if t < 0.6 else self.after
        return torch.tanh(y @ w.T) - 0.2 * y


def _read_only_later_in_a_module():
    field, y0, ts = _Switching(), _y0(2, 3, seed=3), _ts(0.0, 0.5, 1.2)
    problem = ODEProblem(field, y0, ts, jump_times=[0.6])
    return problem, (y0, ts, field.before, field.after), _squares


def _read_only_later_in_a_closure():
    early, late, y0, ts = _weights(3, 3, seed=9), _weights(3, 3, seed=10), _y0(2, 3), _ts(1.0, 0.2)

    def f(t, y):
        return torch.tanh(y @ (early if t > 0.6 else late).T) - 0.2 * y

    return ODEProblem(f, y0, ts, jump_times=[0.6]), (y0, ts, early, late), _squares


_RAW = _weights(3, seed=5)


def _closure_over_derived():
    raw, y0, ts = _RAW, _y0(4, 3, seed=2), _ts(0.0, 0.7, 1.5)
    rate = torch.nn.functional.softplus(raw)  # computed once per step, outside f

    def f(t, y):
        return -rate * y + torch.sin(y) * 0.3

    def loss(sol):  # the loss uses `rate` too: a subgraph shared with the solve
        return _squares(sol) + rate.sum()

    return ODEProblem(f, y0, ts), (y0, ts, raw), loss


class _Scaled(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = _Mlp(3, 6, seed=3)
        self.scale = torch.tensor([0.8, 1.1, 0.9], dtype=F64, requires_grad=True)  # not a Parameter

    def forward(self, t, y):  # noqa: ANN001
        return self.inner(t, y) * self.scale


_SCALED = _Scaled()


def _tensor_attribute():
    y0, ts = _y0(2, 3, seed=4), _ts(0.0, 0.6, 1.0)
    return ODEProblem(_SCALED, y0, ts), (y0, ts, _SCALED.scale, *_SCALED.inner.parameters()), _squares


_W_DUP = _weights(3, 3, seed=6)


def _duplicated_params():
    w, y0, ts = _W_DUP, _y0(2, 3, seed=7), _ts(0.0, 0.5, 1.0)

    def f(t, y):
        return torch.tanh(y @ w.T) - 0.3 * y

    return ODEProblem(f, y0, ts, params=[w, w]), (y0, ts, w), _squares


class _Head(torch.nn.Module):
    def __init__(self, encoder: torch.nn.Module, seed: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.out = torch.nn.Linear(4, 3, dtype=F64)
        torch.nn.init.normal_(self.out.weight, std=0.3, generator=torch.Generator().manual_seed(seed))

    def forward(self, y):  # noqa: ANN001
        return self.out(torch.tanh(self.encoder(y)))


_ENCODER = torch.nn.Linear(3, 4, dtype=F64)
_HEADS = torch.nn.ModuleList([_Head(_ENCODER, 8), _Head(_ENCODER, 9)])


def _shared_encoder():
    y0, ts = _y0(2, 3, seed=10), _ts(0.0, 0.4, 0.9)
    a, b = _HEADS

    def f(t, y):
        return a(y) - b(y) * 0.5 - 0.2 * y

    params = [*a.parameters(), *b.parameters()]  # the encoder's parameters twice
    return ODEProblem(f, y0, ts, params=params), (y0, ts, *_HEADS.parameters()), _squares


def _independent_of_y():
    y0, ts = _y0(3, seed=11), _ts(0.0, 1.0, 2.5)

    def f(t, y):
        return torch.exp(-0.1 * t) * torch.ones_like(y)

    return ODEProblem(f, y0, ts), (y0, ts), _squares


_THETA = _weights(4, seed=12, scale=1.0)


def _contracting():
    # dz/dt = −3(z − ½ sin(3θz)) + cos 3t over [0, 8]: 24 time constants. Solved backwards in
    # time z expands at rate 3, so a backsolve that does not reset z to the forward's values at
    # the output times drifts from them by e^{3·4} times the solver's error.
    theta, y0, ts = _THETA, _y0(4, seed=13), _ts(0.0, 4.0, 8.0)

    def f(t, z):
        return -3 * (z - 0.5 * torch.sin(3 * theta * z)) + torch.cos(3 * t)

    return ODEProblem(f, y0 * 2, ts), (y0, ts, theta), _squares


_TUPLE = _Mlp(5, 8, seed=14)


def _tuple_state():
    y0a, y0b, ts = _y0(2, 2, seed=15), _y0(2, 3, seed=16), _ts(0.0, 0.5, 1.1)

    def f(t, y):
        out = _TUPLE(t, torch.cat(y, dim=-1))
        return out[..., :2], out[..., 2:]

    return ODEProblem(f, (y0a, y0b), ts), (y0a, y0b, ts, *_TUPLE.parameters()), _squares


_DECREASING = _Mlp(3, 6, seed=17)


def _decreasing_times():
    y0, ts = _y0(2, 3, seed=18), _ts(1.0, 0.3, -0.5)
    return ODEProblem(_DECREASING, y0, ts), (y0, ts, *_DECREASING.parameters()), _squares


_LEVEL = torch.tensor(0.35, dtype=F64, requires_grad=True)


def _terminal_event():
    # A damped oscillator stopped where its first coordinate falls to a learned level: the loss
    # reads the event time and the state there, which move with y0, ts[0], w and the level
    # (a tensor only the event function reads).
    y0, ts, w = _y0(2, seed=24), _ts(0.0, 0.4, 6.0), _weights(2, 2, seed=25, scale=0.2)
    y0 = y0 * 0.1 + torch.tensor([1.0, 0.0], dtype=F64)

    def f(t, y):
        return torch.stack([y[1], -y[0] - 0.1 * y[1]]) + w @ y

    def level_crossed(t, y):
        return y[0] - _LEVEL

    def loss(sol):  # noqa: ANN001, ANN202
        return _squares(sol) + sol.event_t**2

    return ODEProblem(f, y0, ts, event=level_crossed), (y0, ts, w, _LEVEL), loss


_DROPOUT = _Mlp(3, 8, seed=19, dropout=0.3)


def _dropout():
    y0, ts = _y0(2, 3, seed=20), _ts(0.0, 0.5, 1.0)
    return ODEProblem(_DROPOUT, y0, ts), (y0, *_DROPOUT.parameters()), _squares


_RATE = torch.tensor(0.3, dtype=F64, requires_grad=True)


def _second_derivative():
    # dz/dt = a z, L = z(T)² + a²: the curvature d²L/da² has an ODE part; a rule that dropped it
    # would return 2.
    a, y0, ts = _RATE, torch.tensor([1.5], dtype=F64), _ts(0.0, 2.0)

    def f(t, z):
        return a * z

    return ODEProblem(f, y0, ts), (a,), lambda sol: (sol.ys[-1] ** 2).sum() + a**2


_INPLACE = _Mlp(3, 5, seed=21)


def _inplace():
    y0, ts = _y0(2, 3, seed=22), _ts(0.0, 0.5, 1.0)
    return ODEProblem(_INPLACE, y0, ts), tuple(_INPLACE.parameters()), _squares


def gradient_cases() -> tuple[GradientCase, ...]:
    """The matrix's rows."""
    from .._plugins import exported

    tight = exported()["Dopri5"](rtol=1e-10, atol=1e-10)
    return (
        GradientCase("closure over a leaf", _closure_over_leaf, tight),
        GradientCase("closure over softplus(raw)", _closure_over_derived, tight),
        GradientCase("non-Parameter tensor attribute", _tensor_attribute, tight),
        GradientCase("params=[w, w]", _duplicated_params, tight),
        GradientCase("two heads sharing an encoder", _shared_encoder, tight),
        GradientCase("f independent of y", _independent_of_y, tight),
        GradientCase("contracting field, 24 time constants", _contracting,
                     attrs.evolve(tight, rtol=1e-8, atol=1e-8)),
        GradientCase("tuple state", _tuple_state, tight),
        GradientCase("decreasing times", _decreasing_times, tight),
        GradientCase("parameter read only after a jump", _read_only_later_in_a_module, tight),
        GradientCase("closure read only after a jump, decreasing times",
                     _read_only_later_in_a_closure, tight),
        GradientCase("terminal event with a learned level", _terminal_event, tight),
        # A fixed step: with new masks at every evaluation, error control would never settle.
        GradientCase("Dropout in f", _dropout, exported()["RK4"](dt=0.05), outcome="randomness",
                     seed=23),
        GradientCase("second derivative", _second_derivative, tight, outcome="second"),
        GradientCase("parameter changed in place", _inplace, tight, outcome="inplace"),
    )


def _run(case: GradientCase, rule: GradientRule) -> tuple[torch.Tensor, ...]:
    problem, wrt, loss = case.build()
    _DROPOUT.train()
    with torch.random.fork_rng():
        torch.manual_seed(case.seed)
        from .._solve import solve

        sol = solve(problem, case.solver, rule)
        value = loss(sol)
    if case.outcome == "second":
        (g,) = torch.autograd.grad(value, wrt, create_graph=True)
        return torch.autograd.grad(g.sum(), wrt)
    grads = torch.autograd.grad(value, wrt, allow_unused=True)
    return tuple(torch.zeros_like(w) if g is None else g for w, g in zip(wrt, grads))


@functools.lru_cache(maxsize=64)
def _direct(case: GradientCase) -> tuple[torch.Tensor, ...]:
    """Direct's gradients, the reference, computed once per case."""
    from .._plugins import exported

    return _run(case, exported()["Direct"]())


def _inplace_refused(case: GradientCase, rule: GradientRule) -> None:
    problem, wrt, loss = case.build()
    from .._solve import solve

    value = loss(solve(problem, case.solver, rule))
    with torch.no_grad():
        for p in wrt:
            p.add_(0.01)
    try:
        torch.autograd.grad(value, wrt)
    except RuntimeError as exc:
        if "in place" not in str(exc) and "inplace" not in str(exc):
            raise AssertionError(
                f"{type(rule).__name__} / {case.name}: backward raised, but not about the "
                f"in-place change: {exc}"
            ) from exc
    else:
        raise AssertionError(
            f"{type(rule).__name__} / {case.name}: backward after an in-place change of a "
            "parameter went through; the gradient would be taken at the new values."
        )
    finally:
        with torch.no_grad():
            for p in wrt:
                p.sub_(0.01)


def check_gradient_case(
    rule: GradientRule, case: GradientCase, *, rtol: float = 1e-5, atol: float = 1e-8,
    must_support: bool = False,
) -> str:
    """Check ``rule`` on one case; return ``"ok"`` or ``"refused"``; raise ``AssertionError``
    naming the case and the largest error otherwise. Gradients agree when
    max|g − g_Direct| ≤ rtol · max|g_Direct| + atol for each tensor.

    ``must_support=True``: a refusal of a ``randomness`` or ``second`` case fails too (for
    rules that promise those, such as ACA)."""
    from .._plugins import exported

    name = type(rule).__name__
    if case.outcome == "inplace":
        _inplace_refused(case, rule)
        return "refused"
    try:
        got = _run(case, rule)
    except (UnsupportedCombinationError, OdeplugError) as exc:
        if case.outcome in ("randomness", "second") and not must_support:
            if "Direct" not in str(exc):
                raise AssertionError(
                    f"{name} / {case.name}: refused, but the error does not name a rule that "
                    f"can (Direct, ...): {exc}"
                ) from exc
            return "refused"
        raise AssertionError(f"{name} / {case.name}: raised {type(exc).__name__}: {exc}") from exc
    expected = _direct(case)
    for i, (g, e) in enumerate(zip(got, expected)):
        # Norm-wise, as solver tolerances are: an entry near zero is not held to its own scale.
        if float((g - e).abs().max()) > rtol * float(e.abs().max()) + atol:
            error = float((g - e).abs().max() / e.abs().max().clamp_min(1e-300))
            raise AssertionError(
                f"{name} / {case.name}: gradient {i} differs from Direct's by {error:.3g} "
                f"(relative to its largest entry); got {g.flatten()[:4].tolist()}, Direct "
                f"{e.flatten()[:4].tolist()}."
            )
    return "ok"


def check_gradient_rule(rule: GradientRule, **options) -> dict[str, str]:
    """Run every case of :func:`gradient_cases` on ``rule``; return each case's outcome."""
    return {case.name: check_gradient_case(rule, case, **options) for case in gradient_cases()}


def gradient_rule_properties(rule: GradientRule, *, settings=None) -> list[Property]:  # noqa: ANN001
    """One :class:`Property` per case of :func:`gradient_cases`, named ``gradient truth: <case>``,
    each failing with a :class:`CheckFailed` whose counterexample is the case and whose detail
    is :func:`check_gradient_case`'s explanation (which gradient, by how much).

    ``settings`` (Hypothesis settings) is accepted so every noun's properties are built alike;
    the cases are fixed problems, not drawn, so it has no effect here."""
    subject = repr(rule)

    def property_for(case: GradientCase) -> Property:
        def run() -> None:
            try:
                check_gradient_case(rule, case)
            except AssertionError as exc:
                raise CheckFailed(subject, name, f"the gradient case {case.name!r}", str(exc)) from exc

        name = f"gradient truth: {case.name}"
        return Property(subject, name, run)

    return [property_for(case) for case in gradient_cases()]
