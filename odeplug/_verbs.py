"""The verbs: odeplug's generic functions. Plugins add methods with :func:`odeplug.register`."""

from __future__ import annotations

from ._dispatch import generic

__all__ = [
    "solve", "make_stepper", "norm", "quadrature", "terms", "sample", "wong_zakai", "order",
    "exact_degree", "interpolate", "controlled", "first_order", "augment", "solve_until_event",
    "bind_norm",
]


@generic
def solve(problem, solver, rule):
    """Solve ``problem`` with ``solver``, differentiating with ``rule``; return a Solution.

    Methods are registered per (problem type, solver type, rule type). The rule owns the loop.
    Keyword options given to :func:`odeplug.solve` are passed on to the method, which must
    reject any it does not know.
    """


@generic
def solve_until_event(problem, solver, rule):
    """:func:`solve` for a problem whose ``event`` is set: the Solution up to the first event
    (or ``ts[-1]``), with the event time and state differentiable. The core's method serves
    every rule: locate the event without a graph, solve to it with the rule, then differentiate
    t* by the implicit function theorem (``odeplug._events``). A rule that can do it in one
    pass registers its own (Direct does). Methods take the keyword ``through_event_time``
    (default true); false leaves t* detached and y(t*) differentiated at a fixed t*, as
    torchdiffeq's ``odeint(..., event_fn=...)``."""


@generic
def make_stepper(solver, field, layout):
    """A :class:`Stepper` for ``solver`` on the flat :class:`VectorField` ``field`` whose state
    has :class:`Layout` ``layout``. Called once per solve (and once per backward solve)."""


@generic
def norm(norm, x, layout):
    """The size of the flat scaled error ``x`` (a 0-d tensor), knowing its block ``layout``."""


@generic
def bind_norm(norm, like, layout):
    """The plain function x ↦ ‖x‖ (a 0-d tensor) a solve calls at every step, for flat errors
    like ``like`` with :class:`Layout` ``layout``: everything dispatched once, here. The core's
    method resolves :func:`norm` for the argument types and closes over ``norm`` and
    ``layout``; a norm built on another (``Seminorm`` on its base) registers its own, which
    binds its base once too, so that no step dispatches."""


@generic
def quadrature(rule, n):
    """``(nodes, weights)`` of the n-point rule on [-1, 1], as float64 tensors."""


@generic
def terms(policy, *args):
    """How many quadrature nodes a node policy of a quadrature adjoint uses. Methods take what
    their policy needs: the paper's (Norcliffe & Deisenroth) ``terms(policy, nfe, interval,
    span)`` per output interval; an error-controlled one ``terms(policy, errors)``, the
    estimated error of each candidate rule on a segment."""


@generic
def sample(approximation, like, t0, t1):
    """Draw a path of a :class:`WienerApproximation` (keyword ``generator=``)."""


@generic
def wong_zakai(problem, approximation):
    """The ODE whose solution converges to the Stratonovich SDE ``problem`` (Wong–Zakai)."""


@generic
def order(solver):
    """The order p the solver declares: its global error on a smooth problem is O(hᵖ) as the
    step h → 0 (OrdinaryDiffEq.jl's ``alg_order``). :func:`odeplug.testing.check_solver`
    measures it; a solver without a method of ``order`` cannot be checked for convergence."""


@generic
def exact_degree(rule, n):
    """The highest degree d such that the n-point :class:`Quadrature` ``rule`` integrates every
    polynomial of degree ≤ d exactly on [-1, 1] (2n − 1 for Gauss–Legendre).
    :func:`odeplug.testing.check_quadrature` checks it is exact to that degree and not one more."""


@generic
def interpolate(scheme, times, values):
    """The :class:`ControlPath` X through the observations ``values`` (``(..., len(times),
    channels)``) made at the increasing knot ``times`` by the interpolation ``scheme``, for a
    controlled differential equation (Kidger et al. 2020, "Neural Controlled Differential
    Equations for Irregular Time Series")."""


@generic
def controlled(problem):
    """The ODE dy/dt = f(t, y) · dX/dt of the controlled differential equation dy = f(t, y) dX(t)
    ``problem`` (Kidger et al. 2020), with the kinks of X as the ODE's jump times."""


@generic
def first_order(problem):
    """The first-order ODE on the tuple state (y, v) of the second-order ``problem``
    y'' = f(t, y, y'): dy/dt = v, dv/dt = f(t, y, v)."""


@generic
def augment(problem, augmentation):
    """``problem`` on a state with extra channels, as ``augmentation`` says (Dupont et al. 2019,
    "Augmented Neural ODEs"); the same kind of problem comes back."""
