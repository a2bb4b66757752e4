"""``check_wiener``: what every :class:`odeplug.WienerApproximation` promises the Wong–Zakai ODE.

``odeplug.sample(approximation, like, t0, t1, generator=g)`` returns a WienerPath B standing in
for a Brownian motion W of ``like``'s shape on [t0, t1]; the ODE dz/dt = f + g·dB/dt converges
to the Stratonovich SDE as B → W (Wong & Zakai, Ann. Math. Statist. 36, 1965). So, for intervals
of either direction (t1 < t0 is allowed by the WienerPath contract; an approximation that does
not support it must refuse with an :class:`odeplug.OdeplugError`, and is then checked forwards
only), float32 and float64:

- it samples a WienerPath of ``like``'s shape: ``value(t)`` and ``derivative(t)`` have shape
  ``(*t.shape, *like.shape)`` and ``like``'s dtype, for times of either float dtype;
- B(t0) = 0: the motion starts at t0;
- the same generator seed gives the same path, and evaluating it twice gives the same tensors
  (the forward and backward solves of an adjoint must see one path);
- different seeds give different paths (unless the path is identically 0, as with no terms):
  the noise comes from the generator;
- sampling and evaluating leave the global generators alone (torch's CPU generator, and every
  CUDA device's when CUDA is available), with a generator and with ``generator=None``: drawing a
  path must not shift a training loop's dropout masks and data order;
- ``derivative`` is dB/dt: equal to the autograd derivative of ``value`` in t where value is
  differentiable by autograd (to 4√ε of the largest |dB/dt| on the interval), else to a float64
  central difference (to 10⁻⁴ of it);
- the covariance tends to Brownian motion's, Cov(B(s), B(t)) = (min(s, t) − t0)·I, in elapsed
  time min(|s − t0|, |t − t0|) for t1 < t0. Checked by Monte Carlo over ``samples`` independent
  components of one path (fixed seed :data:`COVARIANCE_SEED`), at s, t drawn in the last 90% of
  the interval: the mean of B(s)·B(t) against min(…), of B(t) against 0, and of the product of two
  distinct components against 0, each within 5 standard errors (for jointly Gaussian B of the
  target covariance K, Var(B(s)B(t)) = K_ss·K_tt + K_st²), for :data:`COVARIANCE_EXAMPLES`
  draws of the interval and times unless ``settings`` say otherwise. "Tends to": an
  approximation with an integer option named ``terms_option`` (``terms`` for KarhunenLoeve; a
  piecewise-linear one would name ``intervals``) is checked at ``converged_terms`` of it (or its
  own count if larger), where a convergent approximation's bias is well below the Monte Carlo
  tolerance — for KarhunenLoeve(m), |Var B_m(t) − |t − t0|| ≤ 2|t1 − t0|/(π²(m − ½)) ≈
  5·10⁻⁴·|t1 − t0| at m = 400, against a tolerance ≥ 8·10⁻³·|t1 − t0| with 8000 samples. One
  without such an option is checked as given, so it must be that close to Brownian motion itself.

The noise shapes drawn are those an SDEProblem has, with at least one dimension (y0's, or
(…, brownian_size)).
"""

from __future__ import annotations

import math

import attrs
import torch
from hypothesis import settings as Settings
from hypothesis import strategies as st

from .._errors import OdeplugError
from .._nouns import WienerApproximation
from .._plugins import exported
from .._verbs import sample
from ._layouts import float_dtypes
from ._properties import Property, enforce, hypothesis_property

__all__ = ["wiener_properties", "check_wiener", "COVARIANCE_SEED"]

F64 = torch.float64
COVARIANCE_SEED = 20_231_130
SCALE_GRID = 17  # times across the interval at which the size of dB/dt is taken
COVARIANCE_EXAMPLES = 5  # each draw is a Monte Carlo run of its own (unless settings say otherwise)
STANDARD_ERRORS = 5

SAMPLES_A_PATH = "samples a WienerPath of the noise's shape and dtype"
STARTS_AT_ZERO = "value(t0) = 0"
SAME_SEED_SAME_PATH = "the same generator seed gives the same path"
DRAWS_FROM_ITS_GENERATOR = "different generator seeds give different paths"
LEAVES_GLOBAL_RNG_ALONE = "leaves the global random generators alone"
DERIVATIVE_OF_VALUE = "derivative is the time derivative of value"
BROWNIAN_COVARIANCE = "covariance tends to min(s, t) − t0"


def wiener_properties(approximation: WienerApproximation, *, terms_option: str = "terms",
                      converged_terms: int = 400, samples: int = 8000,
                      settings: Settings | None = None) -> list[Property]:
    """The properties :func:`check_wiener` runs on ``approximation``, in order (see the module
    docstring for each, and for ``terms_option``, ``converged_terms`` and ``samples``)."""
    subject = repr(approximation)
    converged = _refined(approximation, terms_option, converged_terms)

    def prop(name, strategy, holds, max_examples=25):  # noqa: ANN001, ANN202
        return hypothesis_property(subject, name, strategy, holds, settings, max_examples)

    return [
        prop(SAMPLES_A_PATH, _cases(), lambda case: _samples_a_path(approximation, case)),
        prop(STARTS_AT_ZERO, _cases(), lambda case: _starts_at_zero(approximation, case)),
        prop(SAME_SEED_SAME_PATH, _cases(), lambda case: _same_seed_same_path(approximation, case)),
        prop(DRAWS_FROM_ITS_GENERATOR, _cases(), lambda case: _draws_from_generator(approximation, case)),
        prop(LEAVES_GLOBAL_RNG_ALONE, _cases(), lambda case: _leaves_global_rng_alone(approximation, case)),
        prop(DERIVATIVE_OF_VALUE, _cases(), lambda case: _derivative_of_value(approximation, case)),
        prop(BROWNIAN_COVARIANCE, _covariance_cases(),
             lambda case: _brownian_covariance(converged, samples, *case),
             max_examples=COVARIANCE_EXAMPLES),
    ]


def check_wiener(approximation: WienerApproximation, *, terms_option: str = "terms",
                 converged_terms: int = 400, samples: int = 8000,
                 settings: Settings | None = None) -> None:
    """Raise :class:`CheckFailed` naming the first property ``approximation`` breaks, with the
    shrunk counterexample (interval, shape, dtype, times, seed); return if it keeps them all."""
    enforce(wiener_properties(approximation, terms_option=terms_option,
                              converged_terms=converged_terms, samples=samples, settings=settings))


def _refined(approximation: WienerApproximation, option: str, count: int) -> WienerApproximation:
    fields = attrs.fields_dict(type(approximation)) if attrs.has(type(approximation)) else {}
    current = getattr(approximation, option, None)
    if option not in fields or not isinstance(current, int) or isinstance(current, bool):
        return approximation
    return attrs.evolve(approximation, **{option: max(current, count)})


@attrs.frozen
class _Case:
    """One draw: an interval (either direction), the noise's shape and dtype, times as
    fractions of the way from t0 to t1, and a generator seed."""

    t0: float
    t1: float
    shape: tuple[int, ...]
    dtype: torch.dtype
    fractions: tuple[float, ...]
    seed: int

    def times(self, dtype: torch.dtype = F64) -> torch.Tensor:
        return torch.tensor([self.t0 + f * (self.t1 - self.t0) for f in self.fractions], dtype=dtype)

    @property
    def like(self) -> torch.Tensor:
        return torch.empty(self.shape, dtype=self.dtype)


def _intervals() -> st.SearchStrategy[tuple[float, float]]:
    """(t0, t1) with t0 in [-2, 2], |t1 − t0| in [0.2, 3], either direction."""
    return st.tuples(st.floats(-2.0, 2.0), st.floats(0.2, 3.0), st.booleans()).map(
        lambda p: (p[0], p[0] - p[1]) if p[2] else (p[0], p[0] + p[1]))


@st.composite
def _cases(draw: st.DrawFn) -> _Case:
    t0, t1 = draw(_intervals())
    fractions = draw(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=4))
    # Noise shapes as an SDEProblem has them: at least one dimension (y0's, or (..., brownian_size)).
    shape = draw(st.lists(st.integers(1, 3), min_size=1, max_size=2).map(tuple))
    return _Case(t0, t1, shape, draw(float_dtypes()), tuple(fractions), draw(st.integers(0, 2**32 - 1)))


def _covariance_cases() -> st.SearchStrategy[tuple[float, float, float, float]]:
    """(t0, t1, s, t): s and t in the last 90% of the interval, where the target variance is
    at least a tenth of the interval's length and the tolerance is not swamped by round-off."""
    return st.tuples(_intervals(), st.floats(0.1, 1.0), st.floats(0.1, 1.0)).map(
        lambda p: (*p[0], p[0][0] + p[1] * (p[0][1] - p[0][0]), p[0][0] + p[2] * (p[0][1] - p[0][0])))


def _sample(approximation: WienerApproximation, like: torch.Tensor, t0: float, t1: float,
            generator: torch.Generator | None):  # noqa: ANN202
    """The path, or None where a backward interval (t1 < t0) is refused with an OdeplugError."""
    try:
        return sample(approximation, like, t0, t1, generator=generator)
    except OdeplugError:
        if t1 < t0:
            return None
        raise
    except Exception as exc:  # noqa: BLE001 - a crash on an allowed input is the failure
        raise AssertionError(f"sample(...) raised {type(exc).__name__}: {exc}") from exc


def _evaluate(path, name: str, t: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """``path.value(t)`` or ``path.derivative(t)``; a crash fails the property being checked."""
    try:
        return getattr(path, name)(t)
    except Exception as exc:  # noqa: BLE001 - a crash on an allowed input is the failure
        raise AssertionError(f"{type(path).__name__}.{name}(t) for t of shape {tuple(t.shape)} "
                             f"raised {type(exc).__name__}: {exc}") from exc


def _seeded(approximation: WienerApproximation, case: _Case, seed: int | None = None):  # noqa: ANN202
    generator = torch.Generator().manual_seed(case.seed if seed is None else seed)
    return _sample(approximation, case.like, case.t0, case.t1, generator)


def _samples_a_path(approximation: WienerApproximation, case: _Case) -> None:
    path = _seeded(approximation, case)
    if path is None:
        return
    path_class = exported().get("WienerPath")
    if isinstance(path_class, type):
        assert isinstance(path, path_class), (
            f"sample returned a {type(path).__name__}, not an odeplug.WienerPath")
    assert tuple(path.shape) == case.shape, f"path.shape = {path.shape}, like.shape = {case.shape}"
    assert (path.t0, path.t1) == (case.t0, case.t1), (
        f"the path covers ({path.t0}, {path.t1}), it was sampled for ({case.t0}, {case.t1})")
    for time_dtype in (F64, case.dtype):
        t = case.times(time_dtype)
        for name in ("value", "derivative"):
            for times in (t, t[0]):
                out = _evaluate(path, name, times)
                expected = (*times.shape, *case.shape)
                assert isinstance(out, torch.Tensor) and tuple(out.shape) == expected, (
                    f"{name}(t) for t of shape {tuple(times.shape)} has shape "
                    f"{tuple(getattr(out, 'shape', ()))}, expected {expected}")
                assert out.dtype == case.dtype, (
                    f"{name}(t) for {time_dtype} times has dtype {out.dtype}, like has {case.dtype}")


def _starts_at_zero(approximation: WienerApproximation, case: _Case) -> None:
    path = _seeded(approximation, case)
    if path is None:
        return
    start = _evaluate(path, "value", torch.tensor(case.t0, dtype=F64))
    tolerance = 64 * torch.finfo(case.dtype).eps * math.sqrt(abs(case.t1 - case.t0))
    largest = float(start.abs().max()) if start.numel() else 0.0
    assert largest <= tolerance, f"|B(t0)| = {largest!r}: the motion must start at 0"


def _same_seed_same_path(approximation: WienerApproximation, case: _Case) -> None:
    first, second = _seeded(approximation, case), _seeded(approximation, case)
    if first is None:
        return
    t = case.times()
    for name in ("value", "derivative"):
        a, b = _evaluate(first, name, t), _evaluate(second, name, t)
        assert torch.equal(a, b), f"two samples with seed {case.seed} differ in {name}"
        assert torch.equal(a, _evaluate(first, name, t)), f"{name} differs between two calls at the same t"


def _draws_from_generator(approximation: WienerApproximation, case: _Case) -> None:
    first, other = _seeded(approximation, case), _seeded(approximation, case, seed=case.seed ^ 1)
    if first is None:
        return
    t = torch.cat([case.times(), torch.tensor([case.t1], dtype=F64)])
    a = _evaluate(first, "value", t)
    if not bool(a.any()):
        return  # an identically zero path (no noise terms) has nothing to draw
    assert not torch.equal(a, _evaluate(other, "value", t)), (
        f"seeds {case.seed} and {case.seed ^ 1} give the same path: the generator is not used")


def _global_states() -> tuple[torch.Tensor, list[torch.Tensor]]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return torch.random.get_rng_state(), cuda


def _leaves_global_rng_alone(approximation: WienerApproximation, case: _Case) -> None:
    cpu, cuda = _global_states()
    t = case.times()
    for generator in (torch.Generator().manual_seed(case.seed), None):
        path = _sample(approximation, case.like, case.t0, case.t1, generator)
        if path is None:
            return
        _evaluate(path, "value", t)
        _evaluate(path, "derivative", t)
        after_cpu, after_cuda = _global_states()
        how = "with a generator" if generator is not None else "with generator=None"
        assert torch.equal(after_cpu, cpu), f"sampling {how} changed torch's global CPU generator"
        assert all(torch.equal(a, b) for a, b in zip(after_cuda, cuda)), (
            f"sampling {how} changed a CUDA device's global generator")


def _derivative_of_value(approximation: WienerApproximation, case: _Case) -> None:
    path = _seeded(approximation, case)
    if path is None:
        return
    t = case.times()
    derivative = _evaluate(path, "derivative", t)
    if _evaluate(path, "value", t.clone().requires_grad_(True)).requires_grad:
        # Each B(t_k) depends on t_k alone, so the directional derivative along (1, …, 1) is
        # dB/dt at every t_k at once.
        _, reference = torch.autograd.functional.jvp(path.value, t, torch.ones_like(t))
        rtol, how = 4 * math.sqrt(torch.finfo(case.dtype).eps), "autograd of value"
    else:
        path = _sample(approximation, torch.empty(case.shape, dtype=F64), case.t0, case.t1,
                       torch.Generator().manual_seed(case.seed))
        derivative = _evaluate(path, "derivative", t)
        h = torch.finfo(F64).eps ** (1 / 3) * abs(case.t1 - case.t0)
        reference = (_evaluate(path, "value", t + h) - _evaluate(path, "value", t - h)) / (2 * h)
        rtol, how = 1e-4, "a float64 central difference of value"
    # Relative to |dB/dt| over the whole interval: at a time where dB/dt is 0 (KarhunenLoeve's
    # at t1), the derivative is round-off, which no relative comparison at that time can bound.
    grid = torch.linspace(case.t0, case.t1, SCALE_GRID, dtype=F64)
    scale = max(float(reference.abs().max()), float(derivative.abs().max()),
                float(_evaluate(path, "derivative", grid).abs().max()))
    error = float((derivative - reference).abs().max())
    assert error <= rtol * scale, (
        f"derivative(t) differs from {how} by {error:.3g} (largest |dB/dt| {scale:.3g}): "
        f"{derivative.flatten()[:4].tolist()} vs {reference.flatten()[:4].tolist()}")


def _brownian_covariance(approximation: WienerApproximation, samples: int,
                         t0: float, t1: float, s: float, t: float) -> None:
    like = torch.empty(samples, dtype=F64)
    path = _sample(approximation, like, t0, t1, torch.Generator().manual_seed(COVARIANCE_SEED))
    if path is None:
        return
    b_s, b_t = _evaluate(path, "value", torch.tensor([s, t], dtype=F64))
    k_ss, k_tt = abs(s - t0), abs(t - t0)
    k_st = min(k_ss, k_tt)
    n, half = samples, samples // 2
    checks = (
        ("E[B(s)·B(t)]", float((b_s * b_t).mean()), k_st, math.sqrt((k_ss * k_tt + k_st**2) / n)),
        ("E[B(t)]", float(b_t.mean()), 0.0, math.sqrt(k_tt / n)),
        # component i against component i + n/2: distinct components must be independent
        ("E[B_i(t)·B_j(t)], i ≠ j", float((b_t[:half] * b_t[half : 2 * half]).mean()), 0.0,
         k_tt / math.sqrt(half)),
    )
    for what, estimate, target, standard_error in checks:
        assert abs(estimate - target) <= STANDARD_ERRORS * standard_error, (
            f"{what} ≈ {estimate:.5g} over {n} components of {approximation!r} on "
            f"[{t0}, {t1}] at s = {s}, t = {t}; Brownian motion from t0 has {target:.5g} "
            f"(standard error {standard_error:.2g}, tolerance {STANDARD_ERRORS} of them)")
