"""Mutation run: does the test suite fail where it matters?

Each mutation below is a one-line bug planted in the speed-up machinery (seminorm block roles,
the backward's jumps at output times, step-size carry-over, first-stage reuse, the quadrature
adjoints' signs, node counts and weights, ACA's checkpoint replay, the Karhunen–Loève scaling).
For each, this script copies the tree to a temporary folder, replaces the exact original text
(which must occur exactly once) by the mutant, and runs the tests named for it there with
``python -m pytest -x -q``, with PYTHONPATH pointing at the copy so that the copy's odeplug and
plugins are the ones imported (checked before any mutation runs). A mutation is *caught* when
those tests fail (or time out), *survived* when they pass.

    .venv/bin/python tools/mutate.py                 # every mutation, a table, exit 1 if any survived
    .venv/bin/python tools/mutate.py --list          # the mutations and their tests
    .venv/bin/python tools/mutate.py --only h-carry-after-landing stale-first-stage-after-jump

The unmutated copy runs every named test first (``--no-baseline`` skips it): a test that fails
without a bug would "catch" every mutation. See docs/suite-strength.md for the figures.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

ROOT = pathlib.Path(__file__).resolve().parent.parent
IGNORED = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", ".pytest_cache",
                                 ".hypothesis")


@dataclass(frozen=True)
class Mutation:
    """Replace ``original`` (exactly one occurrence in ``path``) by ``replacement``; the tests
    (pytest node ids or files, relative to the tree) must then fail."""

    name: str
    path: str
    original: str
    replacement: str
    tests: tuple[str, ...]
    what: str


ADJ = "tests/test_adjoint.py"
GQ = "tests/test_gq.py"
ACA_TESTS = "tests/test_aca.py"
SDE = "tests/test_sde.py"
SOLVERS = "tests/test_solvers.py"
NORMS = "tests/test_norms.py"

MUTATIONS: tuple[Mutation, ...] = (
    # -- seminorm block roles ------------------------------------------------------------------
    Mutation(
        "seminorm-controls-a_theta", "odeplug/_adjoint_system.py",
        'blocks += [Block(f"a_θ[{i}]", tuple(p.shape), role="integral") for i, p in enumerate(self.inputs)]',
        'blocks += [Block(f"a_θ[{i}]", tuple(p.shape), role="state") for i, p in enumerate(self.inputs)]',
        (f"{ADJ}::test_the_seminorm_saves_evaluations_over_its_own_base_norm",),
        "a_θ marked as state: the seminorm controls the parameter adjoint too",
    ),
    Mutation(
        "seminorm-controls-a_t", "odeplug/_adjoint_system.py",
        'blocks.append(Block("a_t", (1,), role="integral"))',
        'blocks.append(Block("a_t", (1,), role="state"))',
        (f"{ADJ}::test_the_seminorm_takes_the_same_steps_whether_or_not_time_gradients_are_asked",),
        "a_t marked as state: asking for dL/dt changes the seminorm's backward steps",
    ),
    Mutation(
        "seminorm-ignores-roles", "plugins/odeplug_norms/__init__.py",
        "return odeplug.norm(n.base, x[selector], kept)",
        "return odeplug.norm(n.base, x, layout)",
        (f"{ADJ}::test_the_seminorm_saves_evaluations_over_its_own_base_norm",),
        "the seminorm applies its base to every block",
    ),
    # -- the backward's jumps at output times: one evaluation (one VJP) each -------------------
    Mutation(
        "jump-is-a-fresh-start", "odeplug/_backsolve.py",
        "state = stepper.restart(state, y)",
        "state = stepper.start(state.t, y, s[-1])",
        (f"{ADJ}::test_each_output_time_costs_the_backward_one_evaluation",),
        "an output time restarts the backward solver (initial-step search), as torchdiffeq does",
    ),
    Mutation(
        "time-gradient-re-evaluates-f", "odeplug/_backsolve.py",
        "g = (grad_ys[k] * (-direction) * state.f[:n]).sum()",
        "g = (grad_ys[k] * (-direction) * field(state.t, state.y)[:n]).sum()",
        (f"{ADJ}::test_each_output_time_costs_the_backward_one_evaluation",),
        "dL/dt_k evaluates f again instead of reading the restart's evaluation",
    ),
    Mutation(
        "jump-evaluates-twice", "plugins/odeplug_solvers/_stepper.py",
        "return StepState(state.t, y, self.field(state.t.to(y.dtype), y), state.h)",
        "self.field(state.t.to(y.dtype), y)\n"
        "        return StepState(state.t, y, self.field(state.t.to(y.dtype), y), state.h)",
        (f"{ADJ}::test_each_output_time_costs_the_backward_one_evaluation",),
        "a restart evaluates the (augmented) field twice",
    ),
    # -- step size carried over landings and restarts ------------------------------------------
    Mutation(
        "h-not-carried-after-landing", "plugins/odeplug_solvers/_stepper.py",
        "dt_next = torch.where(accept & shortened, torch.maximum(dt_next, proposed), dt_next)",
        "dt_next = dt_next",
        (f"{SOLVERS}::test_a_landed_step_keeps_the_step_size_it_was_shortened_from",
         f"{ADJ}::test_an_output_time_just_past_a_step_costs_the_backward_at_most_one_step"),
        "after a step shortened to land on an output time, h restarts from the short step",
    ),
    Mutation(
        "h-not-kept-by-restart", "plugins/odeplug_solvers/_stepper.py",
        "return StepState(state.t, y, self.field(state.t.to(y.dtype), y), state.h)",
        "return StepState(state.t, y, self.field(state.t.to(y.dtype), y), state.h / 8)",
        (f"{ADJ}::test_an_output_time_just_past_a_step_costs_the_backward_at_most_one_step",),
        "a restart (jump of a_z, reset of z) shrinks the step size",
    ),
    # -- first-stage reuse ---------------------------------------------------------------------
    Mutation(
        "stale-first-stage-after-jump", "plugins/odeplug_solvers/_stepper.py",
        "return StepState(state.t, y, self.field(state.t.to(y.dtype), y), state.h)",
        "return StepState(state.t, y, state.f, state.h)",
        (f"{ADJ}::test_fixed_step_backward_solves_match_a_tight_reference",),
        "after a jump the first stage is the pre-jump F (adaptive control hides it behind rejections)",
    ),
    Mutation(
        "fsal-stage-not-reused", "plugins/odeplug_solvers/_stepper.py",
        "            if self.tableau.fsal:\n                f1 = stages[-1]",
        "            if False:\n                f1 = stages[-1]",
        (f"{SOLVERS}::test_dopri5_parity_linear",),
        "an accepted FSAL step evaluates F(t1, y1) again instead of reusing its last stage",
    ),
    Mutation(
        "aca-primes-a-stale-first-stage", "plugins/odeplug_aca/_aca.py",
        "        self.f1 = step.f1\n\n    def save",
        "        self.f1 = step.f1 if i == 0 else self.f1\n\n    def save",
        (f"{ACA_TESTS}::test_aca_equals_direct_on_random_fields",),
        "ACA's checkpoints keep the first stage of the wrong step",
    ),
    # -- quadrature adjoints -------------------------------------------------------------------
    Mutation(
        "gauss-adjoint-weight-sign", "plugins/odeplug_gq/_rules.py",
        "self.direction * length * weights)",
        "length * weights)",
        (f"{GQ}::test_quadrature_rules_on_a_turning_integrand_in_both_directions",),
        "GaussAdjoint's per-step weights ignore the direction of time",
    ),
    Mutation(
        "gauss-adjoint-node-times", "plugins/odeplug_gq/_rules.py",
        "self.total.add_many(-self.direction * s, stepper.interpolate(step, s),\n"
        "                            self.direction * length * weights)",
        "self.total.add_many(self.direction * s, stepper.interpolate(step, s),\n"
        "                            self.direction * length * weights)",
        (f"{GQ}::test_all_gradients_agree_with_adjoint",),
        "GaussAdjoint evaluates ∂f/∂θ at the mirrored user time",
    ),
    Mutation(
        "gauss-adjoint-one-node", "plugins/odeplug_gq/_rules.py",
        "n = max(1, (order + 1) // 2)",
        "n = 1",
        (f"{GQ}::test_quadrature_rules_on_a_turning_integrand_in_both_directions",),
        "GaussAdjoint uses one node per step whatever the solver's order",
    ),
    Mutation(
        "paper-nodes-one-per-interval", "plugins/odeplug_gq/_adaptive.py",
        "return int(min(max(math.ceil(policy.C * nfe * interval / span), 1), policy.max_terms))",
        "return 1",
        (f"{GQ}::test_quadrature_rules_on_a_turning_integrand_in_both_directions",),
        "the paper's policy gives every interval one node",
    ),
    Mutation(
        "adaptive-nodes-one-too-few", "plugins/odeplug_gq/_adaptive.py",
        "    n = failing[-1] + 2\n",
        "    n = failing[-1] + 1\n",
        (f"{GQ}::test_adaptive_count_takes_every_rule_from_n_on_within_tolerance",),
        "the error-controlled count stops one rule short of the first one within tolerance",
    ),
    Mutation(
        "adaptive-panel-weights-unscaled", "plugins/odeplug_gq/_adaptive.py",
        "weights = direction * half * unit_weights",
        "weights = direction * unit_weights",
        (f"{GQ}::test_linear_matrix_problem_gradients_within_10x_of_adjoints",),
        "the error-controlled placement forgets to scale the rule's weights to the segment",
    ),
    Mutation(
        "quadrature-weights-unscaled", "odeplug/_quadrature.py",
        "return (a + b) / 2 + half * nodes, half * weights",
        "return (a + b) / 2 + half * nodes, weights",
        (f"{GQ}::test_quadrature_rules_on_a_turning_integrand_in_both_directions",),
        "scaled_quadrature maps the nodes but not the weights onto [a, b]",
    ),
    Mutation(
        "gauss-legendre-weights-halved", "plugins/odeplug_quadrature/__init__.py",
        "return torch.from_numpy(nodes.copy()), torch.from_numpy(weights.copy())",
        "return torch.from_numpy(nodes.copy()), torch.from_numpy(weights.copy()) / 2",
        (f"{GQ}::test_gauss_legendre_passes_check_quadrature_up_to_128_nodes",
         f"{GQ}::test_quadrature_rules_on_a_turning_integrand_in_both_directions"),
        "Gauss–Legendre weights that sum to 1 instead of 2",
    ),
    Mutation(
        "quadrature-cotangent-unweighted", "plugins/odeplug_gq/_rules.py",
        "cotangents = y_aug[:, n : 2 * n] * weights.to(y_aug.dtype).unsqueeze(1)",
        "cotangents = y_aug[:, n : 2 * n]",
        (f"{GQ}::test_analytic_gradients_against_adjoint",),
        "the node VJPs are summed without their weights",
    ),
    # -- ACA checkpoint replay -----------------------------------------------------------------
    Mutation(
        "aca-replays-wrong-step-size", "plugins/odeplug_aca/_aca.py",
        "step = steps.replay(i, steps.t0s[i], y_i, steps.hs[i], f_i)",
        "step = steps.replay(i, steps.t0s[i], y_i, steps.hs[max(i - 1, 0)], f_i)",
        (f"{ACA_TESTS}::test_max_checkpoints_changes_nothing_but_the_cost",),
        "recomputing a segment between kept checkpoints uses the previous step's size",
    ),
    Mutation(
        "aca-replays-wrong-rng-state", "plugins/odeplug_aca/_aca.py",
        "self._rng_state(i).restore()",
        "self._rng_state(max(i - 1, 0)).restore()",
        (f"{ACA_TESTS}::test_dropout_is_replayed",),
        "a step's random draws are replayed from the previous step's generator state",
    ),
    Mutation(
        "aca-replays-from-the-wrong-checkpoint", "plugins/odeplug_aca/_aca.py",
        "states = [(steps.kept_y[segment], steps.kept_f[segment])]",
        "states = [(steps.kept_y[max(segment - 1, 0)], steps.kept_f[segment])]",
        (f"{ACA_TESTS}::test_max_checkpoints_changes_nothing_but_the_cost",),
        "a segment between kept checkpoints is recomputed from the previous segment's checkpoint",
    ),
    # -- error messages ------------------------------------------------------------------------
    Mutation(
        "underflow-message-names-the-end-time", "odeplug/_stepping.py",
        'f"the step size underflowed (t + h == t) at t={where:.6g}: the problem is likely "',
        'f"the step size underflowed (t + h == t) at t={float(t_target):.6g}: the problem is likely "',
        ("tests/test_errors.py::test_step_size_underflow_names_the_time",),
        "the underflow error names the target time instead of where the solve stopped",
    ),
    # -- Karhunen–Loève ------------------------------------------------------------------------
    Mutation(
        "karhunen-loeve-amplitude", "plugins/odeplug_sde/_wiener.py",
        "amplitude = math.sqrt(2.0 * abs(c))",
        "amplitude = math.sqrt(abs(c))",
        (f"{SDE}::test_variance_matches_the_truncated_series_and_tends_to_elapsed_time",),
        "the Karhunen–Loève path's variance is half the Brownian motion's",
    ),
    Mutation(
        "karhunen-loeve-frequencies", "plugins/odeplug_sde/_wiener.py",
        "omega = (torch.arange(1, m + 1, dtype=torch.float64, device=xi.device) - 0.5) * math.pi",
        "omega = torch.arange(1, m + 1, dtype=torch.float64, device=xi.device) * math.pi",
        (f"{SDE}::test_variance_matches_the_truncated_series_and_tends_to_elapsed_time",),
        "the eigenfunctions of the Brownian bridge instead of Brownian motion's",
    ),
    Mutation(
        "karhunen-loeve-derivative-scale", "plugins/odeplug_sde/_wiener.py",
        "self._derivative_coef = torch.full((m, 1), amplitude / c, dtype=xi.dtype, device=xi.device) * flat",
        "self._derivative_coef = torch.full((m, 1), amplitude, dtype=xi.dtype, device=xi.device) * flat",
        (f"{SDE}::test_value_and_derivative_match_the_series_term_by_term",),
        "dB/dt forgets the chain rule's 1/c",
    ),
)


def occurrences(mutation: Mutation, root: pathlib.Path = ROOT) -> int:
    """How often the mutation's original text occurs in its file under ``root``."""
    return (root / mutation.path).read_text().count(mutation.original)


def apply(mutation: Mutation, root: pathlib.Path) -> str:
    """Plant the mutation in the tree at ``root``; returns the file's original text."""
    path = root / mutation.path
    text = path.read_text()
    count = text.count(mutation.original)
    if count != 1:
        raise SystemExit(f"{mutation.name}: original text occurs {count} times in {mutation.path}, "
                         "not once: update the mutation list.")
    path.write_text(text.replace(mutation.original, mutation.replacement))
    return text


def copy_tree(destination: pathlib.Path) -> pathlib.Path:
    tree = destination / "tree"
    shutil.copytree(ROOT, tree, ignore=IGNORED)
    return tree


def environment(tree: pathlib.Path) -> dict[str, str]:
    env = dict(os.environ)
    # The copy first: the editable install's finder comes after sys.path, so these win.
    env["PYTHONPATH"] = os.pathsep.join([str(tree), str(tree / "plugins")])
    env.setdefault("CI", "true")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def check_imports(tree: pathlib.Path) -> None:
    """The copy's modules must be the ones imported, core and plugins alike."""
    probe = ("import odeplug, odeplug_gq, odeplug_solvers, odeplug_aca, odeplug_sde;"
             "print('\\n'.join(m.__file__ for m in (odeplug, odeplug_gq, odeplug_solvers, odeplug_aca, odeplug_sde)))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tree, env=environment(tree),
                         capture_output=True, text=True, check=True).stdout.split()
    outside = [f for f in out if not pathlib.Path(f).resolve().is_relative_to(tree.resolve())]
    if outside:
        raise SystemExit(f"the copy is not what gets imported: {outside}")


def run_tests(tree: pathlib.Path, tests: tuple[str, ...], timeout: float) -> tuple[str, str, float]:
    """(outcome, failing test, seconds): outcome is 'passed', 'failed' or 'timeout'."""
    start = time.perf_counter()
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        result = subprocess.run(command, cwd=tree, env=environment(tree), capture_output=True,
                                text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", "(timed out)", time.perf_counter() - start
    elapsed = time.perf_counter() - start
    if result.returncode == 0:
        return "passed", "", elapsed
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", result.stdout, flags=re.M)
    if result.returncode not in (1,) and not failed:  # usage error, collection crash, ...
        tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
        return "failed", "pytest exit %d: %s" % (result.returncode, " | ".join(tail)), elapsed
    return "failed", failed[0] if failed else "(pytest failed)", elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these mutations only")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per mutation (a timeout counts as caught)")
    args = parser.parse_args(argv)

    chosen = list(MUTATIONS)
    if args.only:
        unknown = set(args.only) - {m.name for m in MUTATIONS}
        if unknown:
            parser.error(f"unknown mutation(s): {sorted(unknown)}")
        chosen = [m for m in MUTATIONS if m.name in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.path}: {m.what}\n    tests: {' '.join(m.tests)}")
        return 0

    with tempfile.TemporaryDirectory(prefix="odeplug-mutate-") as scratch:
        tree = copy_tree(pathlib.Path(scratch))
        check_imports(tree)
        for m in chosen:  # every original must be there before anything runs
            if occurrences(m, tree) != 1:
                raise SystemExit(f"{m.name}: original text occurs {occurrences(m, tree)} times in {m.path}")
        if not args.no_baseline:
            tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
            outcome, failing, seconds = run_tests(tree, tests, args.timeout * 2)
            print(f"baseline (no mutation, {len(tests)} test ids): {outcome} in {seconds:.0f} s", flush=True)
            if outcome != "passed":
                print(f"the unmutated tree fails {failing}: fix that first", file=sys.stderr)
                return 2
        rows = []
        width = max(len(m.name) for m in chosen)
        print(f"{'mutation':<{width}}  {'result':<8}  {'time':>6}  caught by", flush=True)
        for m in chosen:
            original = apply(m, tree)
            try:
                outcome, failing, seconds = run_tests(tree, m.tests, args.timeout)
            finally:
                (tree / m.path).write_text(original)
            result = "survived" if outcome == "passed" else "caught"
            rows.append((m, result))
            print(f"{m.name:<{width}}  {result:<8}  {seconds:5.1f}s  {failing}", flush=True)
    survived = [m.name for m, result in rows if result == "survived"]
    print(f"\ncaught {len(rows) - len(survived)}/{len(rows)}"
          + (f"; survived: {', '.join(survived)}" if survived else ""))
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
