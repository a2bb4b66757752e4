"""Timings people can trust: ``odeplug bench --threads N`` sets torch's thread count for the task
and every JSON row records it with the run's other facts (versions, device, CPU model); bad
``--threads`` / ``--device`` values give one line and exit status 2; timed rows carry
min / median / max; and the rules of a task are timed round by round, interleaved."""

from __future__ import annotations

import json

import pytest
import torch

import odeplug
from odeplug import bench
from odeplug._cli import main, print_table

FACTS = ("threads", "interop_threads", "torch", "odeplug", "python", "device", "gpu", "cpu")


def _run(tmp_path, *argv: str) -> dict:
    out = tmp_path / "rows.json"
    assert main(["bench", *argv, "--no-progress", "--json", str(out)]) == 0
    return json.loads(out.read_text())


def _other_thread_count() -> int:
    return 1 if torch.get_num_threads() != 1 else 2


# -- --threads: set for the task, recorded in every row -----------------------------------------


def test_threads_sets_torch_threads_for_the_task_and_is_restored(tmp_path, monkeypatch, capsys):
    seen = []

    def probe(options: bench.BenchOptions) -> list[dict]:
        seen.append((torch.get_num_threads(), options.threads))
        return [{"case": "a", "x": 1.0}, {"case": "b", "x": 2.0}]

    bench.tasks()  # the built-in tasks registered first
    monkeypatch.setitem(bench._TASKS, "probe", (probe, "records the thread count it runs with"))
    before = torch.get_num_threads()
    want = _other_thread_count()
    result = _run(tmp_path, "probe", "--threads", str(want))
    assert seen == [(want, want)]
    assert torch.get_num_threads() == before  # in-process callers get their setting back
    assert result["run"]["threads"] == want
    for row in result["rows"]:
        assert {k: row[k] for k in FACTS} == result["run"]
    printed = capsys.readouterr().out
    assert f"threads {want} (--threads" in printed  # shown above the table, not in every row
    assert "interop_threads" not in printed


def test_without_threads_the_task_runs_with_torchs_setting_which_is_shown(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    result = _run(tmp_path, "jumps", "--repeats", "1", "--tol", "1e-3")
    current = torch.get_num_threads()
    assert all(row["threads"] == current for row in result["rows"])
    assert f"threads {current} (torch's default" in capsys.readouterr().out


def test_every_json_row_records_the_runs_facts(tmp_path):
    import platform

    want = _other_thread_count()
    result = _run(tmp_path, "sines", "--threads", str(want), "--epochs", "2", "--widths", "4",
                  "--rules", "Direct")
    (row,) = result["rows"]
    assert row["threads"] == want and row["interop_threads"] >= 1
    assert row["torch"] == torch.__version__ and row["odeplug"] == odeplug.__version__
    assert row["python"] == platform.python_version()
    assert row["device"] == "cpu" and row["gpu"] is None
    assert row["cpu"] == bench.cpu_model() and row["cpu"]


def test_the_ou_task_keeps_its_one_thread_default_unless_told(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    bench.tasks()
    assert bench.task_threads("ou", None, "cpu")[0] == 1
    assert bench.task_threads("ou", 3, "cpu") == (3, "--threads")
    assert bench.task_threads("ou", None, "cuda")[0] is None
    assert bench.task_threads("sines", None, "cpu")[0] is None
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert bench.task_threads("ou", None, "cpu")[0] is None


@pytest.mark.parametrize("value", ["0", "-1", "abc", "1.5", ""])
def test_a_bad_threads_value_is_one_line_and_status_2(value, capsys):
    assert main(["bench", "jumps", f"--threads={value}", "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing ran
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.err.startswith("odeplug bench: --threads must be a positive integer")


@pytest.mark.parametrize("option", ["--repeats", "--epochs"])
def test_a_bad_count_is_one_line_and_status_2(option, capsys):
    assert main(["bench", "sines", option, "0", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and option in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
@pytest.mark.parametrize("task", ["sines", "gq", "spheres", "gq-accuracy", "adjoint", "ou", "jumps",
                                  "overhead", "aca"])
def test_device_cuda_without_cuda_is_one_line_and_status_2(task, capsys):
    assert main(["bench", task, "--device", "cuda", "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "CUDA is not available" in captured.err


@pytest.mark.parametrize("device", ["bogus", "mps"])
def test_a_device_the_tasks_cannot_use_is_one_line(device, capsys):
    assert main(["bench", "sines", "--device", device, "--no-progress"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_an_unknown_rule_is_one_line_and_status_2(capsys):
    assert main(["bench", "sines", "--rules", "NoSuchRule", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NoSuchRule" in err and "Traceback" not in err


# -- min / median / max ---------------------------------------------------------------------------


def _assert_spread(row: dict, key: str) -> None:
    assert row[f"{key}_min"] <= row[key] <= row[f"{key}_max"], (key, row)


@pytest.mark.parametrize(("argv", "timed"), [
    (["sines", "--epochs", "3", "--widths", "4", "--rules", "Direct,Adjoint"], ["step_s"]),
    (["spheres", "--epochs", "3", "--widths", "4", "--rules", "Direct,Adjoint"], ["step_s"]),
    (["gq", "--repeats", "2", "--widths", "4", "--rules", "Direct,Adjoint"],
     ["bwd_s", "vs_torchdiffeq"]),
    (["jumps", "--repeats", "2", "--tol", "1e-3"], ["time_ratio"]),
], ids=["sines", "spheres", "gq", "jumps"])
def test_timed_rows_carry_min_median_max(tmp_path, argv, timed, capsys):
    rows = _run(tmp_path, *argv, "--threads", "1")["rows"]
    assert rows
    for row in rows:
        for key in timed:
            _assert_spread(row, key)
    printed = capsys.readouterr().out
    header = next(line for line in printed.splitlines() if line.split()[:1] in (["rule"], ["problem"]))
    assert "_min" not in header and "_max" not in header  # one column: median (min–max)
    assert "timed columns: median (min–max)" in printed


def test_the_table_prints_median_with_min_and_max_in_one_column():
    import io

    out = io.StringIO()
    print_table([{"rule": "A", **bench.spread("step_s", [0.3, 0.1, 0.2])},
                 {"rule": "B", **bench.spread("step_s", [1.0])}], out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["rule", "step_s"]
    assert lines[2].split(maxsplit=1) == ["A", "0.2 (0.1–0.3)"]
    assert lines[3].split() == ["B", "1"]  # one sample: no range


def test_spread():
    assert bench.spread("t", [3.0, 1.0, 2.0, 10.0]) == {"t": 2.5, "t_min": 1.0, "t_max": 10.0}
    with pytest.raises(ValueError):
        bench.spread("t", [])


# -- interleaving -------------------------------------------------------------------------------


def test_interleaved_runs_every_name_once_per_round_rotating_the_order():
    order = list(bench.interleaved(["a", "b", "c"], 4))
    assert order == [(0, "a"), (0, "b"), (0, "c"), (1, "b"), (1, "c"), (1, "a"),
                     (2, "c"), (2, "a"), (2, "b"), (3, "a"), (3, "b"), (3, "c")]


def _assert_interleaved(sequence: list[str], names: set[str], rounds: int) -> None:
    """``sequence`` is ``rounds`` rounds, each every name once, not all in the same order."""
    size = len(names)
    assert len(sequence) == rounds * size, sequence
    chunks = [tuple(sequence[i:i + size]) for i in range(0, len(sequence), size)]
    assert all(set(chunk) == names for chunk in chunks), sequence
    assert len(set(chunks)) > 1, sequence  # rotated: drift does not always hit the same rule first


def _record_solves(monkeypatch, y0_shape: tuple[int, ...]) -> list[str]:
    """Record the rule of every ``odeplug.solve`` on a state of ``y0_shape`` (the task's
    problem, not the gradient check or a backward solve)."""
    order: list[str] = []
    solve = odeplug.solve

    def recording(problem, *args, **kwargs):
        if tuple(problem.y0.shape) == y0_shape and len(args) > 1:
            rule = args[1]
            order.append(type(rule).__name__ + ("(Seminorm)" if "Seminorm" in repr(rule) else ""))
        return solve(problem, *args, **kwargs)

    monkeypatch.setattr(odeplug, "solve", recording)
    return order


@pytest.mark.parametrize(("task", "shape"), [("sines", (15, 2)), ("spheres", (200, 5))])
def test_training_tasks_interleave_the_rules_step_by_step(task, shape, monkeypatch):
    order = _record_solves(monkeypatch, shape)
    argv = ["bench", task, "--epochs", "3", "--widths", "4", "--rules", "Direct,Adjoint", "--no-progress"]
    assert main(argv) == 0
    _assert_interleaved(order, {"Direct", "Adjoint"}, rounds=3)


def test_gq_interleaves_its_rules_and_torchdiffeq_round_by_round(monkeypatch):
    import torchdiffeq

    order = _record_solves(monkeypatch, (15, 2))
    odeint_adjoint = torchdiffeq.odeint_adjoint

    def recording(*args, **kwargs):
        order.append("torchdiffeq")
        return odeint_adjoint(*args, **kwargs)

    monkeypatch.setattr(torchdiffeq, "odeint_adjoint", recording)
    argv = ["bench", "gq", "--repeats", "3", "--widths", "4", "--rules", "Direct,Adjoint", "--no-progress"]
    assert main(argv) == 0
    # one warm-up round, then three timed rounds
    _assert_interleaved(order, {"Direct", "Adjoint", "torchdiffeq"}, rounds=4)


def test_adjoint_interleaves_ours_and_torchdiffeqs_round_by_round(monkeypatch, tmp_path):
    import torchdiffeq

    order = _record_solves(monkeypatch, (15, 2))
    odeint_adjoint = torchdiffeq.odeint_adjoint

    def recording(*args, **kwargs):
        seminorm = kwargs.get("adjoint_options", {}).get("norm") == "seminorm"
        order.append("torchdiffeq" + ("(Seminorm)" if seminorm else ""))
        return odeint_adjoint(*args, **kwargs)

    monkeypatch.setattr(torchdiffeq, "odeint_adjoint", recording)
    rows = _run(tmp_path, "adjoint", "--repeats", "2", "--widths", "4")["rows"]
    for row in rows:
        for key in ("bwd_s", "bwd_s_tde", "time_ratio"):
            _assert_spread(row, key)
    names = {"Adjoint", "Adjoint(Seminorm)", "torchdiffeq", "torchdiffeq(Seminorm)"}
    per_setting = 3 * len(names)  # a warm-up round and two timed rounds, in each of two settings
    assert len(order) == 2 * per_setting
    for setting in (order[:per_setting], order[per_setting:]):
        _assert_interleaved(setting, names, rounds=3)


def test_ou_interleaves_its_routes_epoch_by_epoch(monkeypatch, tmp_path):
    from odeplug_sde import _bench as ou_bench

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    # A smaller problem: 4 training initial conditions in one batch, 5 samples each.
    monkeypatch.setattr(ou_bench, "TRAIN_ICS", 4)
    monkeypatch.setattr(ou_bench, "TEST_ICS", 2)
    monkeypatch.setattr(ou_bench, "SAMPLES", 5)
    monkeypatch.setattr(ou_bench, "BATCH", 4)
    order: list[str] = []
    epoch = ou_bench.OUTrainer.epoch

    def recording(self):
        order.append(f"{self.route} {type(self.rule).__name__}")
        return epoch(self)

    monkeypatch.setattr(ou_bench.OUTrainer, "epoch", recording)
    rows = _run(tmp_path, "ou", "--epochs", "2", "--repeats", "1", "--widths", "4",
                "--rules", "Direct")["rows"]
    _assert_interleaved(order, {"WZ Direct", "SDE Direct", "SDE Adjoint"}, rounds=2)
    assert [row["route"] for row in rows] == ["WZ+Direct", "SDE Direct", "SDE Adjoint"]
    for row in rows:
        _assert_spread(row, "epoch_s")
        assert row["threads"] == 1  # the ou task's default on CPU


def test_overhead_reports_the_loop_over_its_bare_evaluations_with_the_peers(tmp_path):
    rows = _run(tmp_path, "overhead", "--repeats", "2", "--threads", "1")["rows"]
    forward, compiled, backward = rows
    assert [r["route"] for r in rows] == ["Dopri5 forward", "Dopri5 forward, compile=True", "Adjoint backward"]
    assert forward["nfe"] == forward["nfe_torchdiffeq"]  # the same steps as torchdiffeq
    assert compiled["nfe"] == forward["nfe"]  # the compiled path takes the same steps
    assert compiled["compile_s"] > 0
    for row in (forward, compiled):  # the loop's own cost per attempt, from the same rounds
        _assert_spread(row, "stepping_us")
    for row in rows:
        for key in ("loop_over_evaluations", "vs_torchdiffeq", "odeplug_s"):
            _assert_spread(row, key)
    try:
        import torchode  # noqa: F401
    except ImportError:
        assert "vs_torchode" not in forward
    else:
        _assert_spread(forward, "vs_torchode")


def test_compiled_task_runs_each_rule_eager_and_compiled_beside_diffrax_or_says_why(tmp_path):
    """sines with and without compile=True, interleaved: the same NFE and loss either way, the
    compilation reported apart; diffrax's row is measured when jax and diffrax are installed,
    and otherwise says what to install."""
    from odeplug.bench._compiled import diffrax_missing

    rows = _run(tmp_path, "compiled", "--epochs", "2", "--widths", "2", "--rules", "Direct",
                "--threads", "1")["rows"]
    by_rule = {row["rule"]: row for row in rows}
    eager, compiled = by_rule["Direct"], by_rule["Direct compiled"]
    assert compiled["nfe_forward"] == eager["nfe_forward"]
    assert compiled["final_loss"] == pytest.approx(eager["final_loss"], rel=1e-4)
    assert compiled["first_step_s"] > 0
    missing = diffrax_missing()
    if missing is None:
        _assert_spread(compiled, "vs_diffrax")
        assert by_rule["diffrax"]["final_loss"] == pytest.approx(eager["final_loss"], rel=1e-2)
    else:
        assert "pip install jax diffrax equinox optax" in by_rule["diffrax"]["skipped"]
