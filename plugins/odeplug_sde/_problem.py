"""The Stratonovich SDE problem: dz = f(t, z) dt + g(t, z) ∘ dW, z(ts[0]) = y0."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

import odeplug
from odeplug import InvalidArgumentError, Layout, Problem, final
from odeplug._problem import collect_params

__all__ = ["SDEProblem"]

_NOISE_TYPES = ("diagonal", "general")


@final
class SDEProblem(Problem):
    """The Stratonovich SDE dz = f(t, z) dt + g(t, z) ∘ dW_t, z(ts[0]) = y0, observed at ``ts``.

    Norcliffe & Deisenroth, "Faster Training of Neural ODEs Using Gauß–Legendre Quadrature",
    TMLR 2023, eq. (12). Solve it as an ODE through the Wong–Zakai theorem
    (``odeplug.solve(problem, odeplug.Dopri5(), rule, wiener=odeplug.KarhunenLoeve(terms=10))`` or
    :func:`odeplug.wong_zakai`), or as an SDE with :class:`odeplug.SDESolver` (torchsde).

    Args:
        drift: f, called as ``drift(t, z)`` with ``t`` a 0-d tensor and ``z`` shaped like ``y0``
            (or wider in its last dimension, when ``augment`` is applied after ``wong_zakai``);
            returns a tensor of ``z``'s shape. Shapes are checked against ``z`` on the first call.
        diffusion: g, called as ``diffusion(t, z)``. With ``noise="diagonal"`` it returns a tensor
            of ``y0``'s shape and each state element has its own Brownian motion (g ∘ dW is
            elementwise). With ``noise="general"`` it returns ``(*y0.shape, m)`` and the Brownian
            motion has shape ``(*y0.shape[:-1], m)``, one m-dimensional motion per row of ``y0``
            (``(g ∘ dW)_{..., i} = Σ_j g_{..., i, j} ∘ dW_{..., j}``), m = ``brownian_size``.
        y0: the initial state, a floating tensor with at least one dimension (the last one is the
            state's channels; leading ones are independent samples, as in torchsde).
        ts: 1-D floating tensor of output times, strictly increasing or strictly decreasing. A
            decreasing ``ts`` runs time backwards; W is then a Brownian motion in elapsed time
            |t − ts[0]|.
        noise: ``"diagonal"`` (default) or ``"general"``.
        brownian_size: m, the number of Brownian channels per row for ``noise="general"``.
        params: tensors f and g depend on whose gradients are wanted (default: the parameters
            that require grad of ``drift`` and ``diffusion`` where they are ``nn.Module``\\ s).
    """

    __slots__ = (
        "drift", "diffusion", "y0", "ts", "noise", "brownian_size", "params", "layout",
        "direction", "noise_shape",
    )

    def __init__(
        self,
        drift: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        diffusion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        y0: torch.Tensor,
        ts: torch.Tensor,
        *,
        noise: str = "diagonal",
        brownian_size: int | None = None,
        params: Sequence[torch.Tensor] | None = None,
    ) -> None:
        for name, fn in (("drift", drift), ("diffusion", diffusion)):
            if not callable(fn):
                raise InvalidArgumentError(
                    f"SDEProblem: {name} must be callable as {name}(t, z), got {type(fn).__name__}."
                )
        if isinstance(y0, (tuple, list)):
            raise InvalidArgumentError(
                "SDEProblem: y0 must be one floating tensor; tuple states are not supported for "
                "SDEs. Concatenate the parts along the last dimension (torch.cat(parts, dim=-1)) "
                "and split them inside drift and diffusion."
            )
        # Reuse the core's validation of y0 and ts (same rules, same messages).
        try:
            probe = odeplug.ODEProblem(_unused_field, y0, ts)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(str(exc).replace("ODEProblem:", "SDEProblem:", 1)) from None
        if y0.ndim == 0:
            raise InvalidArgumentError(
                "SDEProblem: y0 must have at least one dimension (the state's channels), got a "
                "0-d tensor; use y0.reshape(1)."
            )
        if noise not in _NOISE_TYPES:
            raise InvalidArgumentError(
                f"SDEProblem: noise must be one of {', '.join(map(repr, _NOISE_TYPES))}, got "
                f"{noise!r}. 'diagonal': g(t, z) has y0's shape; 'general': g(t, z) has shape "
                "(*y0.shape, brownian_size)."
            )
        if noise == "general":
            if (
                not isinstance(brownian_size, int)
                or isinstance(brownian_size, bool)
                or brownian_size < 1
            ):
                raise InvalidArgumentError(
                    "SDEProblem: noise='general' needs brownian_size, the number of Brownian "
                    f"channels m (a positive int; g returns (*y0.shape, m)), got {brownian_size!r}."
                )
            noise_shape = (*y0.shape[:-1], brownian_size)
        else:
            if brownian_size is not None:
                raise InvalidArgumentError(
                    f"SDEProblem: brownian_size={brownian_size!r} applies to noise='general' only; "
                    "diagonal noise has one Brownian motion per state element. Drop brownian_size "
                    "or pass noise='general'."
                )
            noise_shape = tuple(y0.shape)
        self.drift = drift
        self.diffusion = diffusion
        self.y0 = y0
        self.ts = probe.ts
        self.noise = noise
        self.brownian_size = brownian_size
        self.params = collect_params("SDEProblem", (drift, diffusion), params)
        self.layout = Layout.of(y0)
        self.direction = probe.direction
        self.noise_shape: tuple[int, ...] = noise_shape

    @property
    def dtype(self) -> torch.dtype:
        return self.y0.dtype

    @property
    def device(self) -> torch.device:
        return self.y0.device

    @property
    def diffusion_shape(self) -> tuple[int, ...]:
        """The shape g(t, z) must have: y0's (diagonal) or (*y0.shape, m) (general)."""
        return self.diffusion_shape_for(tuple(self.y0.shape))

    def diffusion_shape_for(self, state_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape g(t, z) must have for a state z of ``state_shape``: z's (diagonal) or
        (*z.shape, m) (general)."""
        return state_shape if self.noise == "diagonal" else (*state_shape, self.noise_shape[-1])

    def checked(self, which: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``drift`` or ``diffusion`` with its first output checked for shape and dtype.

        The expected shape comes from the state ``z`` the function is called on, not from ``y0``:
        a transform applied after :func:`odeplug.wong_zakai` (an augmentation, say) may call it on
        a widened state, and f and g then return that state's shape.
        """
        if which not in ("drift", "diffusion"):
            raise ValueError(f"SDEProblem.checked: which must be 'drift' or 'diffusion', got {which!r}.")
        fn = self.drift if which == "drift" else self.diffusion
        expected_shape = (lambda state: state) if which == "drift" else self.diffusion_shape_for
        noise = self.noise

        def first(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            out = fn(t, z)
            shape = expected_shape(tuple(z.shape))
            if not isinstance(out, torch.Tensor):
                raise InvalidArgumentError(
                    f"SDEProblem: {which} returned {type(out).__name__}; it must return a tensor "
                    f"of shape {shape}."
                )
            if tuple(out.shape) != shape:
                hint = (
                    "the drift must have the state's shape" if which == "drift" else
                    "with noise='diagonal' g(t, z) has the state's shape" if noise == "diagonal"
                    else "with noise='general' g(t, z) has shape (*z.shape, brownian_size)"
                )
                raise InvalidArgumentError(
                    f"SDEProblem: {which}(t, z) returned shape {tuple(out.shape)} for a state z of "
                    f"shape {tuple(z.shape)}, expected {shape}: {hint}."
                )
            if out.dtype != z.dtype:
                raise InvalidArgumentError(
                    f"SDEProblem: {which} returned dtype {out.dtype}, but the state is {z.dtype}; "
                    f"cast the output (or the model: model.to({z.dtype}))."
                )
            call.fn = fn
            return out

        def call(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            return call.fn(t, z)

        call.fn = first  # type: ignore[attr-defined]
        return call

    def noise_term(self, g: torch.Tensor, dw: torch.Tensor) -> torch.Tensor:
        """g · dW: elementwise (diagonal) or contracted over the m Brownian channels (general)."""
        if self.noise == "diagonal":
            return g * dw
        return (g @ dw.unsqueeze(-1)).squeeze(-1)

    def __repr__(self) -> str:
        return (
            f"SDEProblem(y0 shape {tuple(self.y0.shape)}, {len(self.ts)} times from "
            f"{float(self.ts[0]):g} to {float(self.ts[-1]):g}, noise={self.noise!r}"
            + (f", brownian_size={self.brownian_size}" if self.noise == "general" else "")
            + f", {len(self.params)} params)"
        )


def _unused_field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    raise AssertionError("validation probe only")  # pragma: no cover


