"""float16 and bfloat16 states: the error control runs in float32, so nothing overflows in the
norm, and a tolerance the dtype cannot resolve gets a warning naming the smallest sensible one."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import odeplug


def _decay(dtype: torch.dtype, **tolerances: float) -> odeplug.Solution:
    problem = odeplug.ODEProblem(lambda t, y: -y, torch.tensor([1.0], dtype=dtype), torch.tensor([0.0, 1.0]))
    return odeplug.solve(problem, odeplug.Dopri5(**tolerances), odeplug.Direct())


def test_float16_at_default_tolerances_does_not_overflow() -> None:
    """Before, error / tolerance overflowed float16 (65504) and the solve failed with
    'check f for overflow'; now y(1) is e^{−1} to float16's resolution."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", odeplug.PrecisionWarning)
        sol = _decay(torch.float16)
    assert sol.ys.dtype == torch.float16
    assert float(sol.ys[-1, 0]) == pytest.approx(math.exp(-1), abs=4e-3)


@pytest.mark.parametrize(("dtype", "smallest"), [(torch.bfloat16, 0.7812), (torch.float16, 0.09766)])
def test_a_tolerance_below_100_epsilon_warns_with_the_smallest_sensible_value(dtype: torch.dtype, smallest: float) -> None:
    with pytest.warns(odeplug.PrecisionWarning, match=rf"rtol=1e-07 is below .* Use rtol >= {smallest}"):
        _decay(dtype)


def test_bfloat16_at_a_tolerance_it_resolves_gets_the_answer() -> None:
    """bfloat16 at rtol 0.01 (still warned: below 100 ε): y(1) = e^{−1} to bfloat16's 2–3 digits
    (at the default tolerances the many tiny steps' roundings used to leave y(1) = 0.996)."""
    with pytest.warns(odeplug.PrecisionWarning):
        sol = _decay(torch.bfloat16, rtol=1e-2, atol=1e-2)
    assert float(sol.ys[-1, 0]) == pytest.approx(math.exp(-1), abs=1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_single_and_double_precision_do_not_warn(dtype: torch.dtype) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", odeplug.PrecisionWarning)
        sol = _decay(dtype)
    assert float(sol.ys[-1, 0]) == pytest.approx(math.exp(-1), rel=1e-5)


def test_float16_step_control_accepts_loose_and_refines_tight() -> None:
    """The float32 error control is finite for float16 stages: at a loose tolerance no step is
    rejected, and a tighter one takes more steps (a norm that overflowed would reject all)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", odeplug.PrecisionWarning)
        loose = _decay(torch.float16, rtol=1e-1, atol=1e-1)
        tight = _decay(torch.float16, rtol=1e-3, atol=1e-5)
    assert loose.stats["steps_rejected"] == 0
    assert tight.stats["steps_accepted"] > loose.stats["steps_accepted"]
