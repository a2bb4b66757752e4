"""Neural SDEs in odeplug: train them as ODEs (Wong–Zakai), evaluate them as SDEs (torchsde).

Norcliffe & Deisenroth, "Faster Training of Neural ODEs Using Gauß–Legendre Quadrature", TMLR
2023, section 4 and appendices B and F. A Stratonovich SDE (:class:`SDEProblem`)

    dz = f(t, z) dt + g(t, z) ∘ dW_t

is approximated by the ODE dz/dt = f(t, z) + g(t, z) · dB_m/dt, with B_m a smooth approximation of
Brownian motion (:class:`KarhunenLoeve`, a :class:`odeplug.WienerApproximation`); by the
Wong–Zakai theorem its solution converges to the SDE's as B_m → W. That ODE trains with every
odeplug Solver and GradientRule (:func:`odeplug.wong_zakai`, or
``odeplug.solve(sde, odeplug.Dopri5(), rule, wiener=KarhunenLoeve(terms=10), generator=g)``); the
trained drift and diffusion are then evaluated with a real SDE solver (:class:`SDESolver`).
"""

from __future__ import annotations

import torch

import odeplug
from odeplug import GradientRule, Layout, Solver, VectorField, WienerApproximation
from odeplug_adjoint import Adjoint
from odeplug_direct import Direct

from ._problem import SDEProblem
from ._torchsde import SDESolver, not_an_ode_solver, reject_rule_options, solve_torchsde, unsupported_rule
from ._wiener import (
    KarhunenLoeve,
    KarhunenLoevePath,
    WienerPath,
    sample_karhunen_loeve,
    wong_zakai_approximation,
    wong_zakai_path,
)

__all__ = [
    "SDEProblem", "SDESolver", "KarhunenLoeve", "KarhunenLoevePath", "WienerPath", "register",
]


def _no_generator_with_path(generator: object) -> None:
    if generator is not None:
        raise odeplug.InvalidArgumentError(
            "wong_zakai(problem, path, generator=...): a sampled path is already drawn, so the "
            "generator would be unused. Drop generator=, or pass the approximation (e.g. "
            "KarhunenLoeve(terms=10)) instead of the path."
        )


def register() -> None:
    """The plugin's hook."""

    @odeplug.register
    def sample(approximation: KarhunenLoeve, like: torch.Tensor, t0, t1, *, generator=None):
        return sample_karhunen_loeve(approximation, like, t0, t1, generator=generator)

    @odeplug.register
    def wong_zakai(problem: SDEProblem, approximation: WienerApproximation, *, generator=None):
        return wong_zakai_approximation(problem, approximation, generator)

    @odeplug.register
    def wong_zakai(problem: SDEProblem, path: WienerPath, *, generator=None):  # noqa: F811
        _no_generator_with_path(generator)
        return wong_zakai_path(problem, path)

    @odeplug.register
    def solve(problem: SDEProblem, solver: Solver, rule: GradientRule, **options):
        # An SDE with an ODE solver: the Wong–Zakai shortcut.
        wiener = options.pop("wiener", None)
        generator = options.pop("generator", None)
        if wiener is None:
            raise odeplug.UnsupportedCombinationError(
                f"solve(SDEProblem, {type(solver).__name__}, {type(rule).__name__}): "
                f"{type(solver).__name__} is an ODE solver. Pass wiener= to solve the SDE as an "
                "ODE through the Wong–Zakai theorem, e.g. wiener=odeplug.KarhunenLoeve(terms=10), "
                "generator=torch.Generator().manual_seed(0); or solve it as an SDE with "
                "odeplug.SDESolver() and the rule Direct() or Adjoint()."
            )
        if not isinstance(wiener, (WienerApproximation, WienerPath)):
            raise odeplug.InvalidArgumentError(
                "solve(SDEProblem, ...): wiener must be an odeplug.WienerApproximation (such as "
                f"odeplug.KarhunenLoeve(terms=10)) or a sampled odeplug.WienerPath, got {wiener!r}."
            )
        ode = odeplug.wong_zakai(problem, wiener, generator=generator)
        return odeplug.solve(ode, solver, rule, **options)

    @odeplug.register
    def solve(problem: SDEProblem, solver: SDESolver, rule: GradientRule, **options):  # noqa: F811
        unsupported_rule(problem, solver, rule)

    @odeplug.register
    def solve(problem: SDEProblem, solver: SDESolver, rule: Direct, **options):  # noqa: F811
        return solve_torchsde(problem, solver, False, "solve(SDEProblem, SDESolver, Direct)", **options)

    @odeplug.register
    def solve(problem: SDEProblem, solver: SDESolver, rule: Adjoint, **options):  # noqa: F811
        reject_rule_options(rule)
        return solve_torchsde(problem, solver, True, "solve(SDEProblem, SDESolver, Adjoint)", **options)

    @odeplug.register
    def make_stepper(solver: SDESolver, field: VectorField, layout: Layout):  # noqa: F811
        not_an_ode_solver()

    odeplug.export(SDEProblem, SDESolver, KarhunenLoeve, KarhunenLoevePath, WienerPath)
