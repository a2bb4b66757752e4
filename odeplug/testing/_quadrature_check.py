"""``check_quadrature``: what every :class:`odeplug.Quadrature` promises a quadrature adjoint.

A quadrature adjoint integrates dL/dθ = ∫ a_zᵀ ∂f/∂θ dt with the rule's nodes and weights mapped
onto each interval (:func:`odeplug.scaled_quadrature`), and its node policies trust the degree the
rule declares with :func:`odeplug.exact_degree`. For n drawn in 1…``max_nodes``:

- the rule declares its exact degree d = ``exact_degree(rule, n)``, an int with 0 ≤ d ≤ 2n − 1
  (no n-point rule is exact for ∏(x − x_j)², of degree 2n: its integral is positive, its
  quadrature 0);
- ``quadrature(rule, n)`` is two float64 tensors of shape (n,), finite;
- the nodes lie in [-1, 1];
- the weights sum to 2, the length of [-1, 1] (∫1), and once scaled onto any [a, b] (b < a
  allowed) to b − a;
- the rule is exact to round-off for every polynomial of degree ≤ d. The polynomial is drawn in
  the Legendre basis, p = Σ_{k≤d} c_k P_k with every |c_k| ∈ [¼, 1] (so every degree is present
  and an error in any degree shows), whose integral is 2·c_0 (∫P_k = 0 for k ≥ 1);
- it is not exact at degree d + 1: Σ_j w_j P_{d+1}(x_j) ≠ 0 beyond round-off. If the rule is
  exact to degree d, every polynomial of degree d + 1 is a·P_{d+1} plus one of degree ≤ d, so the
  rule is exact at degree d + 1 iff it is exact on P_{d+1}. P_{d+1} is used, not x^{d+1}, because
  |P_k| ≤ 1 on [-1, 1] while x^k = P_k/κ_k + (lower degrees) with leading coefficient
  κ_k ≈ 2^k/√(πk): the error on x^{d+1} is the error on P_{d+1} divided by κ_{d+1}, and for
  Gauss–Legendre it falls below float64 round-off from n ≈ 27 on, where ∫P_{2n} − Σ w_j P_{2n}(x_j)
  = (κ_{2n}/κ_n²)·2/(2n + 1) ≈ √(π/(2n)) stays large. A symmetric rule (nodes and weights mirrored)
  integrates every odd polynomial exactly, so its exact degree is odd: declaring an even d fails
  this property, correctly, since d is not the highest degree.

Round-off: evaluating p by the three-term recurrence and summing n weighted values gives an
error of order (n + (d+1)²)·ε·Σ|c_k|·Σ|w_j| (the (d+1)² bounds |P_k'| ≤ k², which turns an error
of ε in a node into one in P_k); the check allows 8 times that.
"""

from __future__ import annotations

import torch
from hypothesis import settings as Settings
from hypothesis import strategies as st

from .._errors import UnsupportedCombinationError
from .._nouns import Quadrature
from .._quadrature import scaled_quadrature
from .._verbs import exact_degree, quadrature
from ._properties import CheckFailed, Property, enforce, hypothesis_property

__all__ = ["quadrature_properties", "check_quadrature"]

F64 = torch.float64
EPS = torch.finfo(F64).eps

DECLARES_EXACT_DEGREE = "declares its exact degree"
FLOAT64_OF_LENGTH_N = "nodes and weights are float64 tensors of length n"
NODES_IN_INTERVAL = "nodes lie in [-1, 1]"
WEIGHTS_SUM_TO_LENGTH = "weights sum to the interval's length"
EXACT_TO_DEGREE = "exact for every polynomial of degree ≤ exact_degree(rule, n)"
NOT_EXACT_ONE_MORE = "not exact at degree exact_degree(rule, n) + 1"


def _legendre_values(x: torch.Tensor, degree: int) -> torch.Tensor:
    """P_0(x), …, P_degree(x) stacked along a new first axis, by Bonnet's recurrence
    (k + 1) P_{k+1} = (2k + 1) x P_k − k P_{k−1}, stable on [-1, 1]."""
    values = [torch.ones_like(x), x]
    for k in range(1, degree):
        values.append(((2 * k + 1) * x * values[k] - k * values[k - 1]) / (k + 1))
    return torch.stack(values[: degree + 1])


def quadrature_properties(rule: Quadrature, *, max_nodes: int = 64,
                          settings: Settings | None = None) -> list[Property]:
    """The properties :func:`check_quadrature` runs on ``rule`` for n in 1…``max_nodes``, in
    order (see the module docstring)."""
    subject = repr(rule)
    nodes_count = st.integers(1, max_nodes)

    def prop(name, strategy, holds):  # noqa: ANN001, ANN202
        return hypothesis_property(subject, name, strategy, holds, settings)

    def declares_exact_degree() -> None:
        try:
            exact_degree(rule, 1)
        except UnsupportedCombinationError:
            kind = type(rule).__name__
            raise CheckFailed(
                subject, DECLARES_EXACT_DEGREE, "n=1",
                f"odeplug.exact_degree has no method for {kind}: register the highest degree d "
                f"for which your n-point rule integrates every polynomial of degree ≤ d exactly:\n"
                f"    @odeplug.register\n    def exact_degree(rule: {kind}, n: int):\n"
                f"        return ...  # 2 * n - 1 for Gauss–Legendre; n - 1 for an interpolatory "
                f"rule on n points, n - 1 + n % 2 if its nodes are symmetric",
            ) from None
        hypothesis_property(subject, DECLARES_EXACT_DEGREE, nodes_count, _declared_degree_holds(rule),
                            settings).run()

    return [
        Property(subject, DECLARES_EXACT_DEGREE, declares_exact_degree),
        prop(FLOAT64_OF_LENGTH_N, nodes_count, lambda n: _float64_of_length_n(rule, n)),
        prop(NODES_IN_INTERVAL, nodes_count, lambda n: _nodes_in_interval(rule, n)),
        prop(WEIGHTS_SUM_TO_LENGTH, st.tuples(nodes_count, _intervals()),
             lambda case: _weights_sum_to_length(rule, case[0], *case[1])),
        prop(EXACT_TO_DEGREE, _rule_sizes_and_coefficients(rule, nodes_count),
             lambda case: _exact_to_degree(rule, *case)),
        prop(NOT_EXACT_ONE_MORE, nodes_count, lambda n: _not_exact_one_more(rule, n)),
    ]


def check_quadrature(rule: Quadrature, *, max_nodes: int = 64, settings: Settings | None = None) -> None:
    """Raise :class:`CheckFailed` naming the first property ``rule`` breaks, with the shrunk
    counterexample (n, and the interval or polynomial); return if it keeps them all."""
    enforce(quadrature_properties(rule, max_nodes=max_nodes, settings=settings))


def _declared_degree_holds(rule: Quadrature):  # noqa: ANN202
    def holds(n: int) -> None:
        d = exact_degree(rule, n)
        assert isinstance(d, int) and not isinstance(d, bool) and d >= 0, (
            f"exact_degree(rule, {n}) = {d!r}; it must be an int ≥ 0")
        assert d <= 2 * n - 1, (
            f"exact_degree(rule, {n}) = {d}, but no {n}-point rule is exact beyond degree "
            f"{2 * n - 1}: ∏(x − x_j)², of degree {2 * n}, has a positive integral and is 0 at "
            f"every node (Gauss–Legendre reaches {2 * n - 1})")

    return holds


def _rule(rule: Quadrature, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        nodes, weights = quadrature(rule, n)
    except Exception as exc:  # noqa: BLE001 - any n ≥ 1 must give a rule
        raise AssertionError(f"quadrature(rule, {n}) raised {type(exc).__name__}: {exc}") from exc
    return nodes, weights


def _float64_of_length_n(rule: Quadrature, n: int) -> None:
    nodes, weights = _rule(rule, n)
    for name, value in (("nodes", nodes), ("weights", weights)):
        assert isinstance(value, torch.Tensor), f"{name} is a {type(value).__name__}, not a tensor"
        assert value.dtype == F64, f"{name} have dtype {value.dtype}, not torch.float64"
        assert tuple(value.shape) == (n,), f"{name} have shape {tuple(value.shape)}, not ({n},)"
        assert bool(torch.isfinite(value).all()), f"{name} are not all finite: {value.tolist()}"


def _nodes_in_interval(rule: Quadrature, n: int) -> None:
    nodes, _ = _rule(rule, n)
    outside = nodes[(nodes < -1) | (nodes > 1)]
    assert outside.numel() == 0, f"nodes {outside.tolist()} lie outside [-1, 1]"


def _intervals() -> st.SearchStrategy[tuple[float, float]]:
    """[a, b] with |b − a| in [0.1, 3], either way round."""
    return st.tuples(st.floats(-3, 3), st.floats(0.1, 3), st.booleans()).map(
        lambda p: (p[0], p[0] - p[1]) if p[2] else (p[0], p[0] + p[1]))


def _weights_sum_to_length(rule: Quadrature, n: int, a: float, b: float) -> None:
    _, weights = _rule(rule, n)
    tolerance = 8 * n * EPS * float(weights.abs().sum())
    total = float(weights.sum())
    assert abs(total - 2) <= tolerance, f"Σ w_j = {total!r} on [-1, 1], not 2"
    nodes, scaled = scaled_quadrature(rule, n, a, b, F64, torch.device("cpu"))
    total = float(scaled.sum())
    assert abs(total - (b - a)) <= tolerance * abs(b - a) / 2 + 4 * EPS * abs(b - a), (
        f"Σ w_j = {total!r} on [{a}, {b}], not b − a = {b - a!r}")


def _round_off(n: int, degree: int, weights: torch.Tensor, coefficients_size: float) -> float:
    return 8 * (n + (degree + 1) ** 2) * EPS * float(weights.abs().sum()) * coefficients_size


@st.composite
def _rule_sizes_and_coefficients(draw: st.DrawFn, rule: Quadrature, nodes_count):  # noqa: ANN001
    """(n, [c_0, …, c_d]) with d = exact_degree(rule, n) and |c_k| ∈ [¼, 1]."""
    n = draw(nodes_count)
    degree = exact_degree(rule, n)
    coefficient = st.tuples(st.sampled_from([-1.0, 1.0]), st.floats(0.25, 1.0)).map(lambda p: p[0] * p[1])
    return n, draw(st.lists(coefficient, min_size=degree + 1, max_size=degree + 1))


def _exact_to_degree(rule: Quadrature, n: int, coefficients: list[float]) -> None:
    nodes, weights = _rule(rule, n)
    degree = len(coefficients) - 1
    basis = _legendre_values(nodes, degree)  # (degree + 1, n)
    c = torch.tensor(coefficients, dtype=F64)
    approximation = float(weights @ (c @ basis))
    exact = 2 * coefficients[0]
    error = abs(approximation - exact)
    tolerance = _round_off(n, degree, weights, float(c.abs().sum()))
    if error > tolerance:
        per_degree = weights @ basis.T  # Σ w_j P_k(x_j) for each k, to be 2 for k = 0, else 0
        per_degree[0] -= 2
        wrong = [k for k, e in enumerate(per_degree.tolist()) if abs(e) > _round_off(n, degree, weights, 1.0)]
        raise AssertionError(
            f"Σ w_j p(x_j) = {approximation!r} but ∫p = {exact!r} (error {error:.3g} > round-off "
            f"{tolerance:.3g}); the rule is wrong on the Legendre polynomials of degree {wrong}, "
            f"but exact_degree(rule, {n}) = {degree} declares them exact")


def _not_exact_one_more(rule: Quadrature, n: int) -> None:
    nodes, weights = _rule(rule, n)
    degree = exact_degree(rule, n) + 1
    approximation = float(weights @ _legendre_values(nodes, degree)[degree])
    tolerance = _round_off(n, degree, weights, 1.0)
    symmetric = (" (a symmetric rule integrates every odd polynomial exactly, so its exact degree is "
                 "odd)" if degree % 2 == 1 else "")
    assert abs(approximation) > tolerance, (
        f"Σ w_j P_{degree}(x_j) = {approximation!r} = ∫P_{degree} = 0 to round-off ({tolerance:.3g}): "
        f"the rule is exact to degree {degree}, so exact_degree(rule, {n}) = {degree - 1} "
        f"understates it{symmetric}")
