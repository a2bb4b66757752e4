"""Problems: what is being solved. Validation happens here, once, before any loop runs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Union

import torch

from ._errors import InvalidArgumentError
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
            tensors computed from parameters), found by watching f's first evaluation.
    """

    __slots__ = ("f", "y0", "ts", "params", "layout", "is_tuple", "direction")

    def __init__(
        self,
        f: Callable[..., Any],
        y0: State,
        ts: torch.Tensor,
        *,
        params: Sequence[torch.Tensor] | None = None,
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
        return flat_field


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
