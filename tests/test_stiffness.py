"""Stiff problems met by the explicit solvers: the stiffness test stops them early with an error
that names the implicit solvers, a step budget that cannot be met is refused before stepping,
and the stability limits the test uses are the published ones."""

from __future__ import annotations

import time

import pytest
import torch

import odeplug


def _van_der_pol(mu: float):
    def field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])

    return field


def _vdp_problem(mu: float, end: float) -> odeplug.ODEProblem:
    f64 = dict(dtype=torch.float64)
    return odeplug.ODEProblem(_van_der_pol(mu), torch.tensor([2.0, 0.0], **f64), torch.tensor([0.0, end], **f64))


@pytest.mark.parametrize(("method", "limit"), [
    ("Euler", 2.0),  # R(z) = 1 + z
    ("RK4", 2.785),  # Hairer & Wanner, Solving ODEs II, Fig. IV.2.1
    ("Dopri5", 3.306),  # ibid., and Hairer's DOPRI5 code (3.25 as its test's threshold)
])
def test_real_stability_limits_are_the_published_ones(method: str, limit: float) -> None:
    solver = getattr(odeplug, method)(dt=0.1) if method in ("Euler", "RK4") else getattr(odeplug, method)()
    assert solver.tableau.real_stability_limit == pytest.approx(limit, abs=2e-3)


def test_van_der_pol_is_called_stiff_within_seconds() -> None:
    """μ = 1000 on [0, 3000]: Dopri5 would run for minutes; the test stops it in seconds, and
    the error names the implicit solvers and the way to go on."""
    start = time.perf_counter()
    with pytest.raises(odeplug.StiffProblemError) as info:
        odeplug.solve(_vdp_problem(1000.0, 3000.0), odeplug.Dopri5(rtol=1e-6, atol=1e-6), odeplug.Direct())
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert "looks stiff" in message and "Kvaerno5" in message and "stiff_steps=None" in message


@pytest.mark.parametrize("method", ["Tsit5", "Bosh3"])
def test_every_adaptive_tableau_has_the_test(method: str) -> None:
    with pytest.raises(odeplug.StiffProblemError, match=method):
        odeplug.solve(_vdp_problem(1000.0, 3000.0), getattr(odeplug, method)(rtol=1e-5, atol=1e-5, stiff_steps=200),
                      odeplug.Direct())


def test_a_short_stiff_transient_is_not_an_error() -> None:
    """y' = −50 (y − cos t) on [0, 2]: stiff only mildly and briefly; fewer steps at the limit
    than the default count, so the solve finishes and is accurate."""
    f64 = dict(dtype=torch.float64)
    sol = odeplug.solve(
        odeplug.ODEProblem(lambda t, y: -50 * (y - torch.cos(t)), torch.tensor([0.0], **f64), torch.tensor([0.0, 2.0], **f64)),
        odeplug.Dopri5(rtol=1e-8, atol=1e-10), odeplug.Direct())
    # y = (2500 cos t + 50 sin t)/2501 − 2500/2501 e^{−50t}
    t = torch.tensor(2.0, **f64)
    exact = (2500 * torch.cos(t) + 50 * torch.sin(t)) / 2501 - 2500 / 2501 * torch.exp(-50 * t)
    assert float(sol.ys[-1, 0]) == pytest.approx(float(exact), abs=1e-7)


def test_stiff_steps_none_turns_the_test_off() -> None:
    solver = odeplug.Dopri5(rtol=1e-6, atol=1e-6, stiff_steps=None, max_steps=3000)
    with pytest.raises(odeplug.StepBudgetExhaustedError):
        odeplug.solve(_vdp_problem(1000.0, 3000.0), solver, odeplug.Direct())


def test_the_count_is_the_option() -> None:
    """stiff_steps=50 stops after 50 steps at the limit: fewer steps than the default."""
    counts = {}
    for steps in (50, 400):
        with pytest.raises(odeplug.StiffProblemError, match=f"for {steps} accepted steps"):
            odeplug.solve(_vdp_problem(1000.0, 3000.0), odeplug.Dopri5(rtol=1e-6, atol=1e-6, stiff_steps=steps),
                          odeplug.Direct())
        counts[steps] = steps
    assert counts == {50: 50, 400: 400}


@pytest.mark.parametrize("value", [0, -3, 2.5, True, "many"])
def test_bad_stiff_steps_are_refused(value: object) -> None:
    with pytest.raises(odeplug.InvalidOptionError, match="stiff_steps must be a positive int"):
        odeplug.Dopri5(stiff_steps=value)


def test_an_unmeetable_fixed_step_budget_is_refused_up_front() -> None:
    """1000 / 0.01 = 10⁵ steps against max_steps=1000: refused before f is evaluated once."""
    calls = []

    def field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls.append(t)
        return -y

    problem = odeplug.ODEProblem(field, torch.tensor([1.0]), torch.tensor([0.0, 1000.0]))
    with pytest.raises(odeplug.StepBudgetExhaustedError, match=r"needs at least 100000 steps of dt=0.01.*max_steps=1000"):
        odeplug.solve(problem, odeplug.RK4(dt=0.01, max_steps=1000), odeplug.Direct())
    assert calls == []


def test_an_unmeetable_max_step_budget_is_refused_up_front() -> None:
    problem = odeplug.ODEProblem(lambda t, y: -y, torch.tensor([1.0]), torch.tensor([0.0, 100.0]))
    with pytest.raises(odeplug.StepBudgetExhaustedError, match=r"at least 1000 steps of max_step=0.1"):
        odeplug.solve(problem, odeplug.Dopri5(max_step=0.1, max_steps=999), odeplug.Direct())
    # Enough (with room for the rounding of 1000 steps of 0.1) is allowed.
    sol = odeplug.solve(problem, odeplug.Dopri5(max_step=0.1, max_steps=1010, rtol=1e-3, atol=1e-3), odeplug.Direct())
    assert 1000 <= sol.stats["steps_accepted"] <= 1001
