"""Auto: the rule that picks the rule. Its choice follows the memory budget, its stats say what it
chose and why, its memory estimates are within a small factor of the measured peak, its gradients
are the chosen rule's, and it refuses what it does not promise with errors that say what to do."""

import math
import warnings

import pytest
import torch

import odeplug as op
import odeplug_auto._auto as auto
from odeplug._memory import AllocatedBytes

F64 = torch.float64
CANDIDATES = ("Direct", "ACA", "GQAdjoint", "GaussAdjoint", "Adjoint(Seminorm)")


class Field(torch.nn.Module):
    def __init__(self, dim: int = 3, width: int = 16, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(torch.nn.Linear(dim, width), torch.nn.Tanh(),
                                       torch.nn.Linear(width, dim)).to(F64)

    def forward(self, t, y):  # noqa: ANN001, ANN201
        return self.net(y) - 0.1 * y


def problem(field=None, batch: int = 4, outputs: int = 4):  # noqa: ANN001, ANN201
    field = field or Field()
    y0 = torch.linspace(-1, 1, batch * 3, dtype=F64).reshape(batch, 3).requires_grad_(True)
    return op.ODEProblem(field, y0, torch.linspace(0, 1, outputs, dtype=F64)), field


def rule_of(label: str) -> op.GradientRule:
    return op.Adjoint(norm=op.Seminorm()) if label == "Adjoint(Seminorm)" else getattr(op, label)()


SOLVER = op.Dopri5(rtol=1e-6, atol=1e-6)


def solve_and_grad(prob, field, rule):  # noqa: ANN001, ANN201
    field.zero_grad(set_to_none=True)
    sol = op.solve(prob, SOLVER, rule)
    loss = (sol.ys**2).sum()
    grads = torch.autograd.grad(loss, [prob.y0, *field.parameters()])
    return sol, grads


def test_a_huge_budget_picks_direct_on_a_small_problem():
    prob, _ = problem()
    sol = op.solve(prob, SOLVER, op.Auto(memory=1e12))
    assert sol.stats["auto_rule"] == "Direct"
    assert "Direct" in sol.stats["auto_reason"] and "memory=" in sol.stats["auto_reason"]


def test_a_budget_below_directs_estimate_rules_direct_out():
    prob, _ = problem()
    estimates = op.solve(prob, SOLVER, op.Auto(memory=1e12)).stats["auto_estimates"]
    direct = estimates["Direct"]["memory"]
    sol = op.solve(prob, SOLVER, op.Auto(memory=direct - 1))
    chosen = sol.stats["auto_rule"]
    assert chosen != "Direct"
    assert sol.stats["auto_estimates"][chosen]["memory"] <= direct - 1
    assert not sol.stats["auto_estimates"]["Direct"]["fits"]
    assert "ruled out by memory: Direct" in sol.stats["auto_reason"]
    # The cheapest of those that fit: ACA is the next fastest when it fits.
    fitting = {k: v for k, v in sol.stats["auto_estimates"].items() if v["fits"]}
    assert chosen == min(fitting, key=lambda k: fitting[k]["cost"])


def test_a_budget_between_picks_within_it_every_time():
    prob, _ = problem()
    estimates = op.solve(prob, SOLVER, op.Auto(memory=1e12)).stats["auto_estimates"]
    for budget in sorted({v["memory"] for v in estimates.values()}):
        sol = op.solve(prob, SOLVER, op.Auto(memory=budget))
        assert sol.stats["auto_estimates"][sol.stats["auto_rule"]]["memory"] <= budget
        assert sol.stats["auto_budget"] == budget


def test_stats_report_the_choice_and_the_chosen_rules_counts():
    prob, field = problem()
    direct = op.solve(prob, SOLVER, op.Auto(memory=1e12)).stats["auto_estimates"]["Direct"]["memory"]
    sol, _ = solve_and_grad(prob, field, op.Auto(memory=direct - 1))
    stats = sol.stats
    assert set(stats["auto_estimates"]) == set(CANDIDATES)
    for entry in stats["auto_estimates"].values():
        assert entry["memory"] > 0 and entry["cost"] > 0 and isinstance(entry["fits"], bool)
    assert stats["auto_rule"] in CANDIDATES and stats["auto_reason"].startswith(stats["auto_rule"])
    for key in ("nfe", "steps_accepted", "nfe_backward"):  # the chosen rule's own counts
        assert isinstance(stats[key], int), key
    assert stats["auto_probe_nfe"] == 0  # measured by the solves above: reused


def test_the_first_solve_of_a_field_measures_later_ones_reuse_it():
    prob, field = problem(Field(seed=3))
    first = op.solve(prob, SOLVER, op.Auto())
    assert first.stats["auto_probe_nfe"] > 0
    again = op.solve(problem(field)[0], SOLVER, op.Auto())
    assert again.stats["auto_probe_nfe"] == 0
    assert again.stats["auto_rule"] == first.stats["auto_rule"]


@pytest.mark.parametrize("label", ["Direct", "ACA"])
def test_gradients_equal_the_chosen_rules(label):
    prob, field = problem(Field(seed=1))
    estimates = op.solve(prob, SOLVER, op.Auto(memory=1e12)).stats["auto_estimates"]
    budget = estimates["Direct"]["memory"] - (label != "Direct")
    sol, got = solve_and_grad(prob, field, op.Auto(memory=budget))
    assert sol.stats["auto_rule"] == label
    _, expected = solve_and_grad(prob, field, rule_of(label))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("label", CANDIDATES)
def test_whichever_rule_is_chosen_the_gradients_and_counts_are_its_own(label, monkeypatch):
    # The cost model rigged so that `label` is the cheapest: the delegation is what is tested.
    real = auto.estimate

    def rigged(m):  # noqa: ANN001, ANN202
        return {k: auto.Estimate(e.memory, 1.0 if k == label else 1e9) for k, e in real(m).items()}

    monkeypatch.setattr(auto, "estimate", rigged)
    prob, field = problem(Field(seed=2))
    sol, got = solve_and_grad(prob, field, op.Auto(memory=1e12))
    assert sol.stats["auto_rule"] == label
    reference, expected = solve_and_grad(prob, field, rule_of(label))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-14)
    own = {k: v for k, v in sol.stats.items() if not k.startswith("auto_")}
    assert own == dict(reference.stats)


def test_at_least_two_rules_are_chosen_across_budgets():
    prob, _ = problem()
    estimates = op.solve(prob, SOLVER, op.Auto(memory=1e12)).stats["auto_estimates"]
    chosen = {op.solve(prob, SOLVER, op.Auto(memory=v["memory"])).stats["auto_rule"]
              for v in estimates.values()}
    assert {"Direct", "ACA"} <= chosen


@pytest.mark.parametrize("width,batch", [(32, 16), (256, 64)])
def test_memory_estimates_are_within_a_factor_of_the_measured_peak(width, batch):
    torch.manual_seed(0)
    field = Field(width=width)
    prob, _ = problem(field, batch=batch, outputs=3)
    measured, _ = auto.measure(prob, SOLVER)
    estimates = auto.estimate(measured)
    for label in CANDIDATES:
        rule = rule_of(label)
        for _ in range(2):  # the second run, after the allocator's first-call costs
            field.zero_grad(set_to_none=True)
            with AllocatedBytes("cpu") as meter:
                sol = op.solve(prob, SOLVER, rule)
                (sol.ys**2).sum().backward()
            del sol
        ratio = estimates[label].memory / meter.peak
        assert 1 / 2.5 <= ratio <= 2.5, (label, estimates[label].memory, meter.peak)


@pytest.mark.parametrize("memory", ["1GB", [1], True, None.__class__])
def test_a_memory_of_the_wrong_kind_is_refused(memory):
    with pytest.raises(op.InvalidOptionError, match=r"Auto: memory must be a number of bytes"):
        op.Auto(memory=memory)


@pytest.mark.parametrize("memory", [0, -1, -2.5, math.inf, math.nan])
def test_a_memory_that_is_not_a_positive_finite_number_is_refused(memory):
    with pytest.raises(op.InvalidOptionError, match=r"positive, finite number of bytes"):
        op.Auto(memory=memory)


def test_an_unknown_option_is_refused():
    with pytest.raises(op.InvalidOptionError, match="memory"):
        op.Auto(budget=10)
    prob, _ = problem()
    with pytest.raises(op.InvalidArgumentError, match="Auto"):
        op.solve(prob, SOLVER, op.Auto(), fast=True)


def test_an_explicit_budget_nothing_fits_is_an_error_that_says_what_would():
    prob, _ = problem()
    with pytest.raises(op.SolveError, match=r"no candidate's estimated memory fits.*Auto\(memory=\d+\)"):
        op.solve(prob, SOLVER, op.Auto(memory=10))


def test_free_memory_nothing_fits_runs_the_least_memory_rule_and_warns(monkeypatch):
    prob, field = problem()
    monkeypatch.setattr(auto, "available_memory", lambda device: 10)
    with pytest.warns(ResourceWarning, match="least-memory rule"):
        sol, _ = solve_and_grad(prob, field, op.Auto())
    estimates = sol.stats["auto_estimates"]
    assert sol.stats["auto_rule"] == min(estimates, key=lambda k: estimates[k]["memory"])
    assert not any(v["fits"] for v in estimates.values())


def test_the_free_memory_is_a_positive_number_of_bytes():
    free = auto.available_memory("cpu")
    assert free is None or (isinstance(free, int) and free > 0)
    prob, _ = problem()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sol = op.solve(prob, SOLVER, op.Auto())
    assert sol.stats["auto_budget"] == free or "free memory" in sol.stats["auto_reason"]


def test_second_derivatives_are_refused_even_when_direct_is_chosen():
    a = torch.tensor(0.3, dtype=F64, requires_grad=True)
    prob = op.ODEProblem(lambda t, z: a * z, torch.tensor([1.5], dtype=F64),
                         torch.tensor([0.0, 2.0], dtype=F64))
    sol = op.solve(prob, SOLVER, op.Auto(memory=1e12))
    assert sol.stats["auto_rule"] == "Direct"
    with pytest.raises(op.UnsupportedCombinationError, match=r"second derivatives.*Direct\(\) or ACA\(\)"):
        torch.autograd.grad(sol.ys[-1].sum() ** 2, [a], create_graph=True)
    # First derivatives go through.
    sol = op.solve(prob, SOLVER, op.Auto(memory=1e12))
    (g,) = torch.autograd.grad(sol.ys[-1].sum() ** 2, [a])
    assert float(g) > 0


def test_randomness_in_f_is_refused_naming_direct_and_aca():
    field = Field()
    field.net.insert(2, torch.nn.Dropout(0.3))
    prob, _ = problem(field)
    with pytest.raises(op.UnsupportedCombinationError, match=r"random numbers.*ACA\(\).*Direct\(\)"):
        op.solve(prob, op.RK4(dt=0.1), op.Auto(memory=1e12))
    field.eval()  # deterministic now: the same module is accepted
    assert op.solve(prob, op.RK4(dt=0.1), op.Auto(memory=1e12)).stats["auto_rule"] == "Direct"


def test_a_tuple_state_and_decreasing_times():
    field = Field()

    def f(t, y):
        out = field(t, torch.cat(y, -1))
        return out[..., :1], out[..., 1:]

    y0 = (torch.ones(2, 1, dtype=F64, requires_grad=True), torch.zeros(2, 2, dtype=F64))
    ts = torch.tensor([1.0, 0.5, 0.0], dtype=F64)
    for memory in (1e12, None):
        sol = op.solve(op.ODEProblem(f, y0, ts), SOLVER, op.Auto(memory=memory))
        got = torch.autograd.grad(sum((y**2).sum() for y in sol.ys), [y0[0]])
        ref = op.solve(op.ODEProblem(f, y0, ts), SOLVER, rule_of(sol.stats["auto_rule"]))
        expected = torch.autograd.grad(sum((y**2).sum() for y in ref.ys), [y0[0]])
        torch.testing.assert_close(got, expected)


def test_an_event_solve_goes_through_auto():
    w = torch.tensor(0.05, dtype=F64, requires_grad=True)
    y0 = torch.tensor([1.0, 0.0], dtype=F64, requires_grad=True)
    ts = torch.tensor([0.0, 6.0], dtype=F64)

    def f(t, y):
        return torch.stack([y[1], -y[0]]) - w * y

    def build():  # noqa: ANN202
        return op.ODEProblem(f, y0, ts, event=lambda t, y: y[0] - 0.3)

    for memory in (1e12, 1.0e3):
        sol = op.solve(build(), SOLVER, op.Auto(memory=memory))
        chosen = sol.stats["auto_rule"]
        assert sol.event_t is not None and "nfe_event" in sol.stats
        got = torch.autograd.grad(sol.event_t + sol.ys[-1].sum(), [w, y0])
        ref = op.solve(build(), SOLVER, rule_of(chosen))
        expected = torch.autograd.grad(ref.event_t + ref.ys[-1].sum(), [w, y0])
        torch.testing.assert_close(got, expected)
    assert chosen != "Direct"  # the small budget ruled it out


def test_without_grad_mode_the_plain_forward_runs():
    prob, _ = problem()
    with torch.no_grad():
        sol = op.solve(prob, SOLVER, op.Auto(memory=10))
    assert sol.stats["auto_rule"] == "Direct" and "grad mode is off" in sol.stats["auto_reason"]


def test_after_the_first_solve_auto_costs_no_evaluation_of_f():
    calls = {"n": 0}
    field = Field(seed=4)

    class Counted(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = field

        def forward(self, t, y):  # noqa: ANN001, ANN201
            calls["n"] += 1
            return self.inner(t, y)

    counted = Counted()
    prob, _ = problem(counted)
    first = op.solve(prob, SOLVER, op.Auto(memory=1e12))
    assert first.stats["auto_probe_nfe"] > 0
    runs = []
    for rule in (op.Auto(memory=1e12), op.Direct()):
        calls["n"] = 0
        sol = op.solve(problem(counted)[0], SOLVER, rule)
        (sol.ys**2).sum().backward()
        runs.append(calls["n"])
    assert runs[0] == runs[1]


@pytest.mark.parametrize("solver,excluded", [
    (op.RK4(dt=0.1), {"Adjoint(Seminorm)"}),            # no norm option for the backward solve
    (op.ImplicitAdams(), {"ACA"}),                       # a step needs the ones before it
    (op.TorchDiffEq("dopri5"), {"ACA", "GQAdjoint", "GaussAdjoint", "Adjoint(Seminorm)"}),
], ids=["RK4", "ImplicitAdams", "TorchDiffEq"])
def test_rules_the_solver_cannot_serve_are_never_chosen(solver, excluded):
    prob, field = problem(Field(seed=5))
    first = op.solve(prob, solver, op.Auto(memory=1e12))
    assert excluded.isdisjoint(first.stats["auto_estimates"])
    assert "Not applicable with" in first.stats["auto_reason"]
    for entry in first.stats["auto_estimates"].values():  # every budget that admits one of them
        sol = op.solve(prob, solver, op.Auto(memory=entry["memory"]))
        assert sol.stats["auto_rule"] not in excluded
        (sol.ys**2).sum().backward()
