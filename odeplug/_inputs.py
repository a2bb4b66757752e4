"""What a vector field depends on: the tensors whose gradients a rule must return, found by
watching one evaluation, and whether the field draws random numbers.

A rule that differentiates through the field itself (Direct) needs none of this: autograd
follows every tensor. Rules that re-evaluate the field inside their own ``backward`` (the
adjoints, ACA) must return a gradient for every tensor f reads that requires grad: module
parameters, but also tensors captured by a closure, tensor attributes that are not
``Parameter``\\ s, and tensors *computed* from parameters before the solve (``softplus(raw)``, a
hypernetwork's output, spline coefficients). The last kind is returned as itself, not as the
parameter behind it: autograd then carries its gradient on to ``raw`` through the graph that made
it, once, even when the loss uses that graph elsewhere too (VJPs that stop at the tensor never
run, and so never free, the shared part).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager

import attrs
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from torch.utils.checkpoint import get_device_states, set_device_states

from ._nouns import final

__all__ = ["FieldInputs", "RNGState", "field_inputs", "held_tensors"]


@final
class _Reads(TorchFunctionMode):
    """Watches one evaluation of a field. Records every tensor that requires grad passed to a
    torch operation and not made by an earlier one in the same evaluation: the tensors the
    field closes over. (Run under ``no_grad``, new tensors do not require grad, except views of
    ones that do, such as ``w.T``: those are made inside and are not inputs.) Also notes the
    version of every other tensor from outside it reads, to tell which ones it changes in place
    (BatchNorm's running statistics)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: dict[int, torch.Tensor] = {}
        self.made: dict[int, torch.Tensor] = {}  # kept alive so that no id is reused meanwhile
        self.read: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # (tensor, its value then)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        for x in tree_flatten((args, kwargs))[0]:
            if not isinstance(x, torch.Tensor) or id(x) in self.made:
                continue
            if x.requires_grad:
                self.found.setdefault(id(x), x)
            elif id(x) not in self.read and _has_memory(x):
                self.read[id(x)] = (x, x.clone())
        out = func(*args, **kwargs)
        for x in tree_flatten(out)[0]:
            if isinstance(x, torch.Tensor) and id(x) not in self.read:
                self.made[id(x)] = x
        return out

    def changed(self) -> tuple[torch.Tensor, ...]:
        """The outside tensors the evaluation changed in place."""
        return tuple(x for x, before in self.read.values() if _has_memory(x) and not torch.equal(x, before))


def _has_memory(x: torch.Tensor) -> bool:
    """False for a tensor whose storage was freed (FSDP's gathered parameters between uses):
    copying it to watch for in-place changes would read freed memory (a crash), and nothing can
    change it in place anyway."""
    try:
        return x.numel() == 0 or x.untyped_storage().nbytes() > 0
    except (RuntimeError, NotImplementedError, TypeError):  # tensor subclasses: as before
        return True


@final
@attrs.frozen(eq=False)
class RNGState:
    """The state of the global random number generators a field draws from: the CPU one and
    those of the accelerators its tensors live on. Captured, restored and forked with the
    helpers ``torch.utils.checkpoint`` replays a checkpointed function's random draws with
    (``get_device_states``, ``set_device_states``, ``torch.random.fork_rng``)."""

    cpu: torch.Tensor
    device_type: str
    devices: tuple[int, ...]
    device_states: tuple[torch.Tensor, ...]

    @staticmethod
    def capture(*tensors: torch.Tensor) -> RNGState:
        """The generators' state now, for the devices of ``tensors``."""
        devices, states = get_device_states(*tensors)
        device_type = next((t.device.type for t in tensors if t.device.type != "cpu"), "cpu")
        return RNGState(torch.get_rng_state(), device_type, tuple(devices), tuple(states))

    def restore(self) -> None:
        """Put the generators back in this state: the next draws repeat those made after it."""
        torch.set_rng_state(self.cpu)
        set_device_states(self.devices, self.device_states, device_type=self.device_type)

    def fork(self) -> AbstractContextManager[None]:
        """A context on whose exit the same generators are back where they were on entry."""
        return torch.random.fork_rng(devices=self.devices, device_type=self.device_type)

    def same_as(self, other: RNGState) -> bool:
        return torch.equal(self.cpu, other.cpu) and all(
            torch.equal(a, b) for a, b in zip(self.device_states, other.device_states)
        )


@final
@attrs.frozen
class FieldInputs:
    """The result of :func:`field_inputs`.

    Attributes:
        tensors: every tensor the field read that requires grad, with the problem's explicit
            ``params`` that it did not read through another of them, each once (by identity).
        value: the evaluation made to find them, F(t0, y0), reusable as the solve's first stage.
        uses_rng: the evaluation advanced the global random number generator (Dropout in train
            mode, noise drawn inside f).
        state: tensors from outside f that it changes in place, such as the running statistics
            of a BatchNorm layer in train mode (of a module f is, or closes over).
    """

    tensors: tuple[torch.Tensor, ...]
    value: torch.Tensor
    uses_rng: bool
    state: tuple[torch.Tensor, ...] = ()


def _ancestors(tensors: Iterable[torch.Tensor]) -> set[int]:
    """Ids of the leaves that the graphs of ``tensors`` reach."""
    seen: set[int] = set()
    leaves: set[int] = set()
    stack = [t.grad_fn for t in tensors if t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)  # AccumulateGrad: the leaf it accumulates into
        if variable is not None:
            leaves.add(id(variable))
        stack.extend(next_node for next_node, _ in node.next_functions)
    return leaves


_HELD_DEPTH = 6  # closures of closures of bound methods of modules, and no further
_HELD_ITEMS = 64  # a list or dict larger than this is data, not what a field is built from


def held_tensors(f: object) -> list[torch.Tensor]:
    """The tensors requiring grad that ``f`` holds, whether or not one evaluation reads them:
    parameters and tensor attributes of the modules it is or closes over, closure cells, bound
    ``self``, ``functools.partial`` arguments, the module globals a function's code names, small
    containers of those. A field that reads a tensor only on some calls — f = A₁y before t*, A₂y
    after — would otherwise have A₂ missed by watching its first evaluation, and its gradient
    silently dropped by every rule that re-evaluates f."""
    found: dict[int, torch.Tensor] = {}
    seen: set[int] = set()
    stack: list[tuple[object, int]] = [(f, 0)]
    while stack:
        obj, depth = stack.pop()
        if id(obj) in seen or depth > _HELD_DEPTH:
            continue
        seen.add(id(obj))
        inner: Iterable[object] = ()
        if isinstance(obj, torch.Tensor):
            if obj.requires_grad:
                found.setdefault(id(obj), obj)
        elif isinstance(obj, torch.nn.Module):
            inner = (*obj.parameters(), *(m for m in obj.modules() if m is not obj),
                     *(v for v in vars(obj).values() if not isinstance(v, dict)))
        elif isinstance(obj, functools.partial):
            inner = (obj.func, *obj.args, *obj.keywords.values())
        elif inspect.ismethod(obj):
            inner = (obj.__self__, obj.__func__)
        elif inspect.isfunction(obj):
            # Its closure cells, and the module globals its code names (a notebook's f reads
            # A1 and A2 as globals), not the whole module.
            inner = (*(cell.cell_contents for cell in obj.__closure__ or () if _cell_filled(cell)),
                     *(obj.__globals__[name] for name in obj.__code__.co_names
                       if name in obj.__globals__))
        elif isinstance(obj, (list, tuple)) and len(obj) <= _HELD_ITEMS:
            inner = obj
        elif isinstance(obj, dict) and len(obj) <= _HELD_ITEMS:
            inner = obj.values()
        stack.extend((item, depth + 1) for item in inner)
    return list(found.values())


def _cell_filled(cell: object) -> bool:
    try:
        cell.cell_contents  # type: ignore[attr-defined]  # noqa: B018
    except ValueError:  # a closure variable not yet assigned
        return False
    return True


def field_inputs(
    field: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    t0: torch.Tensor,
    y0: torch.Tensor,
    params: Sequence[torch.Tensor] = (),
    held: Sequence[torch.Tensor] = (),
) -> FieldInputs:
    """Evaluate ``field(t0, y0)`` once, without a graph, and find what it depends on: what it
    reads, and what it ``held`` (:func:`held_tensors` of the user's f) without reading it then.

    Explicit ``params`` and held tensors are kept unless the field reads them only through a
    tensor made from them (a ``params=[raw]`` next to a closure over ``softplus(raw)``): their
    gradient then reaches them through that tensor, and returning it directly as well would
    count it twice.
    """
    t0, y0 = t0.detach(), y0.detach()  # before watching: detaching them would be a read of them
    before = RNGState.capture(y0)
    reads = _Reads()
    with torch.no_grad(), reads:
        value = field(t0, y0)
    uses_rng = not before.same_as(RNGState.capture(y0))
    found = dict(reads.found)
    for t in held:  # derived ones first: what they are made from is then behind them
        if t.grad_fn is not None:
            found.setdefault(id(t), t)
    derived = [t for t in found.values() if t.grad_fn is not None]
    behind = _ancestors(derived) if derived and (params or held) else set()
    for p in (*params, *held):
        if p.requires_grad and id(p) not in found and id(p) not in behind:
            found[id(p)] = p
    return FieldInputs(tuple(found.values()), value, uses_rng, reads.changed())
