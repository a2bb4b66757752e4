"""The compiled path (``compile=True`` on the Runge–Kutta solvers): the same solution and the
same gradients as the eager path, to rounding, with every evaluation counted, one compilation
reused by later solves, and bad modes refused.

Compiling costs seconds, so these tests share one small field and few solves.
"""

from __future__ import annotations

import math

import pytest
import torch

import odeplug

torch_compile = pytest.importorskip("torch._dynamo")


class Field(torch.nn.Module):
    """A small MLP field whose parameters are differentiated."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y) - y


def _solve_and_grad(solver: odeplug.Solver, rule: odeplug.GradientRule, field: Field
                    ) -> tuple[torch.Tensor, list[torch.Tensor], dict]:
    y0 = torch.linspace(-1, 1, 6, dtype=torch.float64).reshape(3, 2).requires_grad_()
    ts = torch.linspace(0, 2, 5, dtype=torch.float64)
    field.zero_grad()
    sol = odeplug.solve(odeplug.ODEProblem(field, y0, ts), solver, rule)
    (sol.ys ** 2).sum().backward()
    grads = [y0.grad] + [p.grad.clone() for p in field.parameters()]
    return sol.ys.detach(), grads, sol.stats


@pytest.fixture(scope="module")
def field() -> Field:
    return Field().double()


@pytest.mark.parametrize("rule", [odeplug.Direct(), odeplug.ACA(), odeplug.Adjoint()],
                         ids=["Direct", "ACA", "Adjoint"])
def test_compiled_dopri5_matches_eager(field: Field, rule: odeplug.GradientRule) -> None:
    eager = _solve_and_grad(odeplug.Dopri5(rtol=1e-6, atol=1e-8), rule, field)
    compiled = _solve_and_grad(odeplug.Dopri5(rtol=1e-6, atol=1e-8, compile=True), rule, field)
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-10, atol=1e-12)
    for got, want in zip(compiled[1], eager[1]):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)
    # Every evaluation counted, the same steps taken.
    for key in ("nfe", "steps_accepted", "steps_rejected", "nfe_backward"):
        assert compiled[2].get(key) == eager[2].get(key), key


def _exponential(solver: odeplug.Solver) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """dz/dt = az, z0 = 2, a = 0.3, on [0, 1.5]: z(T) and dL/da for L = z(T)²."""
    a = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    z0 = torch.tensor([2.0], dtype=torch.float64)
    ts = torch.tensor([0.0, 0.7, 1.5], dtype=torch.float64)
    sol = odeplug.solve(odeplug.ODEProblem(lambda t, z: a * z, z0, ts, params=[a]), solver, odeplug.Direct())
    (sol.ys[-1] ** 2).sum().backward()
    return sol.ys.detach(), a.grad, sol.stats


def test_compiled_fixed_step_matches_eager_and_the_closed_form() -> None:
    """RK4 compiled against RK4 eager (to rounding) and against z(T) = z0 e^{aT},
    dL/da = 2 T z(T)² (to RK4's error at dt = 0.05)."""
    ys, grad, stats = _exponential(odeplug.RK4(dt=0.05, compile=True))
    ys_eager, grad_eager, stats_eager = _exponential(odeplug.RK4(dt=0.05))
    torch.testing.assert_close(ys, ys_eager, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, grad_eager, rtol=1e-12, atol=0)
    assert stats["nfe"] == stats_eager["nfe"]
    zT = 2.0 * math.exp(0.3 * 1.5)
    assert float(ys[-1, 0]) == pytest.approx(zT, rel=1e-8)
    assert float(grad) == pytest.approx(2 * 1.5 * zT**2, rel=1e-7)


def test_a_continuous_adjoints_backward_solve_runs_eagerly() -> None:
    """The adjoint system calls torch.autograd.grad, which torch.compile cannot trace: the
    backward solve of a compiled forward solver is the eager one."""
    from odeplug._backsolve import backward_solver

    forward = odeplug.Dopri5(compile=True)
    assert backward_solver(forward, odeplug.Adjoint()).compile is False
    assert backward_solver(forward, odeplug.Adjoint(solver=forward)).compile is True


def test_a_second_solve_reuses_the_compiled_step(field: Field) -> None:
    """New problem, new stepper, new field closure: no recompilation (a guard on a Python
    counter or on an object made per solve would recompile every call)."""
    from torch._dynamo.utils import counters

    solver = odeplug.Dopri5(rtol=1e-5, atol=1e-7, compile=True)
    _solve_and_grad(solver, odeplug.Direct(), field)
    before = counters["stats"]["unique_graphs"]
    for _ in range(3):
        _solve_and_grad(solver, odeplug.Direct(), field)
    assert counters["stats"]["unique_graphs"] == before


@pytest.mark.parametrize("mode", ["fast", 1, None])
def test_unknown_compile_mode_is_refused(mode: object) -> None:
    with pytest.raises(odeplug.InvalidOptionError, match="compile must be True, False or a torch.compile mode"):
        odeplug.Dopri5(compile=mode)
    with pytest.raises(odeplug.InvalidOptionError, match="compile"):
        odeplug.RK4(dt=0.1, compile=mode)
