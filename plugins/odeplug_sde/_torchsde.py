"""SDE evaluation through torchsde (Li et al., AISTATS 2020; Kidger et al., ICML 2021).

:class:`SDESolver` solves an :class:`SDEProblem` as an SDE, in Stratonovich form, with a fixed step
``dt`` and a reproducible Brownian motion (``torchsde.BrownianInterval`` with entropy ``seed``).
Rules: ``Direct`` backpropagates through ``torchsde.sdeint``; ``Adjoint`` uses
``torchsde.sdeint_adjoint`` (the stochastic adjoint; with ``reversible_heun`` the backward solve
reconstructs the forward one exactly, Kidger et al., "Efficient and accurate gradients for neural
SDEs", NeurIPS 2021). These are the baselines of Norcliffe & Deisenroth (TMLR 2023, sec. 5 and
appendix F) under the same front door as the ODE rules.
"""

from __future__ import annotations

import math

import attrs
import torch

import odeplug
from odeplug import InvalidArgumentError, Solution, Solver, Stats, UnsupportedCombinationError, configuration
from odeplug._solve import reject_options

from ._problem import SDEProblem

__all__ = ["SDESolver", "solve_torchsde"]

#: torchsde's Stratonovich methods (torchsde.settings.METHODS with sde_type stratonovich).
STRATONOVICH_METHODS = ("reversible_heun", "euler_heun", "heun", "midpoint", "milstein", "log_ode")


def _method(instance, attribute, value):
    if value not in STRATONOVICH_METHODS:
        raise odeplug.InvalidOptionError(
            f"SDESolver: method must be one of torchsde's Stratonovich methods "
            f"{', '.join(map(repr, STRATONOVICH_METHODS))}, got {value!r}."
        )


def _adjoint_method(instance, attribute, value):
    if value is not None and value not in (*STRATONOVICH_METHODS, "adjoint_reversible_heun"):
        raise odeplug.InvalidOptionError(
            f"SDESolver: adjoint_method must be None (torchsde's default for the method) or one of "
            f"{', '.join(map(repr, (*STRATONOVICH_METHODS, 'adjoint_reversible_heun')))}, got {value!r}."
        )


def _dt(instance, attribute, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0) or not math.isfinite(value):
        raise odeplug.InvalidOptionError(f"SDESolver: dt must be a positive number, got {value!r}.")


def _seed(instance, attribute, value):
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise odeplug.InvalidOptionError(
            f"SDESolver: seed must be None (fresh randomness) or a non-negative int, got {value!r}."
        )


@configuration
class SDESolver(Solver):
    """A fixed-step Stratonovich SDE solver from torchsde.

    Solves dz = f(t, z) dt + g(t, z) ∘ dW (:class:`odeplug.SDEProblem`) on a grid of step ``dt``
    with torchsde's ``method`` (``"reversible_heun"``, Kidger et al. NeurIPS 2021, is the default
    and the paper's choice; also ``"euler_heun"``, ``"heun"``, ``"midpoint"``, ``"milstein"``
    (diagonal noise only), ``"log_ode"``). The Brownian motion is a ``torchsde.BrownianInterval``
    seeded with ``seed`` (``None``: fresh randomness, or pass ``generator=`` to ``solve``), one
    independent motion per row of y0, so equal seeds give identical solutions. ``adjoint_method``
    is the method of the ``Adjoint`` rule's backward solve (default: torchsde's choice,
    ``adjoint_reversible_heun`` for ``reversible_heun``).

    Rules: ``odeplug.Direct()`` (backpropagation through ``torchsde.sdeint``) and
    ``odeplug.Adjoint()`` (``torchsde.sdeint_adjoint``). ``Solution.stats``: ``nfe`` (drift
    evaluations), ``nfe_diffusion`` and, for the adjoint after ``backward()``, ``nfe_backward`` and
    ``nfe_diffusion_backward``.
    """

    method: str = attrs.field(default="reversible_heun", validator=_method)
    dt: float = attrs.field(default=0.01, validator=_dt)
    seed: int | None = attrs.field(default=None, validator=_seed)
    adjoint_method: str | None = attrs.field(default=None, validator=_adjoint_method)


class _Counter:
    __slots__ = ("stats", "backward")

    def __init__(self) -> None:
        self.stats = Stats(nfe=0, nfe_diffusion=0)
        self.backward = False

    def drift(self) -> None:
        key = "nfe_backward" if self.backward else "nfe"
        self.stats[key] = self.stats.get(key, 0) + 1

    def diffusion(self) -> None:
        key = "nfe_diffusion_backward" if self.backward else "nfe_diffusion"
        self.stats[key] = self.stats.get(key, 0) + 1


class _TorchSDE(torch.nn.Module):
    """The problem in torchsde's terms: states (batch, d), time running forward, counted calls.

    The user's functions are held in a plain tuple (not as submodules): the parameters to
    differentiate are passed to torchsde explicitly.
    """

    def __init__(self, problem: SDEProblem, counter: _Counter) -> None:
        super().__init__()
        self.noise_type = problem.noise
        self.sde_type = "stratonovich"
        self._functions = (problem.checked("drift"), problem.checked("diffusion"))
        self._shape = tuple(problem.y0.shape)
        self._flat_state = (-1, problem.y0.shape[-1])
        self._flat_diffusion = (
            self._flat_state if problem.noise == "diagonal" else (*self._flat_state, problem.noise_shape[-1])
        )
        self._direction = problem.direction
        self._counter = counter

    def _time(self, t: torch.Tensor) -> torch.Tensor:
        return t if self._direction > 0 else -t

    def f(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._counter.drift()
        out = self._functions[0](self._time(t), y.reshape(self._shape)).reshape(self._flat_state)
        # Backwards in time, s = −t: dz/ds = −f(−s, z), and g is unchanged (W(−s) is a Brownian
        # motion in s).
        return out if self._direction > 0 else -out

    def g(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._counter.diffusion()
        return self._functions[1](self._time(t), y.reshape(self._shape)).reshape(self._flat_diffusion)


def _entropy(solver: SDESolver, generator: object) -> int | None:
    if generator is None:
        return solver.seed
    if not isinstance(generator, torch.Generator):
        raise InvalidArgumentError(
            f"solve(SDEProblem, SDESolver, ...): generator must be a torch.Generator, got "
            f"{type(generator).__name__}."
        )
    if solver.seed is not None:
        raise InvalidArgumentError(
            f"solve(SDEProblem, SDESolver(seed={solver.seed}), ...) was also given generator=; the "
            "Brownian motion takes one source of randomness. Drop one of them."
        )
    return int(torch.randint(0, 2**62, (), generator=generator))


def solve_torchsde(problem: SDEProblem, solver: SDESolver, adjoint: bool, where: str, **options) -> Solution:
    import torchsde

    generator = options.pop("generator", None)
    reject_options(where, options)
    if problem.ts.requires_grad:
        raise InvalidArgumentError(
            f"{where}: torchsde does not differentiate with respect to the output times; pass "
            "ts.detach(), or solve the Wong–Zakai ODE (wiener=odeplug.KarhunenLoeve(...)) with an "
            "ODE solver, whose rules give dL/dts."
        )
    if solver.method == "milstein" and problem.noise == "general":
        raise UnsupportedCombinationError(
            f"{where}: torchsde's Stratonovich Milstein method supports diagonal noise only; use "
            "method='reversible_heun' or 'midpoint' for noise='general'."
        )
    counter = _Counter()
    sde = _TorchSDE(problem, counter)
    y0 = problem.y0.reshape(-1, problem.y0.shape[-1])
    ts = problem.ts if problem.direction > 0 else -problem.ts
    entropy = _entropy(solver, generator)
    bm = torchsde.BrownianInterval(
        t0=float(ts[0]), t1=float(ts[-1]), size=(y0.shape[0], problem.noise_shape[-1]),
        dtype=y0.dtype, device=y0.device, entropy=entropy, dt=solver.dt,  # dt: the tree for fixed steps
        levy_area_approximation="foster" if solver.method == "log_ode" else "none",
    )
    if adjoint:
        ys = torchsde.sdeint_adjoint(
            sde, y0, ts, bm=bm, method=solver.method, adjoint_method=solver.adjoint_method,
            dt=solver.dt, adjoint_params=problem.params,
        )
    else:
        ys = torchsde.sdeint(sde, y0, ts, bm=bm, method=solver.method, dt=solver.dt)
    counter.backward = True  # what follows (the adjoint's backward solve) counts separately
    return Solution(ys.reshape(len(ts), *problem.y0.shape), problem.ts, counter.stats)


def unsupported_rule(problem: SDEProblem, solver: SDESolver, rule: object) -> None:
    raise UnsupportedCombinationError(
        f"SDESolver evaluates SDEs through torchsde with the rules Direct (backpropagation through "
        f"torchsde.sdeint) and Adjoint (torchsde.sdeint_adjoint), not {type(rule).__name__}. To "
        f"train with {type(rule).__name__}, solve the SDE as an ODE through the Wong–Zakai theorem: "
        f"odeplug.solve(problem, odeplug.Dopri5(), {type(rule).__name__}(), "
        "wiener=odeplug.KarhunenLoeve(terms=10), generator=torch.Generator().manual_seed(0))."
    )


def reject_rule_options(rule: object) -> None:
    """The adjoint rule's options configure odeplug's ODE backward solve; torchsde's is set on
    the solver (``SDESolver(adjoint_method=...)``). Never drop them silently."""
    changed = [
        f.name for f in attrs.fields(type(rule)) if f.init and getattr(rule, f.name) != f.default
    ]
    if changed:
        raise UnsupportedCombinationError(
            f"{type(rule).__name__} options {', '.join(changed)} configure odeplug's ODE backward "
            "solve; with SDESolver the backward solve is torchsde's stochastic adjoint, a fixed-step "
            f"solve configured on the solver (SDESolver(adjoint_method=..., dt=...)). Use "
            f"{type(rule).__name__}() with SDESolver, or train the Wong–Zakai ODE "
            "(wiener=odeplug.KarhunenLoeve(...)) with an ODE solver to use those options."
        )


def not_an_ode_solver() -> None:
    raise UnsupportedCombinationError(
        "SDESolver solves SDEProblems (through torchsde); it cannot step an ODE. For an "
        "ODEProblem (including one made by odeplug.wong_zakai) use an ODE solver such as "
        "odeplug.Dopri5()."
    )
