"""check_solver catches planted bugs, each under the property it breaks (and the unplanted
solver passes that same property, so every test here can fail both ways)."""

import attrs
import pytest
import torch
from hypothesis import Phase
from hypothesis import settings as Settings

import odeplug as op
from odeplug import _dispatch
from odeplug.testing._properties import CheckFailed, check_settings, enforce
from odeplug.testing._solver_check import (
    DENSE,
    MIRRORED,
    ORDER,
    check_solver,
    rule_property_name,
    skipped_solver_properties,
    solver_properties,
)
from odeplug_solvers import RungeKuttaStepper, linear_dense_output


@op.configuration
class RK4DeclaringFive(op.FixedStepRungeKutta):
    """The classical fourth-order method with a tableau that claims order 5."""

    tableau = attrs.evolve(op.RK4.tableau, name="RK4DeclaringFive", order=5)


@op.configuration
class Dopri5LinearDense(op.AdaptiveRungeKutta):
    """Dopri5 whose dense output interpolates linearly between the step's ends (order 2)."""

    tableau = attrs.evolve(op.Dopri5.tableau, name="Dopri5LinearDense",
                           dense=linear_dense_output(op.Dopri5.tableau.b))


@op.configuration
class DirectionBlind(op.AdaptiveRungeKutta):
    """Dopri5 whose stepper evaluates f without the field's time direction."""

    tableau = op.Dopri5.tableau


@op.configuration
class FivePercentOff(op.GradientRule):
    """Direct's solve with every gradient scaled by 1.05."""


class _Scale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ys):
        return ys.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * 1.05


@pytest.fixture(scope="module", autouse=True)
def planted_methods():
    """The planted solver's stepper and the planted rule, registered while these tests run."""

    @op.register
    def make_stepper(solver: DirectionBlind, field: op.VectorField, layout: op.Layout):
        return RungeKuttaStepper(solver.tableau, op.VectorField(field.fn), layout,
                                 rtol=solver.rtol, atol=solver.atol, norm=op.MixedNorm(),
                                 max_steps=solver.max_steps)

    @op.register
    def solve(problem: op.ODEProblem, solver: op.Solver, rule: FivePercentOff):
        sol = op.solve(problem, solver, op.Direct())
        return op.Solution(_Scale.apply(sol.ys), sol.ts, sol.stats)

    yield
    _dispatch.unregister_for_tests("make_stepper", (DirectionBlind, op.VectorField, op.Layout))
    _dispatch.unregister_for_tests("solve", (op.ODEProblem, op.Solver, FivePercentOff))


# A planted bug fails at once: no shrinking (each example is several solves), one failure.
FAST = Settings(check_settings(), max_examples=3, phases=(Phase.explicit, Phase.generate),
                report_multiple_bugs=False)


def _run(solver, name, **options):
    enforce([p for p in solver_properties(solver, settings=FAST, **options) if p.name == name])


def test_an_order_four_method_declaring_five_fails_the_order():
    with pytest.raises(CheckFailed) as failure:
        check_solver(RK4DeclaringFive(dt=0.1), settings=FAST)
    assert failure.value.property == ORDER
    assert "declared 5" in failure.value.detail
    _run(op.RK4(dt=0.1), ORDER)


def test_a_linear_dense_output_fails_the_dense_output_order():
    with pytest.raises(CheckFailed) as failure:
        check_solver(Dopri5LinearDense(), settings=FAST)
    assert failure.value.property == DENSE
    _run(op.Dopri5(), DENSE)


def test_a_stepper_blind_to_the_time_direction_fails_the_mirror():
    with pytest.raises(CheckFailed) as failure:
        check_solver(DirectionBlind(), settings=FAST)
    assert failure.value.property == MIRRORED
    _run(op.Dopri5(), MIRRORED)


def test_a_rule_five_percent_off_fails_its_gradient_property():
    rules = {"FivePercentOff": FivePercentOff()}
    with pytest.raises(CheckFailed) as failure:
        check_solver(op.Dopri5(), rules=rules, settings=FAST)
    assert failure.value.property == rule_property_name("FivePercentOff")
    _run(op.Dopri5(), rule_property_name("Adjoint"), rules={"Adjoint": op.Adjoint()})


def test_a_solver_without_an_order_is_told_what_to_register():
    @op.configuration
    class Undeclared(op.Solver):
        pass

    @op.register
    def make_stepper(solver: Undeclared, field: op.VectorField, layout: op.Layout):
        return RungeKuttaStepper(op.RK4.tableau, field, layout, dt=0.1, max_steps=10_000)

    try:
        with pytest.raises(CheckFailed) as failure:
            _run(Undeclared(), ORDER)
    finally:
        _dispatch.unregister_for_tests("make_stepper", (Undeclared, op.VectorField, op.Layout))
    assert failure.value.property == ORDER
    assert "def order(solver: Undeclared)" in failure.value.detail


def test_a_bridge_that_cannot_step_skips_order_and_stepping_rules_with_their_reasons():
    skipped = skipped_solver_properties(op.TorchDiffEq())
    assert "cannot be driven step by step" in skipped[ORDER]
    assert "Direct rule" in skipped[rule_property_name("Adjoint")]
    assert MIRRORED not in skipped
    assert skipped_solver_properties(op.Dopri5()) == {}
