"""``odeplug bench TASK --processes N``: the sines and spheres tasks data-parallel over N gloo
processes (odeplug.bench._processes) — rows with the time per step of N processes and of one,
speedup and scaling efficiency T₁ / (N · T_N); one line and exit status 2 for a value it cannot
run; and the loss weights that make uneven shards give the full batch's gradient."""

from __future__ import annotations

import json
import os

import pytest
import torch

from odeplug._cli import main
from odeplug.bench._processes import data_parallel_tasks, shard

requires_distributed = pytest.mark.skipif(not torch.distributed.is_available(),
                                          reason="this torch build has no torch.distributed")


@requires_distributed
@pytest.mark.parametrize("task", ["sines", "spheres"])
def test_processes_gives_time_per_step_and_scaling_efficiency(task, tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert main(["bench", task, "--processes", "2", "--epochs", "2", "--widths", "4", "--rules", "Direct",
                 "--tol", "1e-2", "--no-progress", "--json", str(out)]) == 0
    assert "threads 1 (per process, --processes" in capsys.readouterr().out
    (row,) = json.loads(out.read_text())["rows"]
    assert (row["rule"], row["width"], row["processes"], row["threads_per_process"]) == ("Direct", 4, 2, 1)
    assert row["step_s_min"] <= row["step_s"] <= row["step_s_max"]
    assert row["speedup"] == pytest.approx(row["step_s_1proc"] / row["step_s"])
    assert row["efficiency"] == pytest.approx(row["step_s_1proc"] / (2 * row["step_s"]))
    assert row["final_loss"] > 0


def test_the_tasks_that_run_data_parallel():
    from odeplug.bench import tasks

    tasks()  # the tasks' modules (spheres: the gq plugin's bench module) register their steps
    assert {"sines", "spheres"} <= set(data_parallel_tasks())


@pytest.mark.parametrize("argv,message", [
    (["sines", "--processes", "0"], "--processes must be a positive integer, got '0'"),
    (["sines", "--processes", "two"], "--processes must be a positive integer"),
    (["sines", "--processes", str((os.cpu_count() or 1) + 1)], "CPU core(s); use --processes"),
    (["jumps", "--processes", "2"], "the jumps task runs in one process; --processes applies to"),
])
def test_a_value_it_cannot_run_is_one_line_and_status_2(argv, message, capsys):
    assert main(["bench", *argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_uneven_shards_weighted_give_the_full_batch_gradient():
    """DDP averages the processes' gradients: with the weights of ``shard``, the average of the
    weighted shard means is the full batch's mean, also when 15 rows split 7 / 8."""
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(15, 3, generator=g, dtype=torch.float64), torch.randn(3, dtype=torch.float64,
                                                                             requires_grad=True)
    (full,) = torch.autograd.grad((x @ w).sin().mean(), [w])
    for world in (2, 3, 4):
        parts = []
        for rank in range(world):
            rows, weight = shard(15, rank, world)
            parts.append(torch.autograd.grad((x[rows] @ w).sin().mean() * weight, [w])[0])
        torch.testing.assert_close(sum(parts) / world, full, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="cannot be shared by 4 processes"):
        shard(3, 0, 4)
