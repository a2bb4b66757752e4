"""Bench tasks are found lazily: a solve never imports the bench harness or a plugin's bench
module; ``odeplug bench`` imports them through the ``odeplug.bench`` entry points, each in
isolation (a broken one warns, or fails under ODEPLUG_STRICT_PLUGINS=1)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
import types

import pytest

from odeplug import PluginError, PluginLoadWarning, bench
from odeplug.bench import _discovery

BUILTIN_BENCH_MODULES = {"odeplug_adjoint._bench", "odeplug_gq._bench", "odeplug_aca._bench",
                         "odeplug_sde._bench"}


def _python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                            text=True, timeout=300,
                            env={**os.environ, "ODEPLUG_STRICT_PLUGINS": "1"})
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_solving_and_differentiating_imports_no_bench_code():
    out = _python("""
        import json, sys
        import torch
        import odeplug

        y0 = torch.ones(3, requires_grad=True)
        problem = odeplug.ODEProblem(lambda t, y: -y, y0, torch.linspace(0, 1, 4))
        for rule in (odeplug.Direct(), odeplug.Adjoint(), odeplug.GQAdjoint(), odeplug.ACA()):
            odeplug.solve(problem, odeplug.Dopri5(), rule).ys.sum().backward()
        loaded = [p.name for p in odeplug.plugins()]
        bench = [m for m in sys.modules if m == "odeplug.bench" or m.startswith("odeplug.bench.")
                 or m.rsplit(".", 1)[-1] == "_bench"]
        print(json.dumps({"plugins": loaded, "bench": bench}))
    """)
    found = json.loads(out.splitlines()[-1])
    assert {"adjoint", "gq", "aca", "sde"} <= set(found["plugins"])  # every plugin loaded
    assert found["bench"] == []


def test_the_bench_list_has_every_task_in_a_fresh_process():
    out = subprocess.run([sys.executable, "-m", "odeplug._cli", "bench", "--list"],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "ODEPLUG_STRICT_PLUGINS": "1"})
    assert out.returncode == 0, out.stderr
    listed = {line.split()[0] for line in out.stdout.splitlines()}
    assert listed >= {"sines", "guide", "overhead", "jumps", "adjoint", "gq", "gq-accuracy",
                      "spheres", "aca", "ou"}


def test_the_builtin_bench_modules_are_entry_points_of_the_odeplug_bench_group():
    declared = {ep.value for ep in importlib.metadata.entry_points(group=_discovery.GROUP)}
    assert BUILTIN_BENCH_MODULES <= declared


@pytest.fixture
def fake_bench_entry_points(monkeypatch):
    """Replace the group's entry points with ``modules`` (name -> module source, or an
    exception to raise), and let discovery run again; restores everything afterwards."""
    bench.tasks()  # the real tasks registered first
    real = importlib.metadata.entry_points

    def install(modules: dict[str, str]) -> None:
        points = []
        for name, source in modules.items():
            module_name = f"fake_bench_{name}"
            module = types.ModuleType(module_name)
            monkeypatch.setitem(sys.modules, module_name, module)
            points.append(_FakeEntryPoint(name, module_name, source, module))

        def entry_points(**kwargs):
            if kwargs.get("group") == _discovery.GROUP:
                return points
            return real(**kwargs)

        monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
        monkeypatch.setattr(_discovery, "_loaded", False)

    monkeypatch.setattr(bench, "_TASKS", dict(bench._TASKS))
    monkeypatch.setattr(bench, "_COLUMNS", dict(bench._COLUMNS))
    return install


class _FakeEntryPoint:
    """An entry point whose ``load()`` runs ``source`` as the module's body."""

    def __init__(self, name: str, value: str, source: str, module: types.ModuleType) -> None:
        self.name, self.value, self.source, self.module = name, value, source, module
        self.dist = None

    def load(self) -> types.ModuleType:
        exec(textwrap.dedent(self.source), self.module.__dict__)  # noqa: S102
        return self.module


_GOOD = """
    from odeplug.bench import task

    @task("third-party", "a task a third-party distribution adds", columns={"x": "an x, in m"})
    def third_party(options):
        return [{"rule": "A", "x": 1.0}]
"""

_BROKEN = """
    from odeplug.bench import task

    @task("half-registered", "registered before the module fails")
    def half(options):
        return []

    raise RuntimeError("this bench module is broken")
"""


def test_a_third_party_bench_module_adds_its_tasks_and_legend(fake_bench_entry_points, capsys):
    from odeplug._cli import main

    fake_bench_entry_points({"thirdparty": _GOOD})
    assert "third-party" in bench.tasks()
    assert bench.task_columns("third-party") == {"x": "an x, in m"}
    assert main(["bench", "third-party", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "  x     an x, in m" in out


def test_a_broken_bench_module_warns_and_leaves_no_task(fake_bench_entry_points, monkeypatch):
    monkeypatch.delenv("ODEPLUG_STRICT_PLUGINS", raising=False)
    fake_bench_entry_points({"broken": _BROKEN, "thirdparty": _GOOD})
    with pytest.warns(PluginLoadWarning, match="'broken'.*this bench module is broken"):
        found = bench.tasks()
    assert "half-registered" not in found and "third-party" in found


def test_a_broken_bench_module_is_an_error_when_plugins_are_strict(fake_bench_entry_points,
                                                                   monkeypatch):
    monkeypatch.setenv("ODEPLUG_STRICT_PLUGINS", "1")
    fake_bench_entry_points({"broken": _BROKEN})
    with pytest.raises(PluginError, match="ODEPLUG_STRICT_PLUGINS"):
        bench.tasks()
    assert "half-registered" not in bench._TASKS
