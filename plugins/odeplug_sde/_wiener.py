"""Smooth approximations of Brownian motion, and the Wong–Zakai transform of an SDE into an ODE.

Norcliffe & Deisenroth, "Faster Training of Neural ODEs Using Gauß–Legendre Quadrature",
TMLR 2023, section 4 and appendix B; Wong & Zakai, "On the convergence of ordinary integrals to
stochastic integrals", Ann. Math. Statist. 36 (1965).
"""

from __future__ import annotations

import abc
import math

import attrs
import torch

import odeplug
from odeplug import InvalidArgumentError, ODEProblem, WienerApproximation, configuration, final
from odeplug._nouns import Noun  # the abstract root (not re-exported by the core)

from ._problem import SDEProblem

__all__ = [
    "WienerPath", "KarhunenLoeve", "KarhunenLoevePath", "sample_karhunen_loeve", "wong_zakai_path",
    "wong_zakai_approximation", "check_times",
]


class WienerPath(Noun):
    """Abstract: one sampled smooth path B(t) standing in for Brownian motion on [t0, t1].

    What :func:`odeplug.sample` returns and :func:`odeplug.wong_zakai` consumes. A subclass
    (final) provides:

    - ``shape``: the shape of B(t) (the problem's noise shape);
    - ``t0``, ``t1``: the interval it was sampled for (Python floats; ``t1 < t0`` allowed);
    - ``value(t)``: B(t), shape ``(*t.shape, *shape)``;
    - ``derivative(t)``: dB/dt at t, same shape, differentiable in t where B is smooth.

    Both must be deterministic: calling them twice at the same t gives the same tensor, so the
    forward and backward solves of an adjoint see the same path.
    """

    __slots__ = ()
    shape: tuple[int, ...]
    t0: float
    t1: float

    @abc.abstractmethod
    def value(self, t: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def derivative(self, t: torch.Tensor) -> torch.Tensor: ...


def _non_negative_int(instance, attribute, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise odeplug.InvalidOptionError(
            f"KarhunenLoeve: terms must be a non-negative int (the number m of sine terms; the "
            f"paper uses 10), got {value!r}."
        )


@configuration
class KarhunenLoeve(WienerApproximation):
    """The Karhunen–Loève expansion of Brownian motion truncated at m = ``terms`` terms.

    On [t0, t1] with c = t1 − t0 and s = (t − t0)/c ∈ [0, 1]:

        B_m(t) = √(2|c|) Σ_{i=1..m} ξ_i sin((i − ½)π s) / ((i − ½)π),
        dB_m/dt = (√(2|c|)/c) Σ_{i=1..m} ξ_i cos((i − ½)π s)      (= √(2/c) Σ ξ_i cos(...) for c > 0),

    ξ_i ~ N(0, I) independent, one per term and noise element. Var B_m(t) = 2|c| Σ sin²((i−½)πs) /
    ((i−½)²π²) → |t − t0| as m → ∞ (the sines are the eigenfunctions of the Brownian covariance
    min(s, s') on [0, 1], eigenvalues 1/((i−½)²π²)). Norcliffe & Deisenroth, TMLR 2023, eqs.
    (14)–(15). ``terms=0`` is no noise at all (the drift-only ODE).
    """

    positional_options = ("terms",)

    terms: int = attrs.field(default=10, validator=_non_negative_int)


@final
class KarhunenLoevePath(WienerPath):
    """One sample of :class:`KarhunenLoeve`: the ξ (``terms`` × noise shape) drawn once, stored.

    ``value(t)`` and ``derivative(t)`` evaluate all terms at once (one matrix product), for t of
    any shape; both are differentiable in t. Times are taken in float64 for the phases.
    """

    __slots__ = ("xi", "shape", "t0", "t1", "_freq", "_value_coef", "_derivative_coef")

    def __init__(self, xi: torch.Tensor, t0: float, t1: float) -> None:
        self.xi = xi
        self.shape = tuple(xi.shape[1:])
        self.t0 = float(t0)
        self.t1 = float(t1)
        c = self.t1 - self.t0
        m = xi.shape[0]
        omega = (torch.arange(1, m + 1, dtype=torch.float64, device=xi.device) - 0.5) * math.pi
        self._freq = omega / c  # phase per unit time
        flat = xi.reshape(m, math.prod(self.shape))
        amplitude = math.sqrt(2.0 * abs(c))
        # Fold the per-term amplitudes into ξ once: each evaluation is then one cos/sin and one matmul.
        self._value_coef = (amplitude / omega).to(xi.dtype)[:, None] * flat
        self._derivative_coef = torch.full((m, 1), amplitude / c, dtype=xi.dtype, device=xi.device) * flat

    @property
    def terms(self) -> int:
        return self.xi.shape[0]

    def _phase(self, t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, torch.Tensor):
            t = torch.tensor(t, dtype=torch.float64, device=self.xi.device)
        return (t.to(torch.float64) - self.t0).unsqueeze(-1) * self._freq

    def value(self, t: torch.Tensor) -> torch.Tensor:
        """B_m(t) = √(2|c|) Σ ξ_i sin((i−½)π(t−t0)/c) / ((i−½)π); shape ``(*t.shape, *shape)``."""
        phase = self._phase(t)
        out = torch.sin(phase).to(self.xi.dtype) @ self._value_coef
        return out.reshape((*phase.shape[:-1], *self.shape))

    def derivative(self, t: torch.Tensor) -> torch.Tensor:
        """dB_m/dt = (√(2|c|)/c) Σ ξ_i cos((i−½)π(t−t0)/c); shape ``(*t.shape, *shape)``."""
        phase = self._phase(t)
        out = torch.cos(phase).to(self.xi.dtype) @ self._derivative_coef
        return out.reshape((*phase.shape[:-1], *self.shape))

    def __repr__(self) -> str:
        return f"KarhunenLoevePath(terms={self.terms}, shape={self.shape}, t0={self.t0:g}, t1={self.t1:g})"


def check_times(where: str, t0: object, t1: object) -> tuple[float, float]:
    try:
        a, b = float(t0), float(t1)  # type: ignore[arg-type]
    except (TypeError, ValueError, RuntimeError):
        raise InvalidArgumentError(
            f"{where}: t0 and t1 must be real numbers (or 0-d tensors), got {t0!r} and {t1!r}."
        ) from None
    if not (math.isfinite(a) and math.isfinite(b)) or a == b:
        raise InvalidArgumentError(
            f"{where}: t0 and t1 must be finite and distinct (the interval the path covers), got "
            f"t0={a!r}, t1={b!r}."
        )
    return a, b


def sample_karhunen_loeve(
    approximation: KarhunenLoeve,
    like: torch.Tensor,
    t0: object,
    t1: object,
    generator: torch.Generator | None = None,
) -> KarhunenLoevePath:
    """Draw ξ (``terms`` × ``like.shape``) once from ``generator`` and return the path."""
    a, b = check_times("sample(KarhunenLoeve, ...)", t0, t1)
    if not torch.is_floating_point(like):
        raise InvalidArgumentError(
            "sample(KarhunenLoeve, like, t0, t1): like must be a floating tensor whose shape, dtype "
            f"and device the noise takes, got dtype {like.dtype}."
        )
    generator = _generator(generator, like.device)
    shape = (approximation.terms, *like.shape)
    xi = torch.randn(shape, generator=generator, dtype=like.dtype, device=generator.device)
    return KarhunenLoevePath(xi.to(like.device), a, b)


def _generator(generator: object, device: torch.device) -> torch.Generator:
    if generator is None:
        # Fresh OS entropy: not reproducible, but never touches (or reseeds) the global generator.
        fresh = torch.Generator(device=device)
        fresh.seed()
        return fresh
    if not isinstance(generator, torch.Generator):
        raise InvalidArgumentError(
            f"generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)), got "
            f"{type(generator).__name__}."
        )
    return generator


def wong_zakai_path(problem: SDEProblem, path: WienerPath) -> ODEProblem:
    """dz/dt = f(t, z) + g(t, z) · dB/dt, the ODE of the Wong–Zakai theorem driven by ``path``."""
    if tuple(path.shape) != problem.noise_shape:
        raise InvalidArgumentError(
            f"wong_zakai: the path has shape {tuple(path.shape)} but the problem's Brownian motion "
            f"has shape {problem.noise_shape} (noise={problem.noise!r}); sample the path with "
            "like=torch.empty(problem.noise_shape), or pass the approximation and let wong_zakai "
            "sample it."
        )
    t_first, t_last = float(problem.ts[0]), float(problem.ts[-1])
    lo, hi = min(path.t0, path.t1), max(path.t0, path.t1)
    span = hi - lo
    if min(t_first, t_last) < lo - 1e-9 * span or max(t_first, t_last) > hi + 1e-9 * span:
        raise InvalidArgumentError(
            f"wong_zakai: the path covers [{lo:g}, {hi:g}] but the problem's times run from "
            f"{t_first:g} to {t_last:g}; sample it with t0=ts[0], t1=ts[-1]."
        )
    drift = problem.checked("drift")
    diffusion = problem.checked("diffusion")
    derivative = path.derivative
    noise_term = problem.noise_term
    f_raw, g_raw = problem.drift, problem.diffusion  # used once the first call has checked them

    def first(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        db = derivative(t)
        if not isinstance(db, torch.Tensor) or tuple(db.shape) != problem.noise_shape:
            raise InvalidArgumentError(
                f"wong_zakai: {type(path).__name__}.derivative(t) returned "
                f"{tuple(db.shape) if isinstance(db, torch.Tensor) else type(db).__name__}, "
                f"expected a tensor of shape {problem.noise_shape}."
            )
        _check_state_fits_noise(problem, tuple(z.shape))
        field.call = fast
        return drift(t, z) + noise_term(diffusion(t, z), db)

    if problem.noise == "diagonal":

        def fast(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            return f_raw(t, z) + g_raw(t, z) * derivative(t)

    else:

        def fast(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            return f_raw(t, z) + (g_raw(t, z) @ derivative(t).unsqueeze(-1)).squeeze(-1)

    def field(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return field.call(t, z)

    field.call = first  # type: ignore[attr-defined]
    return ODEProblem(field, problem.y0, problem.ts, params=problem.params)


def _check_state_fits_noise(problem: SDEProblem, state_shape: tuple[int, ...]) -> None:
    """The state the field is called on may be wider than y0 (a transform applied after
    wong_zakai, e.g. an augmentation); g · dB/dt must still pair each channel with its noise."""
    noise_shape = problem.noise_shape
    if problem.noise == "diagonal" and state_shape != noise_shape:
        raise InvalidArgumentError(
            f"wong_zakai: the field was called on a state of shape {state_shape}, but with "
            f"noise='diagonal' each state element needs its own Brownian motion and the path has "
            f"shape {noise_shape}. Transform the SDE before wong_zakai (e.g. "
            "wong_zakai(augment(sde, augmentation), ...), which samples noise for the added "
            "channels too), or use noise='general', whose Brownian motion keeps its shape."
        )
    if problem.noise == "general" and state_shape[:-1] != noise_shape[:-1]:
        raise InvalidArgumentError(
            f"wong_zakai: the field was called on a state of shape {state_shape}, but with "
            f"noise='general' the Brownian motion has shape {noise_shape}, one per row of the "
            "state: only the last (channel) dimension of the state may change after wong_zakai."
        )


def wong_zakai_approximation(
    problem: SDEProblem, approximation: WienerApproximation, generator: torch.Generator | None
) -> ODEProblem:
    """Sample ``approximation`` on [ts[0], ts[-1]] with the noise's shape, then transform."""
    like = torch.empty(problem.noise_shape, dtype=problem.dtype, device=problem.device)
    path = odeplug.sample(
        approximation, like, float(problem.ts[0]), float(problem.ts[-1]), generator=generator
    )
    if not isinstance(path, WienerPath):
        raise odeplug.PluginError(
            f"sample({type(approximation).__name__}, ...) returned {type(path).__name__}, not an "
            "odeplug.WienerPath; subclass WienerPath (value, derivative, shape, t0, t1)."
        )
    return wong_zakai_path(problem, path)
