"""The bench command line: one-line errors with did-you-mean for a bad task, rule, tolerance,
epoch count or device (stderr, exit status 2, nothing run, no traceback); a legend of the
columns under every table; ``odeplug --version``."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch

from odeplug import bench
from odeplug._cli import main
from odeplug.bench._legend import COLUMNS, describe, legend_lines
from odeplug.bench._suggest import did_you_mean


def _error(capsys, *argv: str) -> str:
    """The one line ``odeplug bench *argv`` prints on stderr, after checking it ran nothing."""
    assert main(["bench", *argv, "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("odeplug bench: "), captured.err
    return lines[0]


def test_version_prints_the_installed_distributions_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"odeplug {importlib.metadata.version('odeplug')}"


@pytest.mark.parametrize(("argv", "expected"), [
    (["sine"], "unknown task 'sine'; did you mean 'sines'? Tasks: "),
    (["spheres", "--rules", "adjont"],
     "unknown rule 'adjont' for --rules; did you mean 'Adjoint'? Known: "),
    (["sines", "--rules", "Direct,gqadjoint"], "did you mean 'GQAdjoint'?"),
    (["sines", "--rules", "Adjoint(norm=Seminrm())"], "did you mean 'Seminorm'?"),
    (["sines", "--rules", "Adjoint(nrm=1)"], "cannot build 'Adjoint(nrm=1)': InvalidOptionError"),
    (["sines", "--tol", "abc"], "--tol must be a number between 0 and 1"),
    (["sines", "--tol", "0"], "--tol must be a number between 0 and 1"),
    (["sines", "--tol", "1e3"], "--tol must be a number between 0 and 1"),
    (["sines", "--tol", "nan"], "--tol must be a number between 0 and 1"),
    (["sines", "--epochs", "0"], "--epochs must be a positive integer, got '0'"),
    (["sines", "--epochs", "two"], "--epochs must be a positive integer, got 'two'"),
    (["sines", "--device", "cdua"], "is not a torch device; did you mean 'cuda'?"),
    (["sines", "--device", "gpu"], "is not a torch device; did you mean 'cuda'?"),
    (["sines", "--plot", "figure.unknown"], "--plot 'figure.unknown': the file name must end in"),
])
def test_a_bad_value_is_one_line_with_a_suggestion_and_status_2(argv, expected, capsys):
    assert expected in _error(capsys, *argv)


def test_an_unknown_rule_with_nothing_close_lists_the_known_rules(capsys):
    line = _error(capsys, "sines", "--rules", "Zebra")
    assert "unknown rule 'Zebra' for --rules. Known: " in line
    assert "Adjoint" in line and "Direct" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_one_line(capsys):
    assert "CUDA is not available here" in _error(capsys, "sines", "--device", "cuda")


def test_did_you_mean_ignores_case_and_stays_quiet_when_nothing_is_close():
    assert did_you_mean("adjoint", ["Direct", "Adjoint"]) == "; did you mean 'Adjoint'?"
    assert did_you_mean("Adjont", ["Direct", "Adjoint"]) == "; did you mean 'Adjoint'?"
    assert did_you_mean("qwerty", ["Direct", "Adjoint"]) == ""


# -- the legend ----------------------------------------------------------------------------------


def test_the_legend_describes_shared_columns_the_tasks_own_and_ratios():
    lines = legend_lines(["rule", "step_s", "vs_floor", "vs_Adjoint", "mystery"],
                         {"vs_floor": "ACA's step ÷ its floor's"}, timed={"step_s"})
    assert lines[0] == "columns:"
    text = "\n".join(lines)
    assert f"rule        {COLUMNS['rule']}" in text
    assert "vs_floor    ACA's step ÷ its floor's" in text
    assert "vs_Adjoint  this row ÷ Adjoint's" in text
    assert "mystery" not in text  # undescribed: left out, not guessed
    assert lines[-1] == "timed columns: median (min–max) over the timed rounds"


def test_a_tasks_own_description_wins_over_the_shared_one():
    assert describe("rule", {"rule": "the route"}) == "the route"
    assert describe("rule", {}) == COLUMNS["rule"]


def test_every_column_of_the_tasks_is_described():
    """The columns the tasks produce (as their row dicts name them) all have a description,
    shared or their own."""
    produced = {
        "adjoint": ["rule", "width", "outputs", "tol", "nfe_fwd", "nfe_bwd", "nfe_bwd_tde",
                    "nfe_ratio", "bwd_s", "bwd_s_tde", "time_ratio", "vs_Adjoint_nfe"],
        "gq": ["rule", "width", "nfe_fwd", "nfe_bwd", "bwd_s", "vs_torchdiffeq", "vs_Adjoint"],
        "gq-accuracy": ["problem", "outputs", "tol", "rule", "err_dL/dθ", "err_dL/dy0",
                        "vs_Adjoint", "vjp", "nfe_bwd"],
        "spheres": ["rule", "width", "step_s", "nfe_bwd", "final_loss"],
        "aca": ["rule", "width", "batch", "tol", "steps", "nfe_fwd", "nfe_bwd", "checkpoints",
                "peak_MB", "held_MB", "peak_vs_Direct", "held_vs_Direct", "grads_floor", "step_s",
                "time_vs_Direct", "vs_floor", "final_loss"],
        "ou": ["route", "width", "epoch_s", "speedup", "nfe_forward", "nfe_backward", "test_kl",
               "test_kl_sd", "test_kl_init", "kl_in_sde_spread"],
        "guide": ["rule", "width", "outputs", "step_s", "vs_fastest", "peak_MB",
                  "vs_Direct_memory", "nfe_backward"],
        "jumps": ["problem", "route", "jumps", "rtol", "rejected_without", "rejected_with",
                  "accepted_without", "accepted_with", "nfe_without", "nfe_with", "time_ratio"],
        "overhead": ["route", "width", "nfe", "nfe_torchdiffeq", "loop_over_evaluations",
                     "vs_torchdiffeq", "odeplug_s", "vs_torchode", "nfe_torchode"],
        "sines": ["rule", "width", "step_s", "nfe_forward", "nfe_backward", "final_loss",
                  "grad_rel_error",  # and with --processes N:
                  "processes", "threads_per_process", "step_s_1proc", "speedup", "efficiency"],
    }
    bench.tasks()
    for task, columns in produced.items():
        own = bench.task_columns(task)
        assert [c for c in columns if describe(c, own) is None] == [], task


def test_a_run_prints_the_legend_under_its_table(capsys):
    assert main(["bench", "sines", "--widths", "4", "--epochs", "2", "--rules", "Direct,Adjoint",
                 "--threads", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    table, legend = out.split("\ncolumns:\n")
    assert "step_s" in table and "grad_rel_error" in table
    for column in ("rule", "width", "step_s", "nfe_forward", "nfe_backward", "final_loss",
                   "grad_rel_error"):
        assert f"\n  {column} " in "\n" + legend, column
    assert "timed columns: median (min–max)" in legend
