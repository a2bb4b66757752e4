"""Problem transforms (plugin odeplug_transforms): paths through data, controlled differential
equations, second-order problems, augmentation, and their chains with each other and Wong–Zakai.

References we did not write: scipy's natural cubic spline; closed forms — a CDE with a linear
path and a field linear in y is y(t_{k+1}) = expm(Σ_c Δx_c B_c) y(t_k) on each segment, and
dy = diag(y) A dX is y(t) = y(t0) · exp(A (X(t) − X(t0))) for any path; the harmonic oscillator;
autograd (Direct) and float64 finite differences for the gradients.
"""

import pytest
import scipy.interpolate
import torch

import odeplug as op
from odeplug.bench import gradient_rules

F64 = torch.float64
TIGHT = op.Dopri5(rtol=1e-10, atol=1e-10)


def irregular_times(n, seed=0, t0=0.0, t1=2.0):
    g = torch.Generator().manual_seed(seed)
    inner = torch.sort(torch.rand(n - 2, generator=g, dtype=F64) * (t1 - t0) + t0).values
    return torch.cat([torch.tensor([t0], dtype=F64), inner, torch.tensor([t1], dtype=F64)])


def observations(shape, seed=1):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize("scheme", [op.NaturalCubicSpline(), op.LinearInterpolation()])
def test_paths_pass_through_the_data_with_time_as_channel_0(scheme):
    times, x = irregular_times(7), observations((3, 7, 2))
    path = op.interpolate(scheme, times, x)
    assert path.shape == (3, 3)
    values = path.value(times)
    torch.testing.assert_close(values[..., 1:], x)
    torch.testing.assert_close(values[..., 0], times.expand(3, 7))
    torch.testing.assert_close(path.value(times[2]), values[:, 2])
    no_clock = op.interpolate(type(scheme)(time_channel=False), times, x)
    torch.testing.assert_close(no_clock.value(times), x)


def test_the_natural_cubic_spline_is_scipys():
    times, x = irregular_times(9), observations((2, 9, 3))
    path = op.interpolate(op.NaturalCubicSpline(time_channel=False), times, x)
    reference = scipy.interpolate.CubicSpline(times.numpy(), x.numpy(), axis=1, bc_type="natural")
    queries = torch.linspace(0, 2, 31, dtype=F64)
    torch.testing.assert_close(path.value(queries), torch.from_numpy(reference(queries.numpy())))
    torch.testing.assert_close(path.derivative(queries), torch.from_numpy(reference(queries.numpy(), 1)))
    assert len(path.breakpoints) == 0


def test_the_linear_path_has_a_kink_at_every_interior_knot():
    times, x = irregular_times(6), observations((6, 1))
    path = op.interpolate(op.LinearInterpolation(time_channel=False), times, x)
    torch.testing.assert_close(path.breakpoints, times[1:-1])
    slopes = (x[1:, 0] - x[:-1, 0]) / (times[1:] - times[:-1])
    for k in range(1, 5):  # the piece ending at a knot on the left, the one starting there on the right
        torch.testing.assert_close(path.derivative(times[k], "left")[0], slopes[k - 1])
        torch.testing.assert_close(path.derivative(times[k], "right")[0], slopes[k])
    middle = (times[:-1] + times[1:]) / 2
    torch.testing.assert_close(path.derivative(middle)[:, 0], slopes)


def test_path_derivatives_are_differentiable_in_t_and_in_the_data():
    times = irregular_times(5)
    x = observations((5, 2)).requires_grad_()
    path = op.interpolate(op.NaturalCubicSpline(), times, x)
    t = torch.tensor(0.7, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: path.value(t), (t,))
    assert torch.autograd.gradcheck(
        lambda x: op.interpolate(op.NaturalCubicSpline(), times, x).derivative(t.detach()), (x,)
    )


@pytest.mark.parametrize(
    "times, values, match",
    [
        (torch.tensor([0.0, 0.5, 0.4, 1.0]), torch.zeros(4, 1), r"strictly increasing; times\[1\] = 0.5"),
        (torch.tensor([0.0, 1.0]), torch.zeros(3, 1), "values has 3 observations along dim -2"),
        (torch.tensor([0.0, 1.0]), torch.zeros(2), r"\(\.\.\., length, channels\)"),
        (torch.zeros(2, 2), torch.zeros(2, 1), "times must be a 1-D floating tensor"),
        (torch.tensor([0.0]), torch.zeros(1, 1), "at least two observation times"),
        (torch.tensor([0.0, 1.0]), torch.tensor([[1.0], [float("nan")]]), r"NaN .* index \(1, 0\).*Fill missing"),
    ],
)
def test_bad_observations_are_refused_with_the_fix(times, values, match):
    with pytest.raises(op.InvalidArgumentError, match=match):
        op.interpolate(op.LinearInterpolation(), times, values)


# --------------------------------------------------------------------------- CDEs


def linear_cde(n_knots=6, batch=2, hidden=3, channels=2, seed=0):
    """dy = f(y) dX with f(y)[:, c] = B_c y: on a linear path's k-th segment,
    y(t_{k+1}) = expm(Σ_c Δx_c B_c) y(t_k), Δx the increment of X over the segment."""
    times = irregular_times(n_knots, seed)
    x = observations((batch, n_knots, channels - 1), seed + 1)
    path = op.interpolate(op.LinearInterpolation(), times, x)
    B = observations((channels, hidden, hidden), seed + 2) * 0.5
    y0 = observations((batch, hidden), seed + 3)
    f = lambda t, y: torch.einsum("cij,bj->bic", B, y)  # noqa: E731
    increments = path.value(times)[:, 1:] - path.value(times)[:, :-1]  # (batch, segments, channels)
    expected = [y0]
    for k in range(n_knots - 1):
        step = torch.linalg.matrix_exp(torch.einsum("bc,cij->bij", increments[:, k], B))
        expected.append((step @ expected[-1][..., None])[..., 0])
    return op.CDEProblem(f, path, y0, times), torch.stack(expected)


def test_a_linear_cde_on_a_linear_path_matches_its_closed_form():
    cde, expected = linear_cde()
    sol = op.solve(op.controlled(cde), TIGHT, op.Direct())
    torch.testing.assert_close(sol.ys, expected, rtol=1e-8, atol=1e-8)


def test_a_cde_solved_backwards_in_time_runs_through_the_same_segments():
    cde, expected = linear_cde()
    backwards = op.CDEProblem(cde.f, cde.path, expected[-1], cde.ts.flip(0))
    sol = op.solve(op.controlled(backwards), TIGHT, op.Direct())
    torch.testing.assert_close(sol.ys, expected.flip(0), rtol=1e-7, atol=1e-7)


def test_the_kinks_of_a_linear_path_are_jump_times_and_save_rejected_steps():
    cde, expected = linear_cde(n_knots=12)
    ode = op.controlled(cde)
    torch.testing.assert_close(ode.jump_times, cde.path.knots[1:-1])
    solver = op.Dopri5(rtol=1e-8, atol=1e-8)
    with_jumps = op.solve(ode, solver, op.Direct())
    without = op.solve(op.ODEProblem(ode.f, ode.y0, ode.ts), solver, op.Direct())
    torch.testing.assert_close(with_jumps.ys, expected, rtol=1e-6, atol=1e-6)
    assert with_jumps.stats["steps_rejected"] < without.stats["steps_rejected"]


def test_a_multiplicative_cde_on_a_spline_matches_its_closed_form():
    """dy = diag(y) A dX: the matrices commute, so y(t) = y0 · exp(A (X(t) − X(t0)))."""
    times = irregular_times(8)
    path = op.interpolate(op.NaturalCubicSpline(), times, observations((4, 8, 2)))
    A = observations((3, 3)) * 0.3
    y0 = observations((4, 3), 5)
    cde = op.CDEProblem(lambda t, y: y[..., None] * A, path, y0, torch.linspace(0, 2, 5, dtype=F64))
    sol = op.solve(cde, TIGHT, op.Direct())  # solving a CDEProblem solves its ODE
    increments = path.value(cde.ts) - path.value(cde.ts[0])[:, None]  # (batch, time, channels)
    expected = y0 * torch.exp(torch.einsum("ic,btc->tbi", A, increments))
    # The spline's third derivative jumps at the knots (not jump times): a little above tolerance.
    torch.testing.assert_close(sol.ys, expected, rtol=1e-7, atol=1e-7)


def test_cde_mistakes_are_refused_with_the_fix():
    times = irregular_times(4)
    path = op.interpolate(op.LinearInterpolation(), times, observations((2, 4, 1)))
    f = lambda t, y: torch.zeros(*y.shape, 2, dtype=F64)  # noqa: E731
    with pytest.raises(op.InvalidArgumentError, match="batch shape"):
        op.CDEProblem(f, path, torch.zeros(3, 4, dtype=F64), times)
    with pytest.raises(op.InvalidArgumentError, match="inside the observation times"):
        op.CDEProblem(f, path, torch.zeros(2, 4, dtype=F64), torch.tensor([0.0, 3.0], dtype=F64))
    with pytest.raises(op.InvalidArgumentError, match="op.interpolate|odeplug.interpolate"):
        op.CDEProblem(f, times, torch.zeros(2, 4, dtype=F64), times)
    wrong = op.CDEProblem(lambda t, y: torch.zeros(*y.shape, dtype=F64), path, torch.zeros(2, 4, dtype=F64), times)
    with pytest.raises(op.InvalidArgumentError, match=r"\(\*y.shape, channels\) = \(2, 4, 2\)"):
        op.solve(op.controlled(wrong), op.Dopri5(), op.Direct())


# --------------------------------------------------------------------------- second order


def oscillator(omega=1.7):
    """y'' = −ω² y: y = y0 cos ωt + v0/ω sin ωt."""
    y0, v0 = torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([0.3, 2.0], dtype=F64)
    ts = torch.linspace(0, 3, 7, dtype=F64)
    c, s = torch.cos(omega * ts)[:, None], torch.sin(omega * ts)[:, None]
    exact = (y0 * c + v0 / omega * s, -y0 * omega * s + v0 * c)
    return op.SecondOrderProblem(lambda t, y, v: -(omega**2) * y, y0, v0, ts), exact


def test_the_harmonic_oscillator_as_a_first_order_problem():
    problem, (y, v) = oscillator()
    sol = op.solve(op.first_order(problem), TIGHT, op.Direct())
    torch.testing.assert_close(sol.ys[0], y, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(sol.ys[1], v, rtol=1e-8, atol=1e-8)
    direct = op.solve(problem, TIGHT, op.Direct())  # solving a SecondOrderProblem solves its ODE
    torch.testing.assert_close(direct.ys, sol.ys)


def test_second_order_mistakes_are_refused_with_the_fix():
    ts = torch.linspace(0, 1, 3)
    with pytest.raises(op.InvalidArgumentError, match="v0 must have y0's shape"):
        op.SecondOrderProblem(lambda t, y, v: y, torch.zeros(2), torch.zeros(3), ts)
    with pytest.raises(op.InvalidArgumentError, match="SecondOrderProblem: v0 contains NaN"):
        op.SecondOrderProblem(lambda t, y, v: y, torch.zeros(2), torch.full((2,), float("nan")), ts)
    wrong = op.SecondOrderProblem(lambda t, y, v: y.sum(), torch.zeros(2), torch.zeros(2), ts)
    with pytest.raises(op.InvalidArgumentError, match="acceleration"):
        op.solve(op.first_order(wrong), op.Dopri5(), op.Direct())


# --------------------------------------------------------------------------- augmentation


def test_augmentation_leaves_the_original_coordinates_alone():
    """f on [y, a] whose y-part ignores a: projecting the augmented solution gives the original."""
    y0, ts = torch.tensor([[0.5, -1.0]], dtype=F64), torch.linspace(0, 2, 5, dtype=F64)
    g = lambda t, y: torch.sin(y) * torch.cos(t)  # noqa: E731
    widened = lambda t, z: torch.cat([g(t, z[..., :2]), z[..., :2].sum(-1, keepdim=True) * z[..., 2:]], -1)  # noqa: E731
    augmentation = op.ZeroAugmentation(dims=1)
    augmented = op.augment(op.ODEProblem(widened, y0, ts), augmentation)
    torch.testing.assert_close(augmented.y0, torch.tensor([[0.5, -1.0, 0.0]], dtype=F64))
    sol = op.solve(augmented, TIGHT, op.Direct())
    plain = op.solve(op.ODEProblem(g, y0, ts), TIGHT, op.Direct())
    # The widened state has other error estimates, so other steps: equal to the tolerance.
    torch.testing.assert_close(augmentation.project(sol.ys), plain.ys, rtol=1e-7, atol=1e-7)


def test_augmentation_options_are_checked():
    with pytest.raises(op.InvalidOptionError, match="dims must be a positive int"):
        op.ZeroAugmentation(dims=0)
    with pytest.raises(op.InvalidArgumentError, match="channel dimension"):
        op.augment(op.ODEProblem(lambda t, y: y, torch.tensor(1.0), torch.linspace(0, 1, 2)), op.ZeroAugmentation(2))


# --------------------------------------------------------------------------- chains
#
# Every way the transforms chain in one expression. Each chain is built around a field with a
# closure over W (a tensor computed from a parameter, softplus(raw)), and is checked against a
# reference solution in the original coordinates and, for every gradient rule, against Direct's
# gradient with respect to raw: the rules must find W through every layer of the chain.

DIMS = 2


def _raw():
    return torch.tensor([0.2, -0.4], dtype=F64, requires_grad=True)


def _cde_parts(raw):
    times = irregular_times(6)
    path = op.interpolate(op.NaturalCubicSpline(), times, observations((2, 6, 1)))
    W = torch.nn.functional.softplus(raw)

    def f(t, y):  # (2, 2 + p) -> (2, 2 + p, 2): reads its first two channels only
        base = torch.tanh(y[..., :2] * W)[..., None] * torch.tensor([1.0, -0.5], dtype=F64)
        return torch.cat([base, y[..., 2:, None].expand(*y[..., 2:].shape, 2) * 0.1], dim=-2)

    return f, path, observations((2, 2), 7), times


def _oscillator_parts(raw):
    W = torch.nn.functional.softplus(raw)

    def f(t, y, v):  # reads the first two channels of y only; the added ones decay
        return torch.cat([-W * y[..., :2] - 0.1 * v[..., :2], -v[..., 2:]], dim=-1)

    return f, torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([0.3, 0.2], dtype=F64), torch.linspace(0, 2, 5, dtype=F64)


def _sde_parts(raw):
    """General noise with one Brownian channel: the same path drives the SDE however wide it is."""
    W = torch.nn.functional.softplus(raw)
    drift = lambda t, z: torch.cat([-W * z[..., :2], -z[..., 2:]], -1)  # noqa: E731
    diffusion = lambda t, z: torch.cat([0.3 * torch.sin(z[..., :2]), 0.2 + 0 * z[..., 2:]], -1)[..., None]  # noqa: E731
    ts = torch.linspace(0, 1, 4, dtype=F64)
    path = op.sample(op.KarhunenLoeve(terms=6), torch.empty(1, 1, dtype=F64), ts[0], ts[-1],
                     generator=torch.Generator().manual_seed(0))
    sde = lambda z0: op.SDEProblem(drift, diffusion, z0, ts, noise="general", brownian_size=1)  # noqa: E731
    return sde, torch.tensor([[0.5, -1.0]], dtype=F64), path


def _first(ys):
    return ys[0] if isinstance(ys, tuple) else ys


def _cde_chains(raw):
    f, path, y0, ts = _cde_parts(raw)
    aug = op.ZeroAugmentation(DIMS)
    reference = op.controlled(op.CDEProblem(lambda t, y: f(t, y), path, y0, ts))
    return reference, {
        "augment(controlled(CDE))": (op.augment(op.controlled(op.CDEProblem(f, path, y0, ts)), aug), aug.project),
        "controlled(augment(CDE))": (op.controlled(op.augment(op.CDEProblem(f, path, y0, ts), aug)), aug.project),
        "augment(augment(controlled(CDE)))": (
            op.augment(op.augment(op.controlled(op.CDEProblem(f, path, y0, ts)), op.ZeroAugmentation(1)),
                       op.ZeroAugmentation(DIMS - 1)),
            aug.project,
        ),
    }


def _second_order_chains(raw):
    f, y0, v0, ts = _oscillator_parts(raw)
    aug = op.ZeroAugmentation(DIMS)
    reference = op.first_order(op.SecondOrderProblem(f, y0, v0, ts))
    return reference, {
        "augment(first_order(SecondOrder))": (
            op.augment(op.first_order(op.SecondOrderProblem(f, y0, v0, ts)), aug), aug.project),
        "first_order(augment(SecondOrder))": (
            op.first_order(op.augment(op.SecondOrderProblem(f, y0, v0, ts), aug)), aug.project),
    }


def _wong_zakai_chains(raw):
    sde, z0, path = _sde_parts(raw)
    aug = op.ZeroAugmentation(DIMS)
    return op.wong_zakai(sde(z0), path), {
        "augment(wong_zakai(SDE))": (op.augment(op.wong_zakai(sde(z0), path), aug), aug.project),
        "wong_zakai(augment(SDE))": (op.wong_zakai(op.augment(sde(z0), aug), path), aug.project),
    }


CHAINS = {
    **{name: (_cde_chains, name) for name in _cde_chains(_raw())[1]},
    **{name: (_second_order_chains, name) for name in _second_order_chains(_raw())[1]},
    **{name: (_wong_zakai_chains, name) for name in _wong_zakai_chains(_raw())[1]},
}


@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_every_chain_gives_the_original_solution_and_every_rule_finds_the_closure(chain):
    build, name = CHAINS[chain]
    raw = _raw()
    solver = op.Dopri5(rtol=1e-9, atol=1e-9)
    expected = op.solve(build(raw)[0], solver, op.Direct()).ys
    direct = None
    for label, rule in gradient_rules().items():
        raw.grad = None
        problem, project = build(raw)[1][name]  # afresh: the closure's softplus(raw) is freed by backward
        original = project(op.solve(problem, solver, rule).ys)
        # The widened state has other error estimates, so other steps: equal to the tolerance.
        torch.testing.assert_close(_first(original), _first(expected), rtol=1e-6, atol=1e-7)
        _first(original).square().sum().backward()
        assert raw.grad is not None, f"{label} found no gradient for the closure"
        if direct is None:
            direct = raw.grad.clone()
            assert direct.abs().max() > 1e-3
        torch.testing.assert_close(raw.grad, direct, rtol=1e-4, atol=1e-6, msg=f"{label} vs Direct")


def test_a_wrong_shape_after_wong_zakai_is_named_against_the_state_given():
    """Drift and diffusion are checked against the state they are called on, which an augmentation
    applied after wong_zakai widens: a wrong shape still gets an error naming the function."""
    raw = _raw()
    sde, z0, path = _sde_parts(raw)
    widen = op.ZeroAugmentation(DIMS)
    good = sde(z0)
    narrow_drift = op.SDEProblem(lambda t, z: z[..., :2], good.diffusion, z0, good.ts,
                                 noise="general", brownian_size=1)
    with pytest.raises(op.InvalidArgumentError, match=r"drift\(t, z\) returned shape \(1, 2\) for a state z of shape \(1, 4\), expected \(1, 4\)"):
        op.solve(op.augment(op.wong_zakai(narrow_drift, path), widen), op.Dopri5(), op.Direct())
    flat_diffusion = op.SDEProblem(good.drift, lambda t, z: 0.1 * z, z0, good.ts,
                                   noise="general", brownian_size=1)
    with pytest.raises(op.InvalidArgumentError, match=r"diffusion\(t, z\) returned shape \(1, 4\).*expected \(1, 4, 1\)"):
        op.solve(op.augment(op.wong_zakai(flat_diffusion, path), widen), op.Dopri5(), op.Direct())


def test_diagonal_noise_cannot_be_widened_after_wong_zakai_and_says_what_to_do():
    """With diagonal noise each channel has its own Brownian motion: the path sampled for y0 has
    none for the added channels, so the error points to augmenting before wong_zakai."""
    z0, ts = torch.tensor([[0.5, -1.0]], dtype=F64), torch.linspace(0, 1, 4, dtype=F64)
    sde = op.SDEProblem(lambda t, z: -z, lambda t, z: 0.2 * torch.sin(z), z0, ts)
    widen = op.ZeroAugmentation(DIMS)
    path = op.sample(op.KarhunenLoeve(terms=6), z0, ts[0], ts[-1], generator=torch.Generator().manual_seed(0))
    with pytest.raises(op.InvalidArgumentError, match=r"noise='diagonal'.*wong_zakai\(augment\(sde"):
        op.solve(op.augment(op.wong_zakai(sde, path), widen), op.Dopri5(), op.Direct())
    widened_first = op.wong_zakai(op.augment(sde, widen), op.KarhunenLoeve(terms=6),
                                  generator=torch.Generator().manual_seed(0))
    assert op.solve(widened_first, op.Dopri5(), op.Direct()).ys.shape == (4, 1, 2 + DIMS)


# --------------------------------------------------------------------------- a neural CDE


class NeuralCDE(torch.nn.Module):
    """Kidger et al. 2020, eq. (4): z(t0) = ζ(X(t0)), dz = f_θ(z) dX, label from ℓ(z(t_end))."""

    def __init__(self, channels, hidden=4):
        super().__init__()
        self.channels, self.hidden = channels, hidden
        self.initial = torch.nn.Linear(channels, hidden)
        self.field = torch.nn.Sequential(
            torch.nn.Linear(hidden, 8), torch.nn.Tanh(), torch.nn.Linear(8, hidden * channels), torch.nn.Tanh()
        )
        self.readout = torch.nn.Linear(hidden, 1)

    def forward(self, path, rule, solver):
        t0, t1 = path.knots[0], path.knots[-1]
        cde = op.CDEProblem(lambda t, z: self.field(z).view(*z.shape, self.channels),
                            path, self.initial(path.value(t0)), torch.stack([t0, t1]))
        return self.readout(op.solve(cde, solver, rule).ys[-1]).squeeze(-1)


def spirals(n=8, length=9, seed=0):
    """Clockwise and counter-clockwise spirals sampled at irregular times (one grid, as in
    torchcde), labelled by direction."""
    g = torch.Generator().manual_seed(seed)
    times = irregular_times(length, seed, 0.0, 4.0)
    labels = (torch.arange(n) % 2).to(F64)
    phase = torch.rand(n, 1, generator=g, dtype=F64) * 6.28
    sign = 2 * labels[:, None] - 1
    angle = sign * times + phase
    radius = 1 - 0.15 * times
    x = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], -1)
    return times, x + 0.05 * torch.randn(x.shape, generator=g, dtype=F64), labels


def _loss(model, path, labels, rule, solver):
    return torch.nn.functional.binary_cross_entropy_with_logits(model(path, rule, solver), labels)


def test_a_neural_cde_on_irregular_data_trains_with_every_rule_and_their_gradients_agree():
    torch.manual_seed(0)
    times, x, labels = spirals()
    path = op.interpolate(op.NaturalCubicSpline(), times, x)
    model = NeuralCDE(channels=3).double()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    solver = op.Dopri5(rtol=1e-7, atol=1e-7)

    def gradient(rule):
        model.zero_grad()
        _loss(model, path, labels, rule, solver).backward()
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()])

    direct = gradient(op.Direct())
    # Direct against float64 central differences along a random direction.
    direction = torch.randn(direct.shape, dtype=F64, generator=torch.Generator().manual_seed(3))
    flat = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    eps = 1e-5
    with torch.no_grad():
        losses = []
        for sign in (1, -1):
            torch.nn.utils.vector_to_parameters(flat + sign * eps * direction, model.parameters())
            losses.append(_loss(model, path, labels, op.Direct(), op.Dopri5(rtol=1e-11, atol=1e-11)))
        torch.nn.utils.vector_to_parameters(flat, model.parameters())
    torch.testing.assert_close((losses[0] - losses[1]) / (2 * eps), direct @ direction, rtol=1e-4, atol=1e-7)

    training = op.Dopri5(rtol=1e-5, atol=1e-5)
    for label, rule in gradient_rules().items():
        model.load_state_dict(start)
        torch.testing.assert_close(gradient(rule), direct, rtol=1e-3, atol=1e-5, msg=f"{label} vs Direct")
        optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
        losses = []
        for _ in range(3):
            optimiser.zero_grad()
            loss = _loss(model, path, labels, rule, training)
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        assert losses[-1] < losses[0], f"{label} did not train: {losses}"


def test_through_a_linear_path_every_rule_gives_directs_gradient():
    """The kinks are jump times of the forward solve and of every rule's backward solve."""
    times, x, labels = spirals(seed=1)
    path = op.interpolate(op.LinearInterpolation(), times, x)
    torch.manual_seed(1)
    model = NeuralCDE(channels=3).double()
    solver = op.Dopri5(rtol=1e-7, atol=1e-7)
    gradients = {}
    for label, rule in gradient_rules().items():
        model.zero_grad()
        _loss(model, path, labels, rule, solver).backward()
        gradients[label] = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    for label, gradient in gradients.items():
        torch.testing.assert_close(gradient, gradients["Direct"], rtol=1e-3, atol=1e-5, msg=f"{label} vs Direct")
