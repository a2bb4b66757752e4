"""Second-order ODEs as first-order ones on (position, velocity)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

import odeplug
from odeplug import InvalidArgumentError, ODEProblem, Problem, final
from odeplug._problem import collect_params

__all__ = ["SecondOrderProblem", "first_order_ode"]


@final
class SecondOrderProblem(Problem):
    """y'' = f(t, y, y'), y(ts[0]) = y0, y'(ts[0]) = v0, observed at ``ts``.

    :func:`odeplug.first_order` turns it into the ODE on the tuple state (y, v):
    dy/dt = v, dv/dt = f(t, y, v), whose solution's ``ys`` is the pair (positions, velocities).
    With a learned f this is a second-order neural ODE (Norcliffe, Bodnar, Day, Simidjievski &
    Liò, "On Second Order Behaviour in Augmented Neural ODEs", NeurIPS 2020).

    Args:
        f: the acceleration, called as ``f(t, y, v)`` with ``y`` and ``v`` shaped like ``y0``;
            returns a tensor of that shape.
        y0, v0: the initial position and velocity, floating tensors of one shape and dtype.
        ts: 1-D output times, strictly increasing or strictly decreasing.
        params: as for :class:`odeplug.ODEProblem` (rarely needed).
    """

    __slots__ = ("f", "y0", "v0", "ts", "params", "direction")

    def __init__(
        self,
        f: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        y0: torch.Tensor,
        v0: torch.Tensor,
        ts: torch.Tensor,
        *,
        params: Sequence[torch.Tensor] | None = None,
    ) -> None:
        if not callable(f):
            raise InvalidArgumentError(
                f"SecondOrderProblem: f must be callable as f(t, y, v), got {type(f).__name__}."
            )
        for name, x in (("y0", y0), ("v0", v0)):
            if not isinstance(x, torch.Tensor):
                raise InvalidArgumentError(
                    f"SecondOrderProblem: {name} must be a floating tensor, got {type(x).__name__}."
                )
        if y0.shape != v0.shape or y0.dtype != v0.dtype:
            raise InvalidArgumentError(
                f"SecondOrderProblem: v0 must have y0's shape and dtype (one velocity per "
                f"position), got y0 {tuple(y0.shape)} {y0.dtype} and v0 {tuple(v0.shape)} {v0.dtype}."
            )
        try:  # the core's checks of the state and ts, with this problem's names
            probe = ODEProblem(f, (y0, v0), ts)
        except InvalidArgumentError as exc:
            message = str(exc).replace("ODEProblem:", "SecondOrderProblem:", 1)
            raise InvalidArgumentError(message.replace("y0[0]", "y0").replace("y0[1]", "v0")) from None
        self.f = f
        self.y0 = y0
        self.v0 = v0
        self.ts = probe.ts
        self.params = collect_params("SecondOrderProblem", (f,), params)
        self.direction = probe.direction


def first_order_ode(problem: SecondOrderProblem) -> ODEProblem:
    """dy/dt = v, dv/dt = f(t, y, v) on the tuple state (y, v), from (y0, v0)."""
    f = problem.f

    def first(t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        y, v = state
        acceleration = f(t, y, v)
        # Checked against the state it is given, which an augmentation may have widened.
        shape, dtype = tuple(y.shape), y.dtype
        if not isinstance(acceleration, torch.Tensor) or tuple(acceleration.shape) != shape or acceleration.dtype != dtype:
            got = (
                f"{tuple(acceleration.shape)} {acceleration.dtype}"
                if isinstance(acceleration, torch.Tensor) else type(acceleration).__name__
            )
            raise InvalidArgumentError(
                f"first_order(SecondOrderProblem): f(t, y, v) returned {got}; it must return the "
                f"acceleration y'' with y's shape and dtype, {shape} {dtype}."
            )
        field.call = fast
        return v, acceleration

    def fast(t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        y, v = state
        return v, f(t, y, v)

    def field(t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return field.call(t, state)

    field.call = first  # type: ignore[attr-defined]
    return odeplug.ODEProblem(field, (problem.y0, problem.v0), problem.ts, params=problem.params)
