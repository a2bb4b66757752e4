"""Every bad input gets an error that names the argument and says what to do."""

import re

import pytest
import torch

import odeplug as op

f64 = torch.float64


def decay(t, y):
    return -y


def test_times_must_be_one_dimensional():
    with pytest.raises(op.InvalidArgumentError, match=r"ts must be 1-D.*reshape"):
        op.ODEProblem(decay, torch.ones(2), torch.zeros(2, 2))


def test_times_must_be_strictly_monotone_and_say_where():
    ts = torch.tensor([0.0, 1.0, 1.0, 2.0])
    with pytest.raises(op.InvalidArgumentError, match=r"ts\[1\] = 1.0 is followed by ts\[2\] = 1.0.*Sort"):
        op.ODEProblem(decay, torch.ones(2), ts)
    with pytest.raises(op.InvalidArgumentError, match="strictly increasing or strictly decreasing"):
        op.ODEProblem(decay, torch.ones(2), torch.tensor([0.0, 2.0, 1.0]))


def test_times_need_two_points_and_floats():
    with pytest.raises(op.InvalidArgumentError, match="at least two times"):
        op.ODEProblem(decay, torch.ones(2), torch.tensor([0.0]))
    with pytest.raises(op.InvalidArgumentError, match=r"floating point.*double"):
        op.ODEProblem(decay, torch.ones(2), torch.tensor([0, 1]))


def test_y0_must_be_a_floating_tensor_or_tuple_of_them():
    with pytest.raises(op.InvalidArgumentError, match=r"y0 must be a floating-point tensor.*\.float\(\)"):
        op.ODEProblem(decay, torch.ones(2, dtype=torch.int64), torch.tensor([0.0, 1.0]))
    with pytest.raises(op.InvalidArgumentError, match=r"y0\[1\] must be a floating-point"):
        op.ODEProblem(decay, (torch.ones(2), torch.ones(2, dtype=torch.int32)), torch.tensor([0.0, 1.0]))
    with pytest.raises(op.InvalidArgumentError, match="tuple of them"):
        op.ODEProblem(decay, [1.0, 2.0], torch.tensor([0.0, 1.0]))
    with pytest.raises(op.InvalidArgumentError, match="NaN or infinite"):
        op.ODEProblem(decay, torch.tensor([float("nan")]), torch.tensor([0.0, 1.0]))


def test_field_returning_the_wrong_shape_or_dtype():
    ts = torch.tensor([0.0, 1.0], dtype=f64)
    y0 = torch.ones(3, dtype=f64)
    with pytest.raises(op.InvalidArgumentError, match=r"f returned shape \(2,\).*\(3,\)"):
        op.solve(op.ODEProblem(lambda t, y: y[:2], y0, ts))
    with pytest.raises(op.InvalidArgumentError, match=r"f returned dtype torch.float32.*cast"):
        op.solve(op.ODEProblem(lambda t, y: y.float(), y0, ts))
    with pytest.raises(op.InvalidArgumentError, match="must return a tuple of the same length"):
        op.solve(op.ODEProblem(lambda t, y: y[0], (y0, y0), ts))


def test_non_finite_state_says_at_which_time():
    # y' = exp(y) blows up in finite time; Euler with dt = 0.5 overflows in the step from t = 1.5.
    problem = op.ODEProblem(lambda t, y: torch.exp(y), torch.ones(1, dtype=f64), torch.tensor([0.0, 2.0], dtype=f64))
    with pytest.raises(op.NonFiniteStateError, match=r"NaN or infinite in the step from t=1.5 .*float64"):
        op.solve(problem, op.Euler(dt=0.5))


def test_blow_up_under_adaptive_control_is_reported():
    problem = op.ODEProblem(lambda t, y: y**2, torch.ones(1, dtype=f64), torch.tensor([0.0, 2.0], dtype=f64))
    with pytest.raises((op.StepSizeUnderflowError, op.NonFiniteStateError, op.StepBudgetExhaustedError)) as caught:
        op.solve(problem, op.Dopri5(rtol=1e-6, atol=1e-6, max_steps=100_000))
    # Whichever of the three stops it, the first time the message names is where the solve
    # stopped: at the blow-up, t = 1 (a pattern like "t=1" would also accept t=1.5 or t=10).
    where = float(re.search(r"\bt=([-+\d.e]+)", str(caught.value)).group(1).rstrip("."))
    assert 0.99 <= where <= 1.0, str(caught.value)


def test_step_size_underflow_names_the_time():
    # A jump discontinuity at t = 0.5 that no step can resolve at this tolerance in float32.
    def f(t, y):
        return torch.where(t < 0.5, torch.ones_like(y), 1e8 * torch.sin(1e8 * t) * torch.ones_like(y))

    problem = op.ODEProblem(f, torch.zeros(1, dtype=f64), torch.tensor([0.0, 1.0], dtype=f64))
    # Both this error and the step-budget one mention stiffness: the match is on what only this
    # one says, and on the time.
    with pytest.raises(op.StepSizeUnderflowError, match=r"step size underflowed \(t \+ h == t\) at t=0\.5:"):
        op.solve(problem, op.Dopri5(rtol=1e-12, atol=1e-12, max_steps=20_000))


def test_max_steps_exhausted_says_where_and_how_many():
    problem = op.ODEProblem(lambda t, y: torch.cos(t) * torch.ones_like(y), torch.zeros(1, dtype=f64),
                            torch.tensor([0.0, 100.0], dtype=f64))
    with pytest.raises(op.StepBudgetExhaustedError, match=r"max_steps=5 steps were attempted.*stopped at t=.*Raise"):
        op.solve(problem, op.Dopri5(max_steps=5))


def test_unknown_solver_option_suggests_the_right_one():
    with pytest.raises(op.InvalidOptionError, match=r"'rtoll' \(did you mean 'rtol'\?\).*valid options"):
        op.Dopri5(rtoll=1e-3)
    with pytest.raises(op.InvalidOptionError, match="keyword options only"):
        op.Dopri5(1e-3)
    with pytest.raises(op.InvalidOptionError, match=r"pass one of them: RK4\(dt=0.1\) for a uniform grid"):
        op.RK4(dt=0.1, grid=[0.0, 0.5, 1.0])
    with pytest.raises(op.InvalidOptionError, match="rtol and atol cannot both be 0"):
        op.Dopri5(rtol=0.0, atol=0.0)
    with pytest.raises(op.InvalidOptionError, match="norm must be an odeplug.Norm"):
        op.Dopri5(norm="rms")


def test_unknown_solve_options_are_not_dropped():
    problem = op.ODEProblem(decay, torch.ones(1), torch.tensor([0.0, 1.0]))
    with pytest.raises(op.InvalidArgumentError, match=r"unknown option\(s\) 'rtol'"):
        op.solve(problem, op.Dopri5(), op.Direct(), rtol=1e-3)


def test_solve_arguments_must_be_instances():
    problem = op.ODEProblem(decay, torch.ones(1), torch.tensor([0.0, 1.0]))
    with pytest.raises(op.InvalidArgumentError, match="solver must be an odeplug.Solver instance"):
        op.solve(problem, "dopri5")
    with pytest.raises(op.InvalidArgumentError, match="rule must be an odeplug.GradientRule instance"):
        op.solve(problem, op.Dopri5(), op.Direct)
    with pytest.raises(op.InvalidArgumentError, match="problem must be an odeplug problem"):
        op.solve((decay, torch.ones(1)), op.Dopri5())


def test_unsupported_combination_explains_itself():
    problem = op.ODEProblem(decay, torch.ones(1), torch.tensor([0.0, 1.0]))
    with pytest.raises(op.UnsupportedCombinationError, match="supports only the Direct rule"):
        op.solve(problem, op.TorchDiffEq(), op.Adjoint())
    with pytest.raises(op.InvalidOptionError, match="unknown method 'rk99'"):
        op.TorchDiffEq(method="rk99")


def test_options_a_class_declares_positional_may_be_given_positionally():
    assert op.KarhunenLoeve(10) == op.KarhunenLoeve(terms=10)
    assert op.TorchDiffEq("bosh3").method == "bosh3"
    with pytest.raises(op.InvalidOptionError, match=r"at most 1 positional option\(s\) \(terms\)"):
        op.KarhunenLoeve(10, 3)
    with pytest.raises(op.InvalidOptionError, match="'terms' twice"):
        op.KarhunenLoeve(10, terms=3)
