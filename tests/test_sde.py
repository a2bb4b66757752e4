"""Neural SDEs as ODEs (plugin odeplug_sde): Karhunen–Loève paths, the Wong–Zakai transform, torchsde.

References we did not write: closed forms (the Karhunen–Loève variance and covariance series and
their limits min(s, t) − t0; the Wong–Zakai ODE of geometric Brownian motion, solved exactly by
X0·exp(μ(t − t0) + σ B(t)) for any smooth path B), autograd, torchdiffeq's adjoint, and torchsde.
Statistical checks use fixed seeds and state their tolerance in standard errors.
"""

import math

import pytest
import torch
import torchdiffeq
import torchsde
from hypothesis import given
from hypothesis import strategies as st

import odeplug as op
from odeplug._dispatch import unregister_for_tests
from odeplug.testing._wiener_check import check_wiener

from odeplug.testing.strategies import MLPField

F64 = torch.float64


def kl_path(terms, shape, t0, t1, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return op.sample(op.KarhunenLoeve(terms=terms), torch.empty(shape, dtype=dtype), t0, t1, generator=g)


def kl_variance(t, t0, t1, m):
    """2|c| Σ_{i≤m} sin²((i−½)π s)/((i−½)²π²), s = (t − t0)/c: the truncated expansion's variance."""
    c = t1 - t0
    s = (t - t0) / c
    return 2 * abs(c) * sum(math.sin((i - 0.5) * math.pi * s) ** 2 / ((i - 0.5) * math.pi) ** 2
                            for i in range(1, m + 1))


def kl_covariance(t, u, t0, t1, m):
    c = t1 - t0
    s, r = (t - t0) / c, (u - t0) / c
    return 2 * abs(c) * sum(math.sin((i - 0.5) * math.pi * s) * math.sin((i - 0.5) * math.pi * r)
                            / ((i - 0.5) * math.pi) ** 2 for i in range(1, m + 1))


def tail_bound(c, m):
    """2|c| Σ_{i>m} 1/((i−½)²π²) ≤ 2|c| / (π² (m − ½)): how far the truncated series may be from
    its limit (integral test, 1/(x − ½)² decreasing)."""
    return 2 * abs(c) / (math.pi**2 * (m - 0.5))


intervals = st.tuples(st.floats(-2.0, 2.0), st.floats(0.2, 3.0), st.booleans()).map(
    lambda a: (a[0], a[0] - a[1]) if a[2] else (a[0], a[0] + a[1])
)


# --------------------------------------------------------------------------- Karhunen–Loève


def test_value_and_derivative_match_the_series_term_by_term():
    t0, t1 = 0.3, 2.1
    path = kl_path(7, (2, 3), t0, t1, seed=4)
    c = t1 - t0
    for t in (0.3, 0.9, 2.1):
        value = sum(path.xi[i - 1] * math.sqrt(2 * c) * math.sin((i - 0.5) * math.pi * (t - t0) / c)
                    / ((i - 0.5) * math.pi) for i in range(1, 8))
        slope = sum(path.xi[i - 1] * math.sqrt(2 / c) * math.cos((i - 0.5) * math.pi * (t - t0) / c)
                    for i in range(1, 8))
        torch.testing.assert_close(path.value(torch.tensor(t, dtype=F64)), value, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(path.derivative(torch.tensor(t, dtype=F64)), slope, rtol=1e-12, atol=1e-12)
    assert path.xi.shape == (7, 2, 3) and path.shape == (2, 3)
    assert path.value(torch.tensor([0.5, 1.0, 1.5], dtype=F64)).shape == (3, 2, 3)
    assert torch.equal(path.value(torch.tensor(t0, dtype=F64)), torch.zeros(2, 3, dtype=F64))


@given(interval=intervals, fraction=st.floats(0.0, 1.0), m=st.integers(1, 40), seed=st.integers(0, 1000))
def test_variance_matches_the_truncated_series_and_tends_to_elapsed_time(interval, fraction, m, seed):
    t0, t1 = interval
    t = t0 + fraction * (t1 - t0)
    exact = kl_variance(t, t0, t1, m)
    # The series tends to |t − t0| from below, within the tail bound.
    assert -1e-12 <= abs(t - t0) - exact <= tail_bound(t1 - t0, m) + 1e-12
    # Monte Carlo over many ξ: the sample variance of `value` (mean 0 known) has standard error
    # exact·sqrt(2/N); accept 5 standard errors.
    n = 20_000
    path = kl_path(m, (n,), t0, t1, seed=seed)
    values = path.value(torch.tensor(t, dtype=F64))
    estimate = float((values**2).mean())
    assert abs(estimate - exact) <= 5 * exact * math.sqrt(2 / n) + 1e-12


@given(interval=intervals, a=st.floats(0.0, 1.0), b=st.floats(0.0, 1.0), m=st.integers(1, 40),
       seed=st.integers(0, 1000))
def test_covariance_tends_to_min_minus_t0(interval, a, b, m, seed):
    t0, t1 = interval
    t, u = t0 + a * (t1 - t0), t0 + b * (t1 - t0)
    exact = kl_covariance(t, u, t0, t1, m)
    limit = min(abs(t - t0), abs(u - t0))  # min(s, t) − t0, in elapsed time
    assert abs(exact - limit) <= tail_bound(t1 - t0, m) + 1e-12
    n = 20_000
    path = kl_path(m, (n,), t0, t1, seed=seed)
    values = path.value(torch.tensor([t, u], dtype=F64))
    estimate = float((values[0] * values[1]).mean())
    vt, vu = kl_variance(t, t0, t1, m), kl_variance(u, t0, t1, m)
    assert abs(estimate - exact) <= 5 * math.sqrt((vt * vu + exact**2) / n) + 1e-12


@pytest.mark.parametrize("terms", [0, 1, 40])
def test_karhunen_loeve_passes_check_wiener(terms):
    """odeplug.testing.check_wiener: derivative = d value/dt (autograd), the same seed gives the
    same path and other seeds other paths, the global generators are untouched (with a generator
    and without), value(t0) = 0, float32 and float64, both time directions, and the covariance
    tends to min(s, t) − t0 as the terms grow."""
    check_wiener(op.KarhunenLoeve(terms=terms))


# --------------------------------------------------------------------------- Wong–Zakai


def gbm(mu, sigma, y0, ts, noise="diagonal", m=None):
    if noise == "diagonal":
        return op.SDEProblem(lambda t, x: mu * x, lambda t, x: sigma * x, y0, ts)
    sig = torch.as_tensor(sigma, dtype=y0.dtype)  # (m,)
    return op.SDEProblem(lambda t, x: mu * x, lambda t, x: x.unsqueeze(-1) * sig, y0, ts,
                         noise="general", brownian_size=m)


@given(mu=st.floats(-1.0, 1.0), sigma=st.floats(0.0, 1.5), m=st.integers(0, 25), interval=intervals,
       seed=st.integers(0, 1000))
def test_wong_zakai_solves_geometric_brownian_motion_exactly(mu, sigma, m, interval, seed):
    # dX = μX dt + σX ∘ dW → the ODE dX/dt = μX + σX dB_m/dt, solved by X0 exp(μ(t − t0) + σ B_m(t)).
    t0, t1 = interval
    ts = torch.linspace(t0, t1, 4, dtype=F64)
    y0 = torch.tensor([[1.0], [0.5]], dtype=F64)
    path = kl_path(m, (2, 1), t0, t1, seed=seed)
    sol = op.solve(op.wong_zakai(gbm(mu, sigma, y0, ts), path), op.Dopri5(rtol=1e-10, atol=1e-10), op.Direct())
    exact = y0 * torch.exp(mu * (ts - t0)[:, None, None] + sigma * path.value(ts))
    torch.testing.assert_close(sol.ys, exact, rtol=1e-6, atol=1e-9)


@given(mu=st.floats(-1.0, 1.0), sigmas=st.lists(st.floats(-1.0, 1.0), min_size=1, max_size=3),
       m=st.integers(1, 15), seed=st.integers(0, 1000))
def test_wong_zakai_general_noise_contracts_over_the_brownian_channels(mu, sigmas, m, seed):
    # dX = μX dt + Σ_j σ_j X ∘ dW_j  →  X0 exp(μ(t − t0) + Σ_j σ_j B_j(t)).
    ts = torch.tensor([0.0, 0.4, 1.0], dtype=F64)
    y0 = torch.tensor([[1.0, 2.0], [0.5, 1.5]], dtype=F64)
    k = len(sigmas)
    problem = gbm(mu, sigmas, y0, ts, noise="general", m=k)
    assert problem.noise_shape == (2, k)
    path = kl_path(m, (2, k), 0.0, 1.0, seed=seed)
    sol = op.solve(op.wong_zakai(problem, path), op.Dopri5(rtol=1e-10, atol=1e-10), op.Direct())
    exponent = mu * ts[:, None, None] + (path.value(ts) @ torch.tensor(sigmas, dtype=F64))[..., None]
    torch.testing.assert_close(sol.ys, y0 * torch.exp(exponent), rtol=1e-6, atol=1e-9)


def test_same_generator_same_path_same_solution():
    ts = torch.linspace(0, 1, 5, dtype=F64)
    problem = gbm(0.2, 0.8, torch.ones(3, 1, dtype=F64), ts)

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return op.solve(problem, op.Dopri5(), op.Direct(), wiener=op.KarhunenLoeve(terms=10), generator=g).ys

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))
    # the shortcut is the transform: same path through wong_zakai gives the same numbers
    path = kl_path(10, (3, 1), 0.0, 1.0, seed=1)
    direct = op.solve(op.wong_zakai(problem, path), op.Dopri5(), op.Direct()).ys
    assert torch.equal(direct, run(1))
    # and torchsde with a seeded Brownian motion
    a = op.solve(problem, op.SDESolver(seed=3), op.Direct()).ys
    assert torch.equal(a, op.solve(problem, op.SDESolver(seed=3), op.Direct()).ys)
    b = op.solve(problem, op.SDESolver(), op.Direct(), generator=torch.Generator().manual_seed(0)).ys
    assert not torch.equal(a, b)
    assert torch.equal(b, op.solve(problem, op.SDESolver(), op.Direct(),
                                   generator=torch.Generator().manual_seed(0)).ys)


def _mlp_sde(seed, noise="diagonal", calls=None):
    """Random MLP drift and diffusion on a (3, 2) state; ``calls`` counts drift evaluations."""
    net = MLPField(2, 8, seed)
    y0 = torch.randn(3, 2, generator=torch.Generator().manual_seed(seed + 2), dtype=F64, requires_grad=True)
    ts = torch.linspace(0.0, 1.0, 6, dtype=F64)

    def drift(t, x):
        if calls is not None:
            calls.append(t)
        return net(t, x)

    if noise == "diagonal":
        diffusion = MLPField(2, 8, seed + 1, scale=0.5)
        return op.SDEProblem(drift, diffusion, y0, ts, params=[*net.parameters(), *diffusion.parameters()]), y0
    net_g = MLPField(6, 8, seed + 1, scale=0.5)

    def diffusion(t, x):  # (3, 2) -> (3, 2, 3): three Brownian channels per row
        return net_g(t, torch.cat([x, x, x], -1)).reshape(3, 2, 3)

    problem = op.SDEProblem(drift, diffusion, y0, ts, noise="general", brownian_size=3,
                            params=[*net.parameters(), *net_g.parameters()])
    return problem, y0


def _grads(ys, problem, y0):
    loss = (ys[1:] ** 2).sum() + ys[-1].sin().sum()
    return torch.autograd.grad(loss, [y0, *problem.params])


@pytest.mark.parametrize("noise", ["diagonal", "general"])
def test_gradients_of_the_wong_zakai_ode_agree_across_rules_and_with_torchdiffeq(noise):
    # The transformed ODE is an ordinary ODEProblem: Adjoint and GQAdjoint (where it has landed)
    # must reproduce the Direct rule's gradients, and Direct torchdiffeq's adjoint, at tight tolerances.
    problem, y0 = _mlp_sde(11, noise)
    path = kl_path(4, problem.noise_shape, 0.0, 1.0, seed=5)
    ode = op.wong_zakai(problem, path)
    solver = op.Dopri5(rtol=1e-9, atol=1e-9)
    reference = _grads(op.solve(ode, solver, op.Direct()).ys, problem, y0)
    rules = [name for name in ("Adjoint", "GQAdjoint") if hasattr(op, name)]
    assert "Adjoint" in rules
    for name in rules:
        got = _grads(op.solve(ode, solver, getattr(op, name)()).ys, problem, y0)
        for r, g in zip(reference, got):
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-7, msg=lambda m: f"{name}: {m}")
    if noise == "diagonal":  # torchdiffeq's adjoint on the same field: an implementation we did not write
        module = torch.nn.Module()
        module.forward = ode.f
        theirs = torchdiffeq.odeint_adjoint(module, y0, ode.ts, rtol=1e-9, atol=1e-9,
                                            adjoint_params=tuple(problem.params))
        for r, g in zip(_grads(theirs, problem, y0), reference):
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-7)


def test_wong_zakai_converges_in_distribution_to_torchsde():
    # dX = (1 − X) dt + 0.7 X ∘ dW, X0 = 1, T = 1. N paths each; at m = 40 the ODE's mean and
    # variance at T must match torchsde's Stratonovich solution within 4 standard errors of the
    # difference (plus 1% truncation bias), while m = 1 must be visibly further off.
    n, T = 4000, 1.0
    drift = lambda t, x: 1 - x  # noqa: E731
    diffusion = lambda t, x: 0.7 * x  # noqa: E731
    ts = torch.tensor([0.0, T], dtype=F64)
    problem = op.SDEProblem(drift, diffusion, torch.ones(n, 1, dtype=F64), ts)
    with torch.no_grad():
        sde = op.solve(problem, op.SDESolver(method="midpoint", dt=0.005, seed=0), op.Direct()).ys[-1]
        odes = {
            m: op.solve(problem, op.Dopri5(rtol=1e-6, atol=1e-6), op.Direct(),
                        wiener=op.KarhunenLoeve(terms=m), generator=torch.Generator().manual_seed(1)).ys[-1]
            for m in (1, 40)
        }
    mean_sde, var_sde = float(sde.mean()), float(sde.var())
    errors = {}
    for m, x in odes.items():
        mean, var = float(x.mean()), float(x.var())
        se_mean = math.sqrt((var + var_sde) / n)
        se_var = math.sqrt(2 / n) * math.hypot(var, var_sde) * 2  # fourth moments: heavier tails
        errors[m] = (abs(mean - mean_sde) / se_mean, abs(var - var_sde) / (se_var + 0.01 * var_sde))
    assert errors[40][0] < 4 and errors[40][1] < 4, errors
    assert errors[1][1] > 2 * errors[40][1], errors


# --------------------------------------------------------------------------- torchsde


def test_sde_solver_follows_its_seeded_brownian_motion():
    # Additive noise: X(T) − X0 = σ W(T) for any method; GBM: X(T) ≈ X0 exp(μT + σ W(T)) (strong).
    ts = torch.tensor([0.5, 1.0, 1.5], dtype=F64)
    y0 = torch.ones(4, 2, dtype=F64)
    for flip in (False, True):
        times = ts.flip(0) if flip else ts
        s0, s1 = (-1.5, -0.5) if flip else (0.5, 1.5)
        w = torchsde.BrownianInterval(t0=s0, t1=s1, size=(4, 2), entropy=9, dtype=F64)(s0, s1)
        additive = op.SDEProblem(lambda t, x: torch.zeros_like(x), lambda t, x: 0.7 * torch.ones_like(x), y0, times)
        ys = op.solve(additive, op.SDESolver(seed=9), op.Direct()).ys
        torch.testing.assert_close(ys[-1], 1 + 0.7 * w, rtol=1e-12, atol=1e-12)
        ys = op.solve(gbm(0.3, 0.5, y0, times), op.SDESolver(seed=9, dt=1e-3), op.Direct()).ys
        torch.testing.assert_close(ys[-1], torch.exp(0.3 * (times[-1] - times[0]) + 0.5 * w), rtol=2e-2, atol=0)


@pytest.mark.parametrize("noise", ["diagonal", "general"])
def test_sde_adjoint_matches_sde_direct(noise):
    # Reversible Heun's adjoint reconstructs the forward solve, so both rules agree to rounding.
    calls = []
    problem, y0 = _mlp_sde(3, noise, calls)
    solver = op.SDESolver(seed=4)
    direct = op.solve(problem, solver, op.Direct())
    forward_calls = len(calls)
    adjoint = op.solve(problem, solver, op.Adjoint())
    torch.testing.assert_close(adjoint.ys, direct.ys, rtol=0, atol=0)
    for a, d in zip(_grads(adjoint.ys, problem, y0), _grads(direct.ys, problem, y0)):
        torch.testing.assert_close(a, d, rtol=1e-6, atol=1e-7 * float(d.abs().max()))
    # counted, not estimated: every call of the user's drift, forward and backward
    assert direct.stats["nfe"] == direct.stats["nfe_diffusion"] == forward_calls >= 101
    assert "nfe_backward" not in direct.stats
    assert adjoint.stats["nfe"] == forward_calls
    assert adjoint.stats["nfe_backward"] == len(calls) - 2 * forward_calls
    assert adjoint.stats["nfe_backward"] > 0 and adjoint.stats["nfe_diffusion_backward"] > 0


def test_training_step_through_every_route():
    problem, y0 = _mlp_sde(1)
    g = torch.Generator().manual_seed(0)
    routes = [
        (op.Dopri5(rtol=1e-4, atol=1e-4), op.Direct(), {"wiener": op.KarhunenLoeve(terms=4), "generator": g}),
        (op.Dopri5(rtol=1e-4, atol=1e-4), op.Adjoint(), {"wiener": op.KarhunenLoeve(terms=4), "generator": g}),
        (op.SDESolver(dt=0.05, seed=0), op.Direct(), {}),
        (op.SDESolver(dt=0.05, seed=0), op.Adjoint(), {}),
    ]
    if hasattr(op, "GQAdjoint"):
        routes.append((op.Dopri5(rtol=1e-4, atol=1e-4), op.GQAdjoint(), {"wiener": op.KarhunenLoeve(terms=4),
                                                                        "generator": g}))
    for solver, rule, options in routes:
        sol = op.solve(problem, solver, rule, **options)
        grads = _grads(sol.ys, problem, y0)
        assert all(bool(torch.isfinite(x).all()) for x in grads)
        assert sol.stats["nfe"] > 0


# --------------------------------------------------------------------------- a second approximation


def test_a_user_registered_piecewise_linear_approximation_works_end_to_end():
    # The classic Wong–Zakai approximation: linear interpolation of Brownian motion sampled on a
    # uniform grid of n intervals (the full example of docs/methods/wong_zakai.md).
    @op.configuration
    class PiecewiseLinear(op.WienerApproximation):
        intervals: int = 16

    @op.final
    class PiecewiseLinearPath(op.WienerPath):
        def __init__(self, knots, t0, t1):
            self.knots, self.t0, self.t1 = knots, float(t0), float(t1)  # knots: (n + 1, *shape)
            self.shape = tuple(knots.shape[1:])
            self.n = knots.shape[0] - 1
            self.h = (self.t1 - self.t0) / self.n

        def _locate(self, t):
            u = (torch.as_tensor(t, dtype=torch.float64) - self.t0) / self.h
            k = u.floor().clamp(0, self.n - 1)
            return k.long(), (u - k).to(self.knots.dtype)

        def value(self, t):
            k, w = self._locate(t)
            w = w.reshape(*w.shape, *([1] * len(self.shape)))
            return self.knots[k] * (1 - w) + self.knots[k + 1] * w

        def derivative(self, t):
            k, _ = self._locate(t)
            return (self.knots[k + 1] - self.knots[k]) / self.h

    def sample(approximation: PiecewiseLinear, like: torch.Tensor, t0, t1, *, generator=None):
        n = approximation.intervals
        h = abs(float(t1) - float(t0)) / n
        steps = torch.randn((n, *like.shape), generator=generator, dtype=like.dtype) * math.sqrt(h)
        knots = torch.cat([torch.zeros((1, *like.shape), dtype=like.dtype), steps.cumsum(0)])
        return PiecewiseLinearPath(knots, t0, t1)

    op.register(sample)
    try:
        ts = torch.linspace(0.0, 2.0, 5, dtype=F64)
        y0 = torch.tensor([[1.0], [2.0]], dtype=F64)
        problem = gbm(0.1, 0.6, y0, ts)
        path = op.sample(PiecewiseLinear(intervals=8), torch.empty(2, 1, dtype=F64), 0.0, 2.0,
                         generator=torch.Generator().manual_seed(0))
        # the path is the Brownian sample at its knots, and its derivative is the slope
        torch.testing.assert_close(path.value(torch.tensor([0.0, 0.5, 2.0], dtype=F64)), path.knots[[0, 2, 8]])
        sol = op.solve(op.wong_zakai(problem, path), op.Dopri5(rtol=1e-10, atol=1e-10), op.Direct())
        exact = y0 * torch.exp(0.1 * ts[:, None, None] + 0.6 * path.value(ts))
        torch.testing.assert_close(sol.ys, exact, rtol=1e-6, atol=1e-9)
        # and through the shortcut, with gradients by the adjoint
        sigma = torch.tensor(0.6, dtype=F64, requires_grad=True)
        problem = op.SDEProblem(lambda t, x: 0.1 * x, lambda t, x: sigma * x, y0, ts, params=[sigma])
        sol = op.solve(problem, op.Dopri5(rtol=1e-10, atol=1e-10), op.Adjoint(),
                       wiener=PiecewiseLinear(intervals=8), generator=torch.Generator().manual_seed(0))
        sol.ys[-1].sum().backward()
        expected = (y0 * torch.exp(0.1 * 2.0 + 0.6 * path.value(torch.tensor(2.0, dtype=F64))) *
                    path.value(torch.tensor(2.0, dtype=F64))).sum()
        torch.testing.assert_close(sigma.grad, expected, rtol=1e-6, atol=1e-9)
    finally:
        unregister_for_tests("sample", (PiecewiseLinear, torch.Tensor, object, object))


# --------------------------------------------------------------------------- errors


def test_bad_input_gets_a_clear_error():
    f = lambda t, x: x  # noqa: E731
    y0, ts = torch.ones(2, 1, dtype=F64), torch.linspace(0, 1, 3, dtype=F64)
    with pytest.raises(op.InvalidArgumentError, match="noise must be one of"):
        op.SDEProblem(f, f, y0, ts, noise="scalar")
    with pytest.raises(op.InvalidArgumentError, match="brownian_size"):
        op.SDEProblem(f, f, y0, ts, noise="general")
    with pytest.raises(op.InvalidArgumentError, match="applies to noise='general' only"):
        op.SDEProblem(f, f, y0, ts, brownian_size=2)
    with pytest.raises(op.InvalidArgumentError, match="SDEProblem: ts must be strictly"):
        op.SDEProblem(f, f, y0, torch.tensor([0.0, 1.0, 0.5], dtype=F64))
    with pytest.raises(op.InvalidArgumentError, match="tuple states are not supported"):
        op.SDEProblem(f, f, (y0, y0), ts)
    with pytest.raises(op.InvalidArgumentError, match="drift must be callable"):
        op.SDEProblem(3, f, y0, ts)
    with pytest.raises(op.InvalidOptionError, match="terms"):
        op.KarhunenLoeve(terms=-1)
    with pytest.raises(op.InvalidOptionError, match="Stratonovich"):
        op.SDESolver(method="euler")
    general = op.SDEProblem(f, f, y0, ts, noise="general", brownian_size=3)
    with pytest.raises(op.InvalidArgumentError, match=r"expected \(2, 1, 3\)"):
        op.solve(general, op.SDESolver(), op.Direct())
    with pytest.raises(op.InvalidArgumentError, match=r"expected \(2, 1, 3\)"):
        op.solve(general, op.Dopri5(), op.Direct(), wiener=op.KarhunenLoeve())
    problem = op.SDEProblem(f, f, y0, ts)
    with pytest.raises(op.InvalidArgumentError, match="path has shape"):
        op.wong_zakai(problem, kl_path(3, (5,), 0.0, 1.0))
    with pytest.raises(op.InvalidArgumentError, match="covers"):
        op.wong_zakai(problem, kl_path(3, (2, 1), 0.0, 0.5))
    with pytest.raises(op.InvalidArgumentError, match="generator would be unused"):
        op.wong_zakai(problem, kl_path(3, (2, 1), 0.0, 1.0), generator=torch.Generator())
    with pytest.raises(op.UnsupportedCombinationError, match="Pass wiener="):
        op.solve(problem, op.Dopri5(), op.Direct())
    with pytest.raises(op.InvalidArgumentError, match="unknown option"):
        op.solve(problem, op.SDESolver(), op.Direct(), rtol=1e-3)
    with pytest.raises(op.InvalidArgumentError, match="unknown option"):
        op.solve(problem, op.Dopri5(), op.Direct(), wiener=op.KarhunenLoeve(), rtol=1e-3)
    with pytest.raises(op.InvalidArgumentError, match="one source of randomness"):
        op.solve(problem, op.SDESolver(seed=1), op.Direct(), generator=torch.Generator())
    with pytest.raises(op.UnsupportedCombinationError, match="cannot step an ODE"):
        op.solve(op.ODEProblem(f, y0, ts), op.SDESolver(), op.Direct())
    timed = op.SDEProblem(f, f, y0, ts.clone().requires_grad_())
    with pytest.raises(op.InvalidArgumentError, match="output times"):
        op.solve(timed, op.SDESolver(), op.Direct())


def test_every_rule_with_sde_solver_is_supported_or_explained():
    # plum must never find (SDEProblem, SDESolver, rule) ambiguous.
    from odeplug.bench import gradient_rules

    problem = op.SDEProblem(lambda t, x: -x, lambda t, x: 0.1 * x, torch.ones(2, 1, dtype=F64),
                            torch.tensor([0.0, 0.1], dtype=F64))
    for name, rule in gradient_rules().items():
        if rule in (op.Direct(), op.Adjoint()):
            assert op.solve(problem, op.SDESolver(seed=0), rule).ys.shape == (2, 2, 1)
        else:  # another rule, or the adjoint with ODE-only options: an explanation, never ambiguity
            with pytest.raises(op.UnsupportedCombinationError, match="Wong–Zakai"):
                op.solve(problem, op.SDESolver(seed=0), rule)
        # and every rule takes the Wong–Zakai ODE
        sol = op.solve(problem, op.Dopri5(), rule, wiener=op.KarhunenLoeve(terms=2),
                       generator=torch.Generator().manual_seed(0))
        assert sol.ys.shape == (2, 2, 1)
