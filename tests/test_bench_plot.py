"""``odeplug bench TASK --plot FILE.png``: rows become panels (time against width per rule, backward
NFE per rule, peak memory per rule), each only where the rows carry its column; the drawing
needs matplotlib (the ``plot`` extra) and says how to install it when it is missing."""

from __future__ import annotations

import builtins

import pytest

from odeplug import bench
from odeplug._cli import main
from odeplug.bench._plot import panels


def _rows(widths=(20, 100), rules=("Direct", "Adjoint"), outputs=None):
    rows = []
    for width in widths:
        for i, rule in enumerate(rules):
            row = {"rule": rule, "width": width,
                   **bench.spread("step_s", [0.01 * width * (i + 1) * f for f in (0.9, 1.0, 1.3)]),
                   "nfe_backward": None if rule == "Direct" else 300 + width,
                   "peak_MB": 0.5 * width / (i + 1)}
            if outputs is not None:
                row["outputs"] = outputs
            rows.append(row)
    return rows


def test_rows_over_widths_give_time_lines_nfe_bars_and_memory_bars():
    time, nfe, memory = panels(_rows())
    assert (time.kind, nfe.kind, memory.kind) == ("lines", "bars", "bars")
    assert time.log_y
    direct = next(s for s in time.series if s.name == "Direct")
    assert direct.xs == (20, 100) and direct.ys == pytest.approx((0.2, 1.0))
    assert direct.low == pytest.approx((0.18, 0.9)) and direct.high == pytest.approx((0.26, 1.3))
    adjoint_nfe = next(s for s in nfe.series if s.name == "Adjoint")
    assert adjoint_nfe.xs == ("W=20", "W=100") and adjoint_nfe.ys == (320, 400)
    assert next(s for s in nfe.series if s.name == "Direct").ys == (None, None)  # no backward solve
    assert [s.name for s in memory.series] == ["Direct", "Adjoint"]


def test_a_panel_appears_only_where_the_rows_carry_its_column():
    rows = [{k: v for k, v in row.items() if k != "peak_MB"} for row in _rows()]
    assert [p.title for p in panels(rows)] == ["seconds per training step against width",
                                              "backward NFE per rule"]
    only_nfe = [{"rule": "A", "nfe_bwd": 10}, {"rule": "B", "nfe_bwd": 12}]
    assert [p.title for p in panels(only_nfe)] == ["backward NFE per rule"]
    assert panels([{"problem": "switch", "nfe_with": 3}]) == []  # no rule or route: nothing


def test_one_width_gives_time_bars_and_other_varying_settings_give_line_styles():
    (time, *_) = panels(_rows(widths=(50,)))
    assert time.kind == "bars" and time.series[0].xs == ("",)
    rows = _rows(outputs=2) + _rows(outputs=50)
    (time, nfe, _) = panels(rows)
    assert {(s.name, s.setting) for s in time.series} == {
        ("Direct", "outputs=2"), ("Adjoint", "outputs=2"),
        ("Direct", "outputs=50"), ("Adjoint", "outputs=50")}
    assert nfe.series[0].xs == ("W=20, outputs=2", "W=100, outputs=2",
                                "W=20, outputs=50", "W=100, outputs=50")


def test_draw_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib", reason="the drawing needs the plot extra (matplotlib)")
    from odeplug.bench._plot import draw

    path = tmp_path / "figure.png"
    draw(panels(_rows(widths=(20, 100, 500), rules=("Direct", "Adjoint", "GQAdjoint"))),
         str(path), "odeplug bench synthetic", "threads 1")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_command_draws_the_tasks_rows(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the drawing needs the plot extra (matplotlib)")
    path = tmp_path / "sines.png"
    assert main(["bench", "sines", "--widths", "4,8", "--epochs", "2", "--rules", "Direct,Adjoint",
                 "--threads", "1", "--no-progress", "--plot", str(path)]) == 0
    assert f"wrote {path}" in capsys.readouterr().out
    assert path.stat().st_size > 10_000


def test_without_matplotlib_plot_is_one_line_naming_the_extra(monkeypatch, capsys):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert main(["bench", "sines", "--plot", "x.png", "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "odeplug bench: --plot needs matplotlib: pip install 'odeplug[plot]'\n"


def test_rows_with_nothing_to_draw_say_so(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib", reason="the drawing needs the plot extra (matplotlib)")
    bench.tasks()
    monkeypatch.setitem(bench._TASKS, "counts", (lambda options: [{"problem": "p", "nfe": 3}],
                                                 "rows without a rule"))
    assert main(["bench", "counts", "--no-progress", "--plot", str(tmp_path / "x.png")]) == 1
    assert "nothing drawn" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
