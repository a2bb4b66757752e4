"""The ``guide`` bench task: every rule's step time and peak memory per (width, outputs)."""

import json

from odeplug._cli import main


def test_guide_reports_time_and_memory_relative_to_the_fastest_and_to_direct(tmp_path):
    out = tmp_path / "rows.json"
    assert main(["bench", "guide", "--widths", "4", "--epochs", "2", "--rules", "Direct,ACA,Adjoint",
                 "--threads", "1", "--no-progress", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {(r["width"], r["outputs"]) for r in rows} == {(4, 2), (4, 50)}
    for outputs in (2, 50):
        setting = {r["rule"]: r for r in rows if r["outputs"] == outputs}
        assert set(setting) == {"Direct", "ACA", "Adjoint"}
        assert min(r["vs_fastest"] for r in setting.values()) == 1.0
        assert all(r["step_s_min"] <= r["step_s"] <= r["step_s_max"] for r in setting.values())
        assert setting["Direct"]["vs_Direct_memory"] == 1.0
        assert all(r["peak_MB"] > 0 for r in setting.values())
        assert setting["Direct"]["nfe_backward"] is None and setting["Adjoint"]["nfe_backward"] > 0
