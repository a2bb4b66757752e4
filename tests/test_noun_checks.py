"""``check_norm``, ``check_quadrature`` and ``check_wiener`` (odeplug.testing, issue 11).

Every norm, quadrature rule and Wiener approximation a plugin exports passes its check, found
through the plugins' exports, so a new plugin is checked the moment it registers. And each check
can fail: a bug planted in a noun registered as a user would register it (``@odeplug.configuration``
subclass of the abstract noun, ``odeplug.register``ed methods, unregistered afterwards) makes the
check raise ``CheckFailed`` naming the property the bug breaks. Correct user-registered nouns
(a seminorm that is not a norm, Clenshaw–Curtis, an untampered wrapper of Karhunen–Loève) pass,
so that each failure is the planted bug's and not the wrapper's.
"""

import contextlib
import math

import attrs
import numpy as np
import pytest
import torch
from hypothesis import Phase
from hypothesis import settings as Settings

import odeplug as op
from odeplug import _dispatch
from odeplug._plugins import exported
from odeplug.testing._norm_check import (
    ACCEPTS_EVERY_LAYOUT,
    AT_MOST_ITS_BASE,
    BASE_ON_STATE_BLOCKS,
    BLIND_TO_INTEGRAL_BLOCKS,
    HOMOGENEOUS,
    NON_NEGATIVE,
    READS_ONLY_ITS_INPUT,
    SUBADDITIVE,
    check_norm,
)
from odeplug.testing._properties import CheckFailed, check_settings
from odeplug.testing._quadrature_check import (
    DECLARES_EXACT_DEGREE,
    EXACT_TO_DEGREE,
    FLOAT64_OF_LENGTH_N,
    NOT_EXACT_ONE_MORE,
    WEIGHTS_SUM_TO_LENGTH,
    check_quadrature,
)
from odeplug.testing._wiener_check import (
    BROWNIAN_COVARIANCE,
    DERIVATIVE_OF_VALUE,
    DRAWS_FROM_ITS_GENERATOR,
    LEAVES_GLOBAL_RNG_ALONE,
    SAME_SEED_SAME_PATH,
    STARTS_AT_ZERO,
    check_wiener,
    wiener_properties,
)

F64 = torch.float64


# ---------------------------------------------------------------------------------------------
# everything registered passes
# ---------------------------------------------------------------------------------------------
def _exported_final(noun: type) -> list[type]:
    return sorted(
        (value for value in exported().values()
         if isinstance(value, type) and issubclass(value, noun) and value.__dict__.get("_odeplug_final")),
        key=lambda cls: cls.__qualname__,
    )


def _takes_a_base_norm(cls: type) -> bool:
    return attrs.has(cls) and "base" in attrs.fields_dict(cls)


def _norms() -> list[op.Norm]:
    """Every exported norm with its defaults; a norm wrapping a ``base`` also with every other
    norm as its base (those it accepts)."""
    plain = [cls() for cls in _exported_final(op.Norm) if not _takes_a_base_norm(cls)]
    wrapped = []
    for cls in filter(_takes_a_base_norm, _exported_final(op.Norm)):
        wrapped.append(cls())
        for base in plain:
            with contextlib.suppress(op.InvalidOptionError):
                if (candidate := cls(base=base)) != cls():
                    wrapped.append(candidate)
    return plain + wrapped


NORMS = _norms()
QUADRATURES = [cls() for cls in _exported_final(op.Quadrature)]
WIENER_APPROXIMATIONS = [cls() for cls in _exported_final(op.WienerApproximation)]


def test_discovery_finds_the_builtin_nouns():
    assert {repr(n) for n in NORMS} >= {
        "RMSNorm()", "MaxNorm()", "MixedNorm()", "Seminorm(base=RMSNorm())",
        "Seminorm(base=MaxNorm())", "Seminorm(base=MixedNorm())"}
    assert {type(q).__name__ for q in QUADRATURES} >= {"GaussLegendre"}
    assert {type(w).__name__ for w in WIENER_APPROXIMATIONS} >= {"KarhunenLoeve"}


@pytest.mark.parametrize("norm", NORMS, ids=repr)
def test_every_registered_norm_passes_check_norm(norm):
    check_norm(norm)


@pytest.mark.parametrize("rule", QUADRATURES, ids=repr)
def test_every_registered_quadrature_passes_check_quadrature(rule):
    check_quadrature(rule)


@pytest.mark.parametrize("approximation", WIENER_APPROXIMATIONS, ids=repr)
def test_every_registered_wiener_approximation_passes_check_wiener(approximation):
    check_wiener(approximation)


# ---------------------------------------------------------------------------------------------
# registering as a user does, and undoing it
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def registered(*methods):
    """Register each ``(verb, function)`` with ``odeplug.register``; unregister on exit."""
    done = []
    try:
        for verb, function in methods:
            function.__name__ = verb  # register picks the verb by the function's name
            op.register(function)
            done.append((verb, _dispatch._signature_types(function)))
        yield
    finally:
        for verb, signature in reversed(done):
            _dispatch.unregister_for_tests(verb, signature)


# Planted bugs are found, not shrunk: the property named is the point, and shrinking a failure
# (what a plugin author wants to read) takes many more examples than finding it.
FIND_ONLY = Settings(check_settings(), phases=[Phase.explicit, Phase.generate])


def fails(check, noun, **options) -> CheckFailed:
    with pytest.raises(CheckFailed) as failure:
        check(noun, settings=FIND_ONLY, **options)
    return failure.value


# ---------------------------------------------------------------------------------------------
# norms
# ---------------------------------------------------------------------------------------------
@op.configuration
class SumOfSquares(op.Norm):
    """Σ x², the square root forgotten: ‖c·x‖ = c²‖x‖."""


def sum_of_squares(n: SumOfSquares, x: torch.Tensor, layout: op.Layout):
    return x.pow(2).sum()


@op.configuration
class HalfPower(op.Norm):
    """(mean √|x|)²: homogeneous, but the p = ½ "norm" breaks the triangle inequality."""


def half_power(n: HalfPower, x: torch.Tensor, layout: op.Layout):
    return x.abs().sqrt().mean().pow(2)


@op.configuration
class FirstBlockShaped(op.Norm):
    """Reshapes x to its first block's shape: crashes on any layout of two or more blocks."""


def first_block_shaped(n: FirstBlockShaped, x: torch.Tensor, layout: op.Layout):
    return x.reshape(layout.blocks[0].shape).abs().max()


@op.configuration
class IgnoresStorageOffset(op.Norm):
    """Reads x's elements from the start of its storage: right for a tensor of its own, wrong
    (other memory) for a slice of a larger buffer, such as a solver's state."""


def ignores_storage_offset(n: IgnoresStorageOffset, x: torch.Tensor, layout: op.Layout):
    return torch.as_strided(x, (x.numel(),), (1,), 0).abs().max()


@op.configuration
class SquaresInPlace(op.Norm):
    """Squares x in place, so the solver's error estimate is destroyed."""


def squares_in_place(n: SquaresInPlace, x: torch.Tensor, layout: op.Layout):
    return x.abs_().max()


@op.configuration
class SignedSum(op.Norm):
    """Σ x without the absolute value: negative for negative errors."""


def signed_sum(n: SignedSum, x: torch.Tensor, layout: op.Layout):
    return x.sum()


@op.configuration
class PythonFloat(op.Norm):
    """Returns a Python float, which would synchronise a GPU at every step."""


def python_float(n: PythonFloat, x: torch.Tensor, layout: op.Layout):
    return float(x.abs().max())


@op.configuration
class LeakySeminorm(op.Norm):
    """RMS of the state blocks plus 1% of the RMS of the integral blocks: declared a seminorm of
    RMSNorm, it still reads a_θ and a_t."""


def leaky_seminorm(n: LeakySeminorm, x: torch.Tensor, layout: op.Layout):
    integral = torch.cat([torch.full((b.size,), b.role == "integral") for b in layout.blocks])
    state, rest = x[~integral], x[integral]
    rms = lambda part: part.pow(2).mean().sqrt() if part.numel() else x.new_zeros(())  # noqa: E731
    return rms(state) + 0.01 * rms(rest)


@op.configuration
class ScaledMaxOfState(op.Norm):
    """factor·max |x| over the state blocks: blind to the integral blocks, but not the seminorm
    of MaxNorm (factor ≠ 1), and larger than MaxNorm itself where factor > 1."""

    factor: float = 2.0


def scaled_max_of_state(n: ScaledMaxOfState, x: torch.Tensor, layout: op.Layout):
    integral = torch.cat([torch.full((b.size,), b.role == "integral") for b in layout.blocks])
    return n.factor * x[~integral].abs().max() if bool((~integral).any()) else x.new_zeros(())


@op.configuration
class AbsoluteSum(op.Norm):
    """|Σ x|: a seminorm (zero on every x summing to 0), which a step-size control may use."""


def absolute_sum(n: AbsoluteSum, x: torch.Tensor, layout: op.Layout):
    return x.sum().abs()


@pytest.mark.parametrize("norm,method,options,broken", [
    pytest.param(SumOfSquares(), sum_of_squares, {}, HOMOGENEOUS, id="no square root"),
    pytest.param(HalfPower(), half_power, {}, SUBADDITIVE, id="p = 1/2"),
    pytest.param(FirstBlockShaped(), first_block_shaped, {}, ACCEPTS_EVERY_LAYOUT, id="one block only"),
    pytest.param(PythonFloat(), python_float, {}, ACCEPTS_EVERY_LAYOUT, id="a Python float"),
    pytest.param(IgnoresStorageOffset(), ignores_storage_offset, {}, READS_ONLY_ITS_INPUT,
                 id="reads outside x"),
    pytest.param(SquaresInPlace(), squares_in_place, {}, READS_ONLY_ITS_INPUT, id="changes x"),
    pytest.param(SignedSum(), signed_sum, {}, NON_NEGATIVE, id="negative"),
    pytest.param(LeakySeminorm(), leaky_seminorm, {"seminorm_of": op.RMSNorm()}, BLIND_TO_INTEGRAL_BLOCKS,
                 id="seminorm reading integral blocks"),
    pytest.param(ScaledMaxOfState(factor=2.0), scaled_max_of_state, {"seminorm_of": op.MaxNorm()},
                 AT_MOST_ITS_BASE, id="seminorm above its base"),
    pytest.param(ScaledMaxOfState(factor=0.5), scaled_max_of_state, {"seminorm_of": op.MaxNorm()},
                 BASE_ON_STATE_BLOCKS, id="seminorm below its base"),
])
def test_check_norm_names_the_property_a_planted_bug_breaks(norm, method, options, broken):
    with registered(("norm", method)):
        failure = fails(check_norm, norm, **options)
    assert failure.property == broken, failure
    assert failure.subject == repr(norm) and failure.counterexample


def test_a_seminorm_passes_check_norm():
    with registered(("norm", absolute_sum)):
        check_norm(AbsoluteSum())


def test_a_norm_without_a_method_fails_naming_what_is_missing():
    failure = fails(check_norm, AbsoluteSum())
    assert failure.property == ACCEPTS_EVERY_LAYOUT and "no method norm(AbsoluteSum" in str(failure)


# ---------------------------------------------------------------------------------------------
# quadrature rules
# ---------------------------------------------------------------------------------------------
def gauss_legendre(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """numpy's Gauss–Legendre rule, not the plugin's."""
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return torch.from_numpy(nodes), torch.from_numpy(weights)


@op.configuration
class TamperedGaussLegendre(op.Quadrature):
    """Gauss–Legendre with a planted bug: ``declared`` is the exact degree it declares as a
    function of n, ``weights_scale`` multiplies its weights, ``dtype`` is its tensors' dtype."""

    declared: str = "2n - 1"
    weights_scale: float = 1.0
    dtype: str = "float64"


DECLARED = {"2n - 1": lambda n: 2 * n - 1, "2n": lambda n: 2 * n, "2n - 2": lambda n: 2 * n - 2}


def tampered_rule(rule: TamperedGaussLegendre, n: int):
    nodes, weights = gauss_legendre(n)
    dtype = getattr(torch, rule.dtype)
    return nodes.to(dtype), (weights * rule.weights_scale).to(dtype)


def tampered_degree(rule: TamperedGaussLegendre, n: int):
    return DECLARED[rule.declared](n)


@pytest.mark.parametrize("rule,broken", [
    pytest.param(TamperedGaussLegendre(declared="2n"), DECLARES_EXACT_DEGREE, id="declares 2n"),
    pytest.param(TamperedGaussLegendre(declared="2n - 2"), NOT_EXACT_ONE_MORE, id="declares one too few"),
    pytest.param(TamperedGaussLegendre(weights_scale=0.5), WEIGHTS_SUM_TO_LENGTH, id="weights sum to 1"),
    pytest.param(TamperedGaussLegendre(dtype="float32"), FLOAT64_OF_LENGTH_N, id="float32"),
])
def test_check_quadrature_names_the_property_a_planted_bug_breaks(rule, broken):
    with registered(("quadrature", tampered_rule), ("exact_degree", tampered_degree)):
        failure = fails(check_quadrature, rule)
    assert failure.property == broken, failure


def test_an_untampered_rule_passes_check_quadrature():
    with registered(("quadrature", tampered_rule), ("exact_degree", tampered_degree)):
        check_quadrature(TamperedGaussLegendre())


def test_a_rule_without_exact_degree_is_told_what_to_register():
    with registered(("quadrature", tampered_rule)):
        failure = fails(check_quadrature, TamperedGaussLegendre())
    assert failure.property == DECLARES_EXACT_DEGREE
    assert "def exact_degree(rule: TamperedGaussLegendre, n: int)" in str(failure)


@op.configuration
class ClenshawCurtis(op.Quadrature):
    """Interpolatory weights on the n Chebyshev extrema cos(πk/(n − 1)) (the midpoint for n = 1).
    The nodes are symmetric, so the rule is exact to degree n − 1 and, for odd n, to n: every odd
    polynomial integrates to 0 on both sides. ``declared`` is the degree it declares: right,
    "n - 1 + n % 2", or one too few for odd n, "n - 1", or one too many for even n, "n"."""

    declared: str = "n - 1 + n % 2"


CLENSHAW_CURTIS_DECLARED = {"n - 1 + n % 2": lambda n: n - 1 + n % 2, "n - 1": lambda n: n - 1,
                            "n": lambda n: n}


def clenshaw_curtis(rule: ClenshawCurtis, n: int):
    nodes = np.cos(np.pi * np.arange(n) / (n - 1)) if n > 1 else np.zeros(1)
    # Interpolatory weights from the moments in the Legendre basis, ∫P_k = 2δ_k0 (well
    # conditioned at Chebyshev points, unlike the monomial moments).
    weights = np.linalg.solve(np.polynomial.legendre.legvander(nodes, n - 1).T, np.eye(n)[0] * 2)
    return torch.from_numpy(nodes.copy()), torch.from_numpy(weights)


def clenshaw_curtis_degree(rule: ClenshawCurtis, n: int):
    return CLENSHAW_CURTIS_DECLARED[rule.declared](n)


def test_a_symmetric_rule_passes_declaring_the_degree_symmetry_gives_it():
    with registered(("quadrature", clenshaw_curtis), ("exact_degree", clenshaw_curtis_degree)):
        check_quadrature(ClenshawCurtis(), max_nodes=24)


@pytest.mark.parametrize("declared,broken,explanation", [
    pytest.param("n", EXACT_TO_DEGREE, "declares them exact", id="exact one degree lower than declared"),
    pytest.param("n - 1", NOT_EXACT_ONE_MORE, "a symmetric rule integrates every odd polynomial",
                 id="symmetry's extra degree not declared"),
])
def test_check_quadrature_names_a_wrong_declared_degree(declared, broken, explanation):
    with registered(("quadrature", clenshaw_curtis), ("exact_degree", clenshaw_curtis_degree)):
        failure = fails(check_quadrature, ClenshawCurtis(declared=declared), max_nodes=24)
    assert failure.property == broken and explanation in str(failure), failure


# ---------------------------------------------------------------------------------------------
# Wiener approximations
# ---------------------------------------------------------------------------------------------
@op.configuration
class TamperedKarhunenLoeve(op.WienerApproximation):
    """Karhunen–Loève with a planted ``bug`` (see :class:`TamperedPath`); "none" is correct."""

    terms: int = 10
    bug: str = "none"


@op.final
class TamperedPath(op.WienerPath):
    """A Karhunen–Loève path, with its value or derivative tampered with as ``bug`` says."""

    def __init__(self, inner, bug: str) -> None:
        self.inner, self.bug = inner, bug
        self.shape, self.t0, self.t1 = inner.shape, inner.t0, inner.t1
        self.scale = math.sqrt(0.5) if bug == "half variance" else 1.0

    def value(self, t):
        offset = 0.1 if self.bug == "offset" else 0.0
        if self.bug.startswith("detached value"):  # e.g. computed outside torch: no autograd
            t = t.detach()
        return self.scale * self.inner.value(t) + offset

    def derivative(self, t):
        if self.bug in ("steep derivative", "detached value, steep derivative"):
            return 1.05 * self.inner.derivative(t)
        if self.bug == "lagging derivative":  # a phase error: dB/dt a little behind B
            return self.inner.derivative(t - 0.01 * (self.t1 - self.t0))
        return self.scale * self.inner.derivative(t)


def tampered_sample(approximation: TamperedKarhunenLoeve, like: torch.Tensor, t0, t1, *, generator=None):
    bug = approximation.bug
    if bug == "global generator":
        torch.rand(())  # a jitter drawn from the global generator
    if bug == "fixed seed":
        generator = torch.Generator().manual_seed(0)
    if bug == "fresh entropy":
        generator = None
    inner = op.sample(op.KarhunenLoeve(terms=approximation.terms), like, t0, t1, generator=generator)
    return TamperedPath(inner, bug)


@pytest.mark.parametrize("bug,broken", [
    ("steep derivative", DERIVATIVE_OF_VALUE),
    ("lagging derivative", DERIVATIVE_OF_VALUE),
    ("detached value, steep derivative", DERIVATIVE_OF_VALUE),  # found by central differences
    ("global generator", LEAVES_GLOBAL_RNG_ALONE),
    ("fixed seed", DRAWS_FROM_ITS_GENERATOR),
    ("fresh entropy", SAME_SEED_SAME_PATH),
    ("offset", STARTS_AT_ZERO),
    ("half variance", BROWNIAN_COVARIANCE),
])
def test_check_wiener_names_the_property_a_planted_bug_breaks(bug, broken):
    with registered(("sample", tampered_sample)):
        failure = fails(check_wiener, TamperedKarhunenLoeve(bug=bug))
    assert failure.property == broken, failure


def test_an_untampered_wrapper_passes_check_wiener():
    with registered(("sample", tampered_sample)):
        check_wiener(TamperedKarhunenLoeve(), settings=Settings(check_settings(), max_examples=5))


def test_a_path_without_autograd_is_checked_by_central_differences():
    """value detached from t: the derivative is compared with central differences, and a
    correct one passes (the steep one fails, above)."""
    with registered(("sample", tampered_sample)):
        derivative, = [p for p in wiener_properties(TamperedKarhunenLoeve(bug="detached value"))
                       if p.name == DERIVATIVE_OF_VALUE]
        derivative.run()


def test_without_a_terms_option_the_covariance_is_checked_as_given():
    """KarhunenLoeve(2) is far from Brownian motion (its variance misses up to
    2|c|/(π²·1.5) ≈ 0.14|c|): taken as given (the option named is not one it has, so it is not
    refined), it fails the covariance property that it passes through its terms option."""
    failure = fails(check_wiener, op.KarhunenLoeve(terms=2), terms_option="intervals")
    assert failure.property == BROWNIAN_COVARIANCE
