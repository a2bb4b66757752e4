"""The ``jumps`` bench task runs, and its counts point the documented way: declaring jump times
(by hand, or as a linear path's knots through ``controlled``) saves rejected steps and
evaluations, forwards, in torchdiffeq and in the Adjoint rule's backward solve."""

import json


def test_jumps_task_counts_fewer_rejected_steps_and_evaluations_with_jump_times(tmp_path, capsys):
    from odeplug._cli import main

    out = tmp_path / "jumps.json"
    assert main(["bench", "jumps", "--repeats", "1", "--no-progress", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "odeplug bench jumps" in printed and "rejected_without" in printed
    rows = json.loads(out.read_text())["rows"]
    assert {(row["problem"], row["route"]) for row in rows} == {
        (problem, route)
        for problem in ("switch", "steps", "cde")
        for route in ("odeplug Dopri5", "torchdiffeq dopri5", "Adjoint backward")
    }
    for row in rows:
        label = f"{row['problem']} by {row['route']}"
        assert row["jumps"] >= 1, label
        assert row["rejected_with"] < row["rejected_without"], label
        assert row["nfe_with"] < row["nfe_without"], label
        assert row["time_ratio_min"] <= row["time_ratio"] <= row["time_ratio_max"], label
        assert row["threads"] >= 1, label
    # The linear path's 10 interior knots (12 observations) became the CDE's jump times.
    assert all(row["jumps"] == 10 for row in rows if row["problem"] == "cde")


def test_cli_lists_the_jumps_task(capsys):
    from odeplug._cli import main

    assert main(["bench", "--list"]) == 0
    assert "jumps" in capsys.readouterr().out
