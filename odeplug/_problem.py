"""Problems: what is being solved. Validation happens here, once, before any loop runs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Union

import torch

from ._errors import InvalidArgumentError
from ._events import check_event
from ._layout import Layout
from ._nouns import Noun, final

__all__ = ["ODEProblem", "Problem", "State", "collect_params"]

State = Union[torch.Tensor, tuple[torch.Tensor, ...]]


class Problem(Noun):
    """Abstract: anything :func:`odeplug.solve` can solve (ODEs here; SDEs in a plugin)."""

    __slots__ = ()


@final
class ODEProblem(Problem):
    """dy/dt = f(t, y), y(ts[0]) = y0, observed at the output times ``ts``.

    Args:
        f: the vector field, called as ``f(t, y)`` with ``t`` a 0-d tensor and ``y`` shaped like
            ``y0`` (a tuple of tensors when ``y0`` is a tuple); returns dy/dt of the same shape.
            Any callable: every tensor it reads that requires grad (a module's parameters, a
            closure's tensors, tensors computed from parameters) gets its gradient, with every
            gradient rule.
        y0: the initial state, a floating tensor or a tuple of floating tensors.
        ts: 1-D floating tensor of output times, strictly increasing or strictly decreasing.
            ``ts[0]`` is the initial time. Set ``ts.requires_grad`` to get dL/dts.
        params: extra tensors whose gradients are wanted, a sequence (``params=[w]``), each
            counted once however often it is listed. Rarely needed: every rule gives
            gradients for every tensor f reads that requires grad (module parameters, closures,
            tensors computed from parameters), found by watching f's first evaluation and by
            collecting the tensors f holds (modules, closure cells, the globals its code names).
        stop_times: times every solver steps exactly onto (torchdiffeq's ``step_t``): a step
            that would pass one is shortened to end on it, and the step after it goes on with
            the size proposed before shortening and the last stage reused. A sequence of
            numbers or a 1-D tensor, in user time, in any order; times outside the span of
            ``ts`` are never reached. Not differentiated.
        jump_times: times where f (or a derivative of it) is discontinuous in t (torchdiffeq's
            ``jump_t``; a controlled differential equation's knots): a stop, and the step
            after it starts with a fresh evaluation of f just after the jump (at the next float
            in the direction of integration), while the stages of the step ending there see f
            just before it. Every gradient rule's backward solve does the same going backwards.
        callbacks: an object with any of torchdiffeq's step-callback methods
            ``callback_step``, ``callback_accept_step``, ``callback_reject_step`` (forward) and
            ``callback_step_adjoint``, ``callback_accept_step_adjoint``,
            ``callback_reject_step_adjoint`` (backward solves of the adjoint rules), each called
            as ``(t0, y0, dt)``. Those methods on ``f`` itself (an ``nn.Module``, as with
            torchdiffeq) are called too, f's first. See docs/methods/step-control.md.
        event: a terminal event: a function ``g(t, y)`` returning a floating tensor, each of
            whose elements is an event function, or a sequence of such functions. The solve
            ends at the first time t* in (ts[0], ts[-1]] where one of them crosses zero (each
            must be nonzero at ts[0]); the :class:`Solution` then ends there: its ``ts`` are the
            output times before t* followed by t*, its ``ys`` the states at those times,
            ``event_t`` is t* and ``event_index`` the element of g that crossed. t* and y(t*)
            are differentiable (through the implicit function theorem) with every gradient
            rule, also in the tensors g reads. See docs/methods/events.md.
    """

    __slots__ = ("f", "y0", "ts", "params", "layout", "is_tuple", "direction", "stop_times",
                 "jump_times", "callbacks", "_callbacks", "event")

    def __init__(
        self,
        f: Callable[..., Any],
        y0: State,
        ts: torch.Tensor,
        *,
        params: Sequence[torch.Tensor] | None = None,
        stop_times: Sequence[float] | torch.Tensor | None = None,
        jump_times: Sequence[float] | torch.Tensor | None = None,
        callbacks: Any = None,
        event: Callable[..., Any] | Sequence[Callable[..., Any]] | None = None,
    ) -> None:
        if not callable(f):
            raise InvalidArgumentError(
                f"ODEProblem: f must be callable as f(t, y), got {type(f).__name__}."
            )
        self.f = f
        self.is_tuple, self.y0 = _check_y0(y0)
        self.ts = _check_ts(ts, self.y0)
        self.params = collect_params("ODEProblem", (f,), params)
        self.layout = Layout.of(self.y0)
        self.direction = 1.0 if len(self.ts) < 2 or bool(self.ts[1] > self.ts[0]) else -1.0
        self.stop_times = _check_times("stop_times", stop_times, self.ts)
        self.jump_times = _check_times("jump_times", jump_times, self.ts)
        self.callbacks = callbacks
        self._callbacks = _resolve_callbacks(f, callbacks)
        self.event = check_event(event)

    def without_event(
        self, until: torch.Tensor | None = None, then: torch.Tensor | None = None
    ) -> ODEProblem:
        """The same problem with no event; with ``until`` (a 0-d time inside the span), its
        output times cut there: those before ``until``, then ``until`` itself (detached), then
        ``then`` (detached) if given and later still (the end of the step an event was found
        in, so that a solve to it takes the same steps)."""
        ts = self.ts
        if until is not None:
            before = (ts - until) * self.direction < 0
            ends = [until.detach().to(ts.dtype).reshape(1)]
            if then is not None and float((then - until) * self.direction) > 0:
                ends.append(then.detach().to(ts.dtype).reshape(1))
            ts = torch.cat([ts[before], *ends])
        return ODEProblem(self.f, self.y0, ts, params=self.params, stop_times=self.stop_times,
                          jump_times=self.jump_times, callbacks=self.callbacks)

    def step_callbacks(self, adjoint: bool = False) -> tuple[Any, Any, Any] | None:
        """The (step, accept, reject) callbacks as plain functions of (t_user, y_flat, dt),
        reshaping y as the user's state (forward) or as the augmented state's blocks (adjoint:
        ``None`` here; :func:`odeplug.backward.backsolve` reshapes); ``None`` when there are none."""
        found = self._callbacks[3:] if adjoint else self._callbacks[:3]
        if not any(found):
            return None
        if adjoint:
            return found
        unflatten = self.unflatten
        return tuple(
            None if cb is None else (lambda t, y, dt, cb=cb: cb(t, unflatten(y), dt)) for cb in found
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.y0.dtype if not self.is_tuple else self.y0[0].dtype

    @property
    def device(self) -> torch.device:
        return self.y0.device if not self.is_tuple else self.y0[0].device

    def flat_y0(self) -> torch.Tensor:
        """y0 as one flat buffer (differentiable)."""
        return self.layout.flatten(self.y0 if self.is_tuple else (self.y0,))

    def unflatten(self, flat: torch.Tensor) -> State:
        """A flat buffer (or a stack of them) back in the user's shape."""
        parts = self.layout.unflatten(flat)
        return parts if self.is_tuple else parts[0]

    def flat_field(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """f on flat buffers, with its output checked once for shape and dtype."""
        f, layout, is_tuple = self.f, self.layout, self.is_tuple
        dtype = self.dtype

        def checked(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            out = f(t, layout.unflatten(y) if is_tuple else y.view(layout.blocks[0].shape))
            _check_field_output(out, layout, is_tuple, dtype)
            flat_field.call = fast
            return layout.flatten(out) if is_tuple else out.reshape(-1)

        if is_tuple:

            def fast(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                return layout.flatten(f(t, layout.unflatten(y)))

        else:
            shape = layout.blocks[0].shape

            def fast(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                return f(t, y.view(shape)).reshape(-1)

        def flat_field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return flat_field.call(t, y)

        flat_field.call = checked  # type: ignore[attr-defined]
        # Properties of the problem every VectorField built on this function honours (so every
        # rule's forward and backward solve lands on them; see odeplug.VectorField).
        flat_field.stop_times = self.stop_times  # type: ignore[attr-defined]
        # A jump at the initial time is evaluated there as f defines it (as torchdiffeq does).
        jumps = self.jump_times
        if jumps is not None:
            jumps = jumps[jumps != self.ts[0].detach().to(jumps.dtype)]
            jumps = jumps if jumps.numel() else None
        flat_field.jump_times = jumps  # type: ignore[attr-defined]
        flat_field.step_callbacks = self.step_callbacks()  # type: ignore[attr-defined]
        flat_field.adjoint_callbacks = self.step_callbacks(adjoint=True)  # type: ignore[attr-defined]
        return flat_field


# torchdiffeq's step-callback method names: the forward solve's, then the backward solve's.
STEP_CALLBACKS = ("callback_step", "callback_accept_step", "callback_reject_step")
ADJOINT_STEP_CALLBACKS = tuple(name + "_adjoint" for name in STEP_CALLBACKS)


def _resolve_callbacks(f: Any, callbacks: Any) -> tuple[Any, ...]:
    """(step, accept, reject, step_adjoint, accept_adjoint, reject_adjoint): f's methods of
    those names, then ``callbacks``' (both called when both have one); ``None`` where absent."""
    names = STEP_CALLBACKS + ADJOINT_STEP_CALLBACKS
    if callbacks is not None and not any(callable(getattr(callbacks, n, None)) for n in names):
        raise InvalidArgumentError(
            f"ODEProblem: callbacks must be an object with at least one of the methods "
            f"{', '.join(names)} (each called as (t0, y0, dt)), got {type(callbacks).__name__}. "
            "Write a small class with e.g. def callback_accept_step(self, t0, y0, dt): ..."
        )
    resolved = []
    for name in names:
        found = [cb for cb in (getattr(f, name, None), getattr(callbacks, name, None)) if callable(cb)]
        if not found:
            resolved.append(None)
        elif len(found) == 1:
            resolved.append(found[0])
        else:
            first, second = found
            resolved.append(lambda t, y, dt, a=first, b=second: (a(t, y, dt), b(t, y, dt)))
    return tuple(resolved)


def _check_times(name: str, times: Any, ts: torch.Tensor) -> torch.Tensor | None:
    """Stop or jump times as a sorted, deduplicated 1-D tensor (float64 or wider, on ts's
    device), or ``None`` when there are none."""
    if times is None:
        return None
    if isinstance(times, torch.Tensor):
        if times.requires_grad:
            raise InvalidArgumentError(
                f"ODEProblem: {name} requires grad, but stop and jump times are not "
                f"differentiated; pass {name}=times.detach()."
            )
        if times.ndim > 1 or times.is_complex():
            raise InvalidArgumentError(
                f"ODEProblem: {name} must be a 1-D tensor or a sequence of numbers, got a tensor "
                f"of shape {tuple(times.shape)}; use {name}=times.reshape(-1)."
            )
        values = times.reshape(-1)
    else:
        try:
            values = torch.as_tensor(list(times), dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise InvalidArgumentError(
                f"ODEProblem: {name} must be a sequence of numbers or a 1-D tensor of times, got "
                f"{type(times).__name__}; e.g. {name}=[0.5, 1.5]."
            ) from None
        if values.ndim != 1:
            raise InvalidArgumentError(
                f"ODEProblem: {name} must be a flat sequence of times, got shape {tuple(values.shape)}."
            )
    dtype = torch.promote_types(torch.promote_types(values.dtype, ts.dtype), torch.float64)
    values = values.to(dtype=dtype, device=ts.device)
    if not bool(torch.isfinite(values).all()):
        raise InvalidArgumentError(f"ODEProblem: {name} contains NaN or infinite times.")
    if values.numel() == 0:
        return None
    return torch.unique(values)


def _check_y0(y0: Any) -> tuple[bool, State]:
    if isinstance(y0, torch.Tensor):
        _check_floating("y0", y0)
        return False, y0
    if isinstance(y0, (tuple, list)) and len(y0) > 0 and all(isinstance(t, torch.Tensor) for t in y0):
        for i, t in enumerate(y0):
            _check_floating(f"y0[{i}]", t)
        dtypes = {t.dtype for t in y0}
        if len(dtypes) > 1:
            raise InvalidArgumentError(
                f"ODEProblem: the tensors of a tuple y0 must share one dtype, got {sorted(map(str, dtypes))}; "
                "cast them, e.g. tuple(t.double() for t in y0)."
            )
        devices = {t.device for t in y0}
        if len(devices) > 1:
            raise InvalidArgumentError(
                f"ODEProblem: the tensors of a tuple y0 must be on one device, got {devices}."
            )
        return True, tuple(y0)
    raise InvalidArgumentError(
        f"ODEProblem: y0 must be a floating-point torch.Tensor or a non-empty tuple of them, got "
        f"{type(y0).__name__}. Wrap numbers with torch.tensor(..., dtype=torch.float64)."
    )


def _check_floating(name: str, t: torch.Tensor) -> None:
    if t.is_complex():
        raise InvalidArgumentError(
            f"ODEProblem: {name} is complex ({t.dtype}); odeplug solves real states. Solve its "
            f"real and imaginary parts instead: y0 = torch.view_as_real({name}) (a trailing axis "
            "of 2) with f returning torch.view_as_real(f_complex(t, torch.view_as_complex(y))), "
            "or the tuple (y0.real, y0.imag)."
        )
    if not torch.is_floating_point(t):
        raise InvalidArgumentError(
            f"ODEProblem: {name} must be a floating-point tensor, got dtype {t.dtype}; "
            f"use {name}.float() or {name}.double()."
        )
    if not bool(torch.isfinite(t).all()):
        raise InvalidArgumentError(f"ODEProblem: {name} contains NaN or infinite values.")


def _check_ts(ts: Any, y0: State) -> torch.Tensor:
    if not isinstance(ts, torch.Tensor):
        raise InvalidArgumentError(
            f"ODEProblem: ts must be a 1-D floating tensor of output times, got {type(ts).__name__}; "
            "use torch.linspace(t0, t1, n) or torch.tensor([...])."
        )
    if ts.ndim != 1:
        raise InvalidArgumentError(
            f"ODEProblem: ts must be 1-D (one output time per entry), got shape {tuple(ts.shape)}; "
            "use ts.reshape(-1) if the times are right."
        )
    if not torch.is_floating_point(ts):
        raise InvalidArgumentError(
            f"ODEProblem: ts must be floating point, got dtype {ts.dtype}; use ts.double()."
        )
    if len(ts) < 2:
        raise InvalidArgumentError(
            "ODEProblem: ts needs at least two times (the initial time and one output time), "
            f"got {len(ts)}."
        )
    if not bool(torch.isfinite(ts).all()):
        raise InvalidArgumentError("ODEProblem: ts contains NaN or infinite times.")
    diffs = ts[1:] - ts[:-1]
    if not (bool((diffs > 0).all()) or bool((diffs < 0).all())):
        bad = int(torch.nonzero((diffs <= 0) if diffs[0] > 0 else (diffs >= 0))[0, 0]) + 1
        raise InvalidArgumentError(
            "ODEProblem: ts must be strictly increasing or strictly decreasing; "
            f"ts[{bad - 1}] = {float(ts[bad - 1])} is followed by ts[{bad}] = {float(ts[bad])}. "
            "Sort the times and remove duplicates (torch.unique sorts and dedupes)."
        )
    device = y0[0].device if isinstance(y0, tuple) else y0.device
    if ts.device != device:
        raise InvalidArgumentError(
            f"ODEProblem: ts is on {ts.device} but y0 is on {device}; move one, e.g. ts.to(y0.device)."
        )
    return ts


def collect_params(
    owner: str, callables: Sequence[Any], params: Sequence[torch.Tensor] | None
) -> tuple[torch.Tensor, ...]:
    """The tensors a problem names for gradients, each once (by identity): ``params`` if given
    (checked), else the parameters that require grad of every ``nn.Module`` among
    ``callables``. Rules with their own backward add every other tensor f reads that requires
    grad (see :func:`odeplug.backward.field_inputs`), so ``params`` is rarely needed."""
    if params is not None:
        if isinstance(params, torch.Tensor):
            raise InvalidArgumentError(
                f"{owner}: params must be a sequence of tensors, got one tensor; write params=[w] "
                "(or params=list(module.parameters()))."
            )
        params = tuple(params)
        for i, p in enumerate(params):
            if not isinstance(p, torch.Tensor):
                raise InvalidArgumentError(
                    f"{owner}: params[{i}] must be a tensor, got {type(p).__name__}."
                )
        candidates = params
    else:
        candidates = tuple(
            p for fn in callables if isinstance(fn, torch.nn.Module) for p in fn.parameters()
            if p.requires_grad
        )
    seen: dict[int, torch.Tensor] = {}
    for p in candidates:
        seen.setdefault(id(p), p)
    return tuple(seen.values())


def _check_field_output(out: Any, layout: Layout, is_tuple: bool, dtype: torch.dtype) -> None:
    if is_tuple:
        if not isinstance(out, (tuple, list)) or len(out) != len(layout.blocks):
            raise InvalidArgumentError(
                f"ODEProblem: f returned {type(out).__name__}"
                f"{f' of length {len(out)}' if isinstance(out, (tuple, list)) else ''}, but y0 is "
                f"a tuple of {len(layout.blocks)} tensors: f must return a tuple of the same length."
            )
        parts = list(out)
    else:
        parts = [out]
    for block, part in zip(layout.blocks, parts):
        if not isinstance(part, torch.Tensor):
            raise InvalidArgumentError(
                f"ODEProblem: f returned {type(part).__name__} for {block.name}; it must return "
                "a tensor shaped like the state."
            )
        if tuple(part.shape) != block.shape:
            raise InvalidArgumentError(
                f"ODEProblem: f returned shape {tuple(part.shape)} for {block.name}, whose shape "
                f"is {block.shape}; dy/dt must have the state's shape."
            )
        if part.dtype != dtype:
            raise InvalidArgumentError(
                f"ODEProblem: f returned dtype {part.dtype} for {block.name}, but the state is "
                f"{dtype}; cast the output (or the model: model.to({dtype}))."
            )
