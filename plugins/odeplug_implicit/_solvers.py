"""The implicit (stiff) solvers' configurations: ESDIRK methods as tableaus, and Radau IIA."""

from __future__ import annotations

import abc

import attrs

import odeplug
from odeplug import Layout, Solver, VectorField, configuration

from ._stepper import ESDIRKStepper, RadauIIAStepper
from ._tableau import KVAERNO3, KVAERNO4, KVAERNO5, RADAU_IIA5, ESDIRKTableau

__all__ = ["ImplicitRungeKutta", "ESDIRK", "Kvaerno3", "Kvaerno4", "Kvaerno5", "RadauIIA5"]

LINEAR_SOLVERS = ("dense", "krylov")
JACOBIANS = ("full", "batched")


def _number(value) -> bool:  # noqa: ANN001
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _positive(instance, attribute, value):  # noqa: ANN001
    if not (_number(value) and 0 < value < float("inf")):
        raise odeplug.InvalidOptionError(
            f"{type(instance).__name__}: {attribute.name} must be a positive number, got {value!r}; "
            f"e.g. {type(instance).__name__}({attribute.name}={_EXAMPLES.get(attribute.name, 1e-6)!r})."
        )


def _non_negative(instance, attribute, value):  # noqa: ANN001
    if not (_number(value) and 0 <= value < float("inf")):
        raise odeplug.InvalidOptionError(
            f"{type(instance).__name__}: {attribute.name} must be a number >= 0, got {value!r}; "
            f"e.g. {type(instance).__name__}({attribute.name}=1e-9)."
        )


def _positive_or_none(instance, attribute, value):  # noqa: ANN001
    if value is not None:
        _positive(instance, attribute, value)


def _positive_int(instance, attribute, value):  # noqa: ANN001
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise odeplug.InvalidOptionError(
            f"{type(instance).__name__}: {attribute.name} must be a positive int, got {value!r}."
        )


def _rate(instance, attribute, value):  # noqa: ANN001
    if not (_number(value) and 0 < value < 1):
        raise odeplug.InvalidOptionError(
            f"{type(instance).__name__}: {attribute.name} must be a number in (0, 1), got {value!r}; "
            f"e.g. {type(instance).__name__}({attribute.name}={_EXAMPLES[attribute.name]!r})."
        )


def _linear_solver(instance, attribute, value):  # noqa: ANN001
    if value not in LINEAR_SOLVERS:
        raise odeplug.InvalidOptionError(
            f"{type(instance).__name__}: linear_solver must be 'dense' (LU of the Jacobian) or "
            f"'krylov' (matrix-free GMRES, for large states), got {value!r}."
        )


def _jacobian(instance, attribute, value):  # noqa: ANN001
    if value not in JACOBIANS:
        raise odeplug.InvalidOptionError(
            f"{type(instance).__name__}: jacobian must be 'full' (one n × n matrix) or 'batched' "
            f"(block diagonal, one block per row of a (batch, ...) state whose rows f never "
            f"couples), got {value!r}."
        )


def _norm_or_none(instance, attribute, value):  # noqa: ANN001
    if value is not None and not isinstance(value, odeplug.Norm):
        raise odeplug.InvalidOptionError(
            f"{type(instance).__name__}: norm must be an odeplug.Norm instance such as "
            f"odeplug.RMSNorm(), got {value!r}."
        )


_EXAMPLES = {"rtol": 1e-6, "newton_tol": 0.03, "jacobian_reuse_rate": 0.05, "krylov_tol": 1e-6,
             "first_step": 1e-3, "max_step": 1.0}


@attrs.frozen(kw_only=True)
class ImplicitRungeKutta(Solver):
    """Abstract: an implicit Runge–Kutta method for stiff problems, with Newton on its stages.

    Options:
        rtol, atol: relative (> 0) and absolute (>= 0) tolerance of the local error (numbers).
        norm: the :class:`odeplug.Norm` of scaled errors and Newton increments (default
            ``RMSNorm()``, as stiff codes use).
        first_step: initial step size (default: Hairer's selection, one extra evaluation).
        max_step: largest step size (default None: no limit).
        max_steps: attempted steps allowed per solve.
        linear_solver: ``"dense"`` (default): a Jacobian of f (``torch.func.jacrev``; forward
            differences where function transforms cannot trace f) and LU factorisations, both
            reused across stages and steps; ``"krylov"``: matrix-free GMRES on Jacobian-vector
            products, for large states (no n × n matrix).
        newton_tol: κ, Newton stops when its predicted remaining error is below κ times the
            error tolerance (default 0.03; Hairer & Wanner suggest 0.01–0.1).
        max_newton_iterations: Newton iterations per solve before the step counts as failed
            (then retried with a fresh Jacobian, or rejected with half the step).
        jacobian_reuse_rate: re-evaluate the Jacobian after a step whose Newton contraction rate
            exceeded this (default 0.05); lower re-evaluates more often.
        jacobian: ``"full"`` (default): one n × n Jacobian; ``"batched"``: for a state that is one
            tensor of shape (B, ...) whose B rows f never couples (a neural ODE on a mini-batch,
            without batch statistics), the block-diagonal Jacobian, one d × d block per row
            (d vector–Jacobian products, not B·d) and B small LU factorisations (batched) instead
            of one (B·d)² matrix. Layouts that are not one batch (a tuple state, an adjoint's
            backward state) use the full Jacobian. Dense linear solver only.
        krylov_tol, krylov_max_iterations: GMRES's relative residual and iteration limit.
    """

    rtol: float = attrs.field(default=1e-7, validator=_positive)
    atol: float = attrs.field(default=1e-9, validator=_non_negative)
    norm: odeplug.Norm | None = attrs.field(default=None, validator=_norm_or_none)
    first_step: float | None = attrs.field(default=None, validator=_positive_or_none)
    max_step: float | None = attrs.field(default=None, validator=_positive_or_none)
    max_steps: int = attrs.field(default=1_000_000, validator=_positive_int)
    linear_solver: str = attrs.field(default="dense", validator=_linear_solver)
    newton_tol: float = attrs.field(default=0.03, validator=_rate)
    max_newton_iterations: int = attrs.field(default=10, validator=_positive_int)
    jacobian_reuse_rate: float = attrs.field(default=0.05, validator=_rate)
    jacobian: str = attrs.field(default="full", validator=_jacobian)
    krylov_tol: float = attrs.field(default=1e-6, validator=_rate)
    krylov_max_iterations: int = attrs.field(default=50, validator=_positive_int)

    def stepper_options(self) -> dict:
        """The options every implicit stepper takes, the norm resolved to its default."""
        return dict(
            rtol=self.rtol, atol=self.atol, norm=self.norm if self.norm is not None else odeplug.RMSNorm(),
            first_step=self.first_step, max_step=self.max_step, max_steps=self.max_steps,
            linear_solver=self.linear_solver, newton_tol=self.newton_tol,
            max_newton_iterations=self.max_newton_iterations, jacobian_reuse_rate=self.jacobian_reuse_rate,
            krylov_tol=self.krylov_tol, krylov_max_iterations=self.krylov_max_iterations,
            jacobian=self.jacobian,
        )

    @property
    @abc.abstractmethod
    def method_order(self) -> int: ...


class ESDIRK(ImplicitRungeKutta):
    """Abstract: an ESDIRK method given by its :class:`ESDIRKTableau` (one algorithm for all)."""

    __slots__ = ()

    @property
    @abc.abstractmethod
    def tableau(self) -> ESDIRKTableau: ...


@configuration
class Kvaerno3(ESDIRK):
    """Kværnø's ESDIRK 3(2), 4 stages, L-stable and stiffly accurate (Kværnø, BIT 44, 2004)."""

    tableau = KVAERNO3
    method_order = 3


@configuration
class Kvaerno4(ESDIRK):
    """Kværnø's ESDIRK 4(3), 5 stages, L-stable and stiffly accurate (Kværnø, BIT 44, 2004)."""

    tableau = KVAERNO4
    method_order = 4


@configuration
class Kvaerno5(ESDIRK):
    """Kværnø's ESDIRK 5(4), 7 stages, L-stable and stiffly accurate (Kværnø, BIT 44, 2004)."""

    tableau = KVAERNO5
    method_order = 5


@configuration
class RadauIIA5(ImplicitRungeKutta):
    """Radau IIA, 3 stages, order 5, L-stable and stiffly accurate, with RADAU5's error estimate
    (Hairer & Wanner, *Solving ODEs II*, IV.5 and IV.8)."""

    method_order = 5


def register() -> None:
    """``make_stepper`` for the ESDIRK family and for Radau IIA, their orders, their names."""

    @odeplug.register
    def make_stepper(solver: ESDIRK, field: VectorField, layout: Layout):
        return ESDIRKStepper(solver.tableau, field, layout, **solver.stepper_options())

    @odeplug.register
    def make_stepper(solver: RadauIIA5, field: VectorField, layout: Layout):  # noqa: F811
        return RadauIIAStepper(RADAU_IIA5, field, layout, **solver.stepper_options())

    @odeplug.register
    def order(solver: ImplicitRungeKutta):
        return solver.method_order

    odeplug.export(ImplicitRungeKutta, ESDIRK, Kvaerno3, Kvaerno4, Kvaerno5, RadauIIA5)
